// torch.matmul (batched, broadcasting over leading axes) and torch.nn.functional.linear on oneDNN's sgemm.
// Transposed views are passed to sgemm as transposed operands, not copied.

/// A float32 matrix operand view: pointer to batch 0, whether transposed, leading dimension, batch strides.
private struct GemmOperand {
    let tensor: Tensor, trans: Bool, ld: Int
    init(_ t: Tensor) {
        var t = t.float32()
        let r = t.rank, rows = t.shape[r - 2], cols = t.shape[r - 1]
        let s0 = t.strides[r - 2], s1 = t.strides[r - 1]
        if s1 == 1 && (s0 >= cols || rows == 1) {
            trans = false
            ld = Swift.max(s0, cols)
        }
        else if s0 == 1 && (s1 >= rows || cols == 1) {
            trans = true
            ld = Swift.max(s1, rows)
        }
        else {
            t = t.contiguous()
            trans = false
            ld = cols
        }
        tensor = t
    }
}

/// Batched C[b] = A[b] @ B[b] for 2-d matrices with batch offsets given per batch index.
private func batchedGemm(_ a: Tensor, _ b: Tensor) -> Tensor {
    precondition(a.rank >= 2 && b.rank >= 2, "matmul: operands must be at least 2-d, got \(a.shape) and \(b.shape)")
    let m = a.shape[a.rank - 2], k = a.shape[a.rank - 1], n = b.shape[b.rank - 1]
    precondition(b.shape[b.rank - 2] == k, "matmul: \(a.shape) @ \(b.shape): inner sizes differ")
    let batch = broadcastShape(Array(a.shape.dropLast(2)), Array(b.shape.dropLast(2)))
    let av = a.broadcasted(to: batch + [m, k], recording: false), bv = b.broadcasted(to: batch + [k, n], recording: false)
    let A = GemmOperand(av), B = GemmOperand(bv)
    let out = Tensor.empty(batch + [m, n])
    let count = batch.reduce(1, *)
    // Element offsets of each batch entry (strides of broadcast axes are 0).
    func offsets(_ t: Tensor) -> [Int] {
        var offs = [Int](repeating: 0, count: count)
        var idx = [Int](repeating: 0, count: batch.count)
        for i in 0..<count {
            offs[i] = zip(idx, t.strides).reduce(0) { $0 + $1.0 * $1.1 }
            var d = batch.count - 1
            while d >= 0 {
                idx[d] += 1
                if idx[d] < batch[d] { break }
                idx[d] = 0
                d -= 1
            }
        }
        return offs
    }
    let ao = offsets(A.tensor), bo = offsets(B.tensor)
    let ap = A.tensor.data, bp = B.tensor.data, cp = out.data
    defer { withExtendedLifetime((A.tensor, B.tensor)) {} }
    let one = { (i: Int) in
        DNNL.sgemm(A.trans, B.trans, m, n, k, 1, ap + ao[i], A.ld, bp + bo[i], B.ld, 0, cp + i * m * n, n)
    }
    if count >= Parallel.threadCount && m * n * k < 1 << 22 { Parallel.forEach(count, costPerItem: 1 << 20, one) }
    else { for i in 0..<count { one(i) } }
    return out
}

/// torch.matmul for operands of rank >= 2 (leading axes broadcast).
public func matmul(_ a: Tensor, _ b: Tensor) -> Tensor {
    OpTimes.measure("matmul") { matmulOp(a, b) }
}

private func matmulOp(_ a: Tensor, _ b: Tensor) -> Tensor {
    batchedGemm(a, b).recorded("matmul", [a, b]) { g in
        [a.requiresGrad ? batchedGemm(g, b.transposed()).sum(toShape: a.shape) : nil,
         b.requiresGrad ? batchedGemm(a.transposed(), g).sum(toShape: b.shape) : nil]
    }
}

/// torch.nn.functional.linear: x (..., in) @ weight(out, in)^T + bias(out).
public func linear(_ x: Tensor, _ weight: Tensor, _ bias: Tensor? = nil) -> Tensor {
    OpTimes.measure("linear \(NativeBF16.applies([x, weight]) ? "bf16" : "f32") \(weight.shape[1])->\(weight.shape[0])") { linearOp(x, weight, bias) }
}

/// linear(x, weight, bias) + residual, with the residual (the output's shape) added in the GEMM's accumulator in
/// inference: in float32 the output starts as residual + bias and sgemm adds x weight^T to it (one pass over the output
/// less than an add after the linear); under native bf16 the bf16 matmul adds the float32 residual to its float32
/// accumulator (a post-op, `linearBF16`), so the product is not rounded before the sum. Recording gradients or with a
/// non-float32 operand (other than a bf16 weight under native bf16) it is that sum as written.
public func linear(_ x: Tensor, _ weight: Tensor, _ bias: Tensor?, adding residual: Tensor) -> Tensor {
    let operands = [x, weight, residual] + (bias.map { [$0] } ?? [])
    let outShape = Array(x.shape.dropLast()) + [weight.shape[0]]
    guard !GradMode.shouldRecord(operands), residual.shape == outShape, x.shape.last == weight.shape[1]
    else { return linear(x, weight, bias) + residual }
    if NativeBF16.applies(operands) {
        return OpTimes.measure("linear bf16 \(weight.shape[1])->\(weight.shape[0]) + residual") { linearBF16(x, weight, bias, adding: residual) }
    }
    guard operands.allSatisfy({ $0.dtype == .float32 }) else { return linear(x, weight, bias) + residual }
    return OpTimes.measure("linear f32 \(weight.shape[1])->\(weight.shape[0]) + residual") {
        let x2 = x.contiguous(), w = weight.contiguous()
        return withExtendedLifetime((x2, w)) { linearGEMM(x2, w, bias, residual: residual, shape: outShape) }
    }
}

/// x2 (rows, inF) weight^T into a fresh output of `shape` that starts as residual + bias (either may be nil; rows filled
/// on every thread, so the first touch of the fresh output, its page faults, is shared too), float32, contiguous.
private func linearGEMM(_ x2: Tensor, _ w: Tensor, _ bias: Tensor?, residual: Tensor?, shape: [Int]) -> Tensor {
    let inF = w.shape[1], outF = w.shape[0], rows = x2.count / inF
    let out = Tensor.empty(shape)
    let bc = bias?.float32().contiguous(), r = residual?.contiguous()
    withExtendedLifetime((bc, r)) {
        let o = out.data, bp = bc?.data, rp = r?.data
        guard bp != nil || rp != nil else { return }
        Parallel.forRange(rows, costPerItem: outF) { range in
            for i in range {
                switch (rp, bp) {
                case let (rp?, bp?): for c in 0..<outF { o[i * outF + c] = rp[i * outF + c] + bp[c] }
                case let (rp?, nil): (o + i * outF).update(from: rp + i * outF, count: outF)
                case let (nil, bp?): (o + i * outF).update(from: bp, count: outF)
                case (nil, nil): break
                }
            }
        }
    }
    DNNL.sgemm(false, true, rows, outF, inF, 1, x2.data, inF, w.data, inF, bias == nil && residual == nil ? 0 : 1, out.data, outF)
    return out
}

private func linearOp(_ x: Tensor, _ weight: Tensor, _ bias: Tensor?) -> Tensor {
    let inF = weight.shape[1], outF = weight.shape[0]
    precondition(x.shape.last == inF, "linear: input \(x.shape) does not match weight \(weight.shape)")
    if NativeBF16.applies([x, weight] + (bias.map { [$0] } ?? [])) { return linearBF16(x, weight, bias) }
    let rows = x.count / inF
    let x2 = x.float32().contiguous(), w = weight.float32().contiguous()
    defer { withExtendedLifetime((x2, w)) {} }
    let out = linearGEMM(x2, w, bias, residual: nil, shape: Array(x.shape.dropLast()) + [outF])
    var inputs = [x, weight]
    if let bias { inputs.append(bias) }
    return out.recorded("linear", inputs) { g in
        let g2 = g.contiguous().reshaped([rows, outF])
        var grads: [Tensor?] = []
        grads.append(x.requiresGrad ? batchedGemm(g2, w).reshaped(x.shape) : nil)
        grads.append(weight.requiresGrad ? batchedGemm(g2.transposed(), x2.reshaped([rows, inF])) : nil)
        if bias != nil { grads.append(g2.sum(axes: [0])) }
        return grads
    }
}
