import Foundation
import CKernels

// Scaled dot-product attention as one fused, tiled kernel (FlashAttention-2, Dao 2023): queries in blocks of
// `blockQ`, keys/values streamed in blocks of `blockK` with an online softmax, so no Lq x Lk matrix is ever held;
// extra memory is O(threads * blockQ * blockK) plus the per-row log-sum-exp kept for the backward pass.
// Semantics of torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal:, scale:).

/// Tile sizes of the fused kernel (query rows x key columns per tile; one tile of scores per thread).
public enum AttentionTiling {
    public static let blockQ = 128, blockK = 512
    /// Backward in one pass per (batch, head) when there are enough of them for all threads (else two passes, over
    /// key blocks for dK/dV and over query blocks for dQ, each recomputing the tiles). Settable for tests.
    public nonisolated(unsafe) static var onePassBackward = true
    /// The fewest query rows per task of the fused float32 forward kernel, and the largest head dimension it takes (larger ones,
    /// such as the VAE's single 512-wide head, run on sgemm tiles).
    public static let fusedRows = 256, fusedMaxHeadDim = 160
    /// The float32 forward: our fused kernel (`.fused`, head dims up to fusedMaxHeadDim; CKernels attention_body.h and,
    /// at the AVX-512 level, attention_avx512.c), oneDNN sgemm tiles (`.sgemm`), or `.auto`: the fused kernel where the
    /// C kernels run at the AVX-512 level or above (its 512-bit body beat the sgemm tiles in the SD-1.5 UNet on a Zen 4,
    /// docs/benchmarks.md, issue 20 session 9), sgemm tiles below (the 8-lane body was no faster there, session 8).
    /// `LDM_F32_ATTENTION_KERNEL=auto|fused|sgemm` (anything else: auto). Settable for tests and benchmarks.
    public enum Float32Kernel: String, Sendable { case auto, fused, sgemm }
    public nonisolated(unsafe) static var float32Kernel =
        Float32Kernel(rawValue: ProcessInfo.processInfo.environment["LDM_F32_ATTENTION_KERNEL"] ?? "auto") ?? .auto
    /// Whether the float32 forward uses the fused kernel now (float32Kernel resolved at the C kernels' level in use).
    public static var fusedFloat32: Bool {
        switch float32Kernel {
        case .fused: true
        case .sgemm: false
        case .auto: CPUFeatures.kernels >= .avx512
        }
    }
    /// Native bf16 attention (no causal mask) on our vdpbf16ps kernel; false (or `LDM_BF16_ATTENTION_KERNEL=onednn`):
    /// oneDNN's bf16 GEMM for both products, as before. Settable for tests and benchmarks.
    public nonisolated(unsafe) static var ownBF16Kernel = ProcessInfo.processInfo.environment["LDM_BF16_ATTENTION_KERNEL"] != "onednn"
}
private let blockQ = AttentionTiling.blockQ, blockK = AttentionTiling.blockK

/// Row pointer arithmetic for a (B, H, L, D) view whose last axis is contiguous.
private struct HeadView {
    let base: UnsafeMutablePointer<Float>, sb: Int, sh: Int, sl: Int
    init(_ t: Tensor) {
        precondition(t.strides[3] == 1, "attention: last axis must be contiguous")
        base = t.data
        sb = t.strides[0]
        sh = t.strides[1]
        sl = t.strides[2]
    }
    @inline(__always) func row(_ b: Int, _ h: Int, _ i: Int) -> UnsafeMutablePointer<Float> { base + b * sb + h * sh + i * sl }
}

/// q (B, H, Lq, D), k (B, H, Lk, D), v (B, H, Lk, Dv) -> (B, H, Lq, Dv). Any layout whose last axis is contiguous is
/// read in place (for example the (B, L, H, D) view of a linear projection); the result is a (B, H, Lq, Dv) view of
/// (B, Lq, H, Dv) memory, so that merging heads back is free.
public func scaledDotProductAttention(_ q: Tensor, _ k: Tensor, _ v: Tensor, scale: Float? = nil, causal: Bool = false) -> Tensor {
    OpTimes.measure("attention \(NativeBF16.attentionApplies([q, k, v]) ? "bf16" : "f32") \(q.shape[2])x\(k.shape[2])") {
        attentionOp(q, k, v, scale: scale, causal: causal)
    }
}

private func attentionOp(_ q: Tensor, _ k: Tensor, _ v: Tensor, scale: Float?, causal: Bool) -> Tensor {
    precondition(q.rank == 4 && k.rank == 4 && v.rank == 4, "attention: q \(q.shape), k \(k.shape), v \(v.shape) must be 4-d (B, H, L, D)")
    let (bs, heads, lq, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3])
    let lk = k.shape[2], dv = v.shape[3]
    precondition(k.shape == [bs, heads, lk, d] && v.shape[0...2] == [bs, heads, lk], "attention: mismatched q \(q.shape), k \(k.shape), v \(v.shape)")
    let sc = scale ?? 1 / Float(d).squareRoot()
    if NativeBF16.attentionApplies([q, k, v]) { return scaledDotProductAttentionBF16(q, k, v, scale: sc, causal: causal) }
    let lastContiguous = { (t: Tensor) in t.dtype == .float32 && t.strides[3] == 1 ? t : t.float32().contiguous() }
    let qc = lastContiguous(q), kc = lastContiguous(k), vc = lastContiguous(v)
    let Q = HeadView(qc), K = HeadView(kc), V = HeadView(vc)
    let outMem = Tensor.empty([bs, lq, heads, dv])
    let O = HeadView(outMem.permuted([0, 2, 1, 3]).detach())
    let lse = Tensor.empty([bs, heads, lq])
    let L = lse.data
    defer { withExtendedLifetime((qc, kc, vc)) {} }
    if AttentionTiling.fusedFloat32 && max(d, dv) <= AttentionTiling.fusedMaxHeadDim {
        // Our fused kernel (CKernels attention_body.h). Each task packs its head's keys and values block by block, so
        // tasks take as many query rows as still leave 4 tasks per thread (at least `fusedRows`): in SD's 64x64
        // self-attention (4096 rows, 16 heads at batch 2) one task per head on 2 threads ran ~20% faster than 256 rows.
        let tasksPerHead = max(1, (4 * Parallel.threadCount + bs * heads - 1) / (bs * heads))
        let rowsPerTask = max(AttentionTiling.fusedRows, ((lq + tasksPerHead - 1) / tasksPerHead + 31) / 32 * 32)
        let tasks = (lq + rowsPerTask - 1) / rowsPerTask
        let work = ck_attention_work_floats(rowsPerTask, d, dv)
        Parallel.forEach(bs * heads * tasks, costPerItem: 1 << 18) { task in
            let qb = task % tasks, bh = task / tasks, b = bh / heads, h = bh % heads
            let i0 = qb * rowsPerTask, rows = min(rowsPerTask, lq - i0)
            let buffer = UnsafeMutablePointer<Float>.allocate(capacity: work)
            defer { buffer.deallocate() }
            ck_attention_forward(Q.row(b, h, i0), Q.sl, K.row(b, h, 0), K.sl, V.row(b, h, 0), V.sl, O.row(b, h, i0), O.sl,
                                 rows, lk, d, dv, sc, causal ? 1 : 0, i0 + lk - lq, L + (b * heads + h) * lq + i0, buffer)
        }
    } else {
        sgemmForward(Q, K, V, O, L, bs: bs, heads: heads, lq: lq, lk: lk, d: d, dv: dv, scale: sc, causal: causal)
    }
    let out = outMem.permuted([0, 2, 1, 3]).detach()
    return out.recorded("scaled_dot_product_attention", [q, k, v]) { g in
        attentionBackward(g, qc, kc, vc, out, lse, scale: sc, causal: causal)
    }
}

/// The forward on oneDNN's sgemm for both products, per tile of blockQ x blockK scores (large head dimensions, such as
/// the VAE's 512, where a GEMM library beats our 16-row micro-kernels).
private func sgemmForward(_ Q: HeadView, _ K: HeadView, _ V: HeadView, _ O: HeadView, _ L: UnsafeMutablePointer<Float>, bs: Int,
                          heads: Int, lq: Int, lk: Int, d: Int, dv: Int, scale sc: Float, causal: Bool) {
    let qBlocks = (lq + blockQ - 1) / blockQ
    Parallel.forEach(bs * heads * qBlocks, costPerItem: 1 << 16) { task in
        let qb = task % qBlocks, bh = task / qBlocks, b = bh / heads, h = bh % heads
        let i0 = qb * blockQ, rows = min(blockQ, lq - i0)
        let s = UnsafeMutablePointer<Float>.allocate(capacity: blockQ * blockK)
        let m = UnsafeMutablePointer<Float>.allocate(capacity: blockQ), l = UnsafeMutablePointer<Float>.allocate(capacity: blockQ)
        defer {
            s.deallocate()
            m.deallocate()
            l.deallocate()
        }
        m.update(repeating: -.infinity, count: rows)
        l.update(repeating: 0, count: rows)
        let o = O.row(b, h, i0)
        for r in 0..<rows { (o + r * O.sl).update(repeating: 0, count: dv) }
        let kEnd = causal ? min(lk, i0 + rows + (lk - lq)) : lk
        var j0 = 0
        while j0 < kEnd {
            let cols = min(blockK, kEnd - j0)
            DNNL.sgemm(false, true, rows, cols, d, sc, Q.row(b, h, i0), Q.sl, K.row(b, h, j0), K.sl, 0, s, blockK)
            for r in 0..<rows {
                let srow = s + r * blockK
                if causal {
                    let lim = i0 + r + (lk - lq)
                    for c in 0..<cols where j0 + c > lim { srow[c] = -.infinity }
                }
                let mx = max(m[r], ck_max(srow, cols))
                if mx == -.infinity {
                    for c in 0..<cols { srow[c] = 0 }
                    continue
                } // fully masked so far
                let corr = fastExp(m[r] - mx)
                l[r] = l[r] * corr + ck_exp_shifted_sum(srow, cols, mx)
                m[r] = mx
                if corr != 1 {
                    let orow = o + r * O.sl
                    for c in 0..<dv { orow[c] *= corr }
                }
            }
            DNNL.sgemm(false, false, rows, dv, cols, 1, s, blockK, V.row(b, h, j0), V.sl, 1, o, O.sl)
            j0 += cols
        }
        for r in 0..<rows {
            let inv = l[r] > 0 ? 1 / l[r] : 0, orow = o + r * O.sl
            for c in 0..<dv { orow[c] *= inv }
            L[(b * heads + h) * lq + i0 + r] = m[r] + Foundation.log(l[r])
        }
    }
}

/// FlashAttention-2 backward: pass 1 over key blocks accumulates dK, dV; pass 2 over query blocks accumulates dQ.
/// Both recompute P = exp(S - logsumexp) tile by tile.
private func attentionBackward(_ gOut: Tensor, _ q: Tensor, _ k: Tensor, _ v: Tensor, _ out: Tensor, _ lse: Tensor,
                               scale: Float, causal: Bool) -> [Tensor?] {
    let (bs, heads, lq, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3])
    let lk = k.shape[2], dv = v.shape[3]
    let gO = gOut.contiguous()
    let Q = HeadView(q), K = HeadView(k), V = HeadView(v), O = HeadView(out), dO = HeadView(gO)
    let dq = Tensor(zeros: q.shape), dk = Tensor(zeros: k.shape), dvT = Tensor(zeros: v.shape)
    let dQ = HeadView(dq), dK = HeadView(dk), dV = HeadView(dvT)
    let L = lse.data
    defer { withExtendedLifetime((gO, q, k, v, out, lse)) {} }
    // D_i = rowsum(dO_i * O_i)
    let delta = Tensor.empty([bs, heads, lq]), D = delta.data
    for b in 0..<bs { for h in 0..<heads { for i in 0..<lq {
        let a = dO.row(b, h, i), o = O.row(b, h, i)
        var s: Float = 0
        for c in 0..<dv { s += a[c] * o[c] }
        D[(b * heads + h) * lq + i] = s
    } } }
    let offset = lk - lq
    /// Fills p (rows x cols) with P and ds with dS for the tile (i0, j0).
    func tile(_ b: Int, _ h: Int, _ i0: Int, _ rows: Int, _ j0: Int, _ cols: Int, _ p: UnsafeMutablePointer<Float>, _ ds: UnsafeMutablePointer<Float>) {
        DNNL.sgemm(false, true, rows, cols, d, scale, Q.row(b, h, i0), Q.sl, K.row(b, h, j0), K.sl, 0, p, cols)
        DNNL.sgemm(false, true, rows, cols, dv, 1, dO.row(b, h, i0), dO.sl, V.row(b, h, j0), V.sl, 0, ds, cols)
        for r in 0..<rows {
            let li = L[(b * heads + h) * lq + i0 + r], di = D[(b * heads + h) * lq + i0 + r]
            // Causal: column c is masked when j0 + c > i0 + r + offset.
            ck_attention_backward_row(p + r * cols, ds + r * cols, cols, li, di, causal ? i0 + r + offset - j0 + 1 : cols)
        }
    }
    /// dV += P^T dO and dK += scale dS^T Q for the tile's key rows.
    func addKeyGradients(_ b: Int, _ h: Int, _ i0: Int, _ rows: Int, _ j0: Int, _ cols: Int, _ p: UnsafeMutablePointer<Float>, _ ds: UnsafeMutablePointer<Float>) {
        DNNL.sgemm(true, false, cols, dv, rows, 1, p, cols, dO.row(b, h, i0), dO.sl, 1, dV.row(b, h, j0), dV.sl)
        DNNL.sgemm(true, false, cols, d, rows, scale, ds, cols, Q.row(b, h, i0), Q.sl, 1, dK.row(b, h, j0), dK.sl)
    }
    /// dQ += scale dS K for the tile's query rows.
    func addQueryGradients(_ b: Int, _ h: Int, _ i0: Int, _ rows: Int, _ j0: Int, _ cols: Int, _ ds: UnsafeMutablePointer<Float>) {
        DNNL.sgemm(false, false, rows, d, cols, scale, ds, cols, K.row(b, h, j0), K.sl, 1, dQ.row(b, h, i0), dQ.sl)
    }
    let kBlocks = (lk + blockK - 1) / blockK, qBlocks = (lq + blockQ - 1) / blockQ
    if kBlocks == 1 && qBlocks == 1 {
        // One tile per (batch, head) (the UNet's small attentions): compute P and dS once and take dV, dK and dQ from
        // them, instead of recomputing the tile in a second pass.
        Parallel.forEach(bs * heads, costPerItem: 1 << 16) { bh in
            let b = bh / heads, h = bh % heads
            let p = UnsafeMutablePointer<Float>.allocate(capacity: lq * lk), ds = UnsafeMutablePointer<Float>.allocate(capacity: lq * lk)
            defer {
                p.deallocate()
                ds.deallocate()
            }
            tile(b, h, 0, lq, 0, lk, p, ds)
            addKeyGradients(b, h, 0, lq, 0, lk, p, ds)
            addQueryGradients(b, h, 0, lq, 0, lk, ds)
        }
        return [dq, dk, dvT]
    }
    if AttentionTiling.onePassBackward && bs * heads >= 2 * Parallel.threadCount {
        // Enough (batch, head) pairs to keep every thread busy: one task per pair walks all its tiles once, adding to
        // its own rows of dQ, dK and dV (no other task writes them), so P and dS are computed once per tile instead
        // of once in the dK/dV pass and again in the dQ pass.
        Parallel.forEach(bs * heads, costPerItem: 1 << 20) { bh in
            let b = bh / heads, h = bh % heads
            let p = UnsafeMutablePointer<Float>.allocate(capacity: blockQ * blockK), ds = UnsafeMutablePointer<Float>.allocate(capacity: blockQ * blockK)
            defer {
                p.deallocate()
                ds.deallocate()
            }
            var j0 = 0
            while j0 < lk {
                let cols = min(blockK, lk - j0)
                var i0 = 0
                while i0 < lq {
                    let rows = min(blockQ, lq - i0)
                    tile(b, h, i0, rows, j0, cols, p, ds)
                    addKeyGradients(b, h, i0, rows, j0, cols, p, ds)
                    addQueryGradients(b, h, i0, rows, j0, cols, ds)
                    i0 += rows
                }
                j0 += cols
            }
        }
        return [dq, dk, dvT]
    }
    Parallel.forEach(bs * heads * kBlocks, costPerItem: 1 << 16) { task in
        let kb = task % kBlocks, bh = task / kBlocks, b = bh / heads, h = bh % heads
        let j0 = kb * blockK, cols = min(blockK, lk - j0)
        let p = UnsafeMutablePointer<Float>.allocate(capacity: blockQ * cols), ds = UnsafeMutablePointer<Float>.allocate(capacity: blockQ * cols)
        defer {
            p.deallocate()
            ds.deallocate()
        }
        var i0 = 0
        while i0 < lq {
            let rows = min(blockQ, lq - i0)
            tile(b, h, i0, rows, j0, cols, p, ds)
            addKeyGradients(b, h, i0, rows, j0, cols, p, ds)
            i0 += rows
        }
    }
    Parallel.forEach(bs * heads * qBlocks, costPerItem: 1 << 16) { task in
        let qb = task % qBlocks, bh = task / qBlocks, b = bh / heads, h = bh % heads
        let i0 = qb * blockQ, rows = min(blockQ, lq - i0)
        let p = UnsafeMutablePointer<Float>.allocate(capacity: blockQ * blockK), ds = UnsafeMutablePointer<Float>.allocate(capacity: blockQ * blockK)
        defer {
            p.deallocate()
            ds.deallocate()
        }
        var j0 = 0
        while j0 < lk {
            let cols = min(blockK, lk - j0)
            tile(b, h, i0, rows, j0, cols, p, ds)
            addQueryGradients(b, h, i0, rows, j0, cols, ds)
            j0 += cols
        }
    }
    return [dq, dk, dvT]
}
