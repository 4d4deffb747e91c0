import CDNNL
import CKernels
import Foundation

// Scaled dot-product attention with its two products in native bf16 (inference under bf16 autocast, where the CPU
// has AVX512_BF16 / AMX): the FlashAttention-2 forward of Attention.swift with q, k, v rounded to bfloat16, S = q k^T
// on oneDNN's bf16 GEMM (float32 accumulation), the online softmax in float32, the probabilities rounded to bf16
// before P V (bf16 operands, float32 accumulation into the float32 output). This is what torch's CPU flash attention
// (aten/src/ATen/native/cpu/FlashAttentionKernel.cpp) computes on the bf16 q, k, v that autocast's linear layers
// return: q k^T and P V in bf16 with a float32 accumulator, the softmax in float32, P converted to bf16.
// Without a causal mask it runs on our vdpbf16ps kernel (CKernels attention_bf16.c, ownKernelAttentionBF16 below,
// 30% faster in the SD UNet); with one, or with `LDM_BF16_ATTENTION_KERNEL=onednn`, on oneDNN's bf16 GEMM.

private let blockQ = AttentionTiling.blockQ, blockK = AttentionTiling.blockK

/// `t` (B, H, L, D), any layout whose last axis is contiguous, as contiguous bf16 (B, H, L, D) rows.
private func bf16Heads(_ t: Tensor) -> Storage {
    let (bs, heads, l, d) = (t.shape[0], t.shape[1], t.shape[2], t.shape[3])
    let src = t.dtype == .float32 && t.strides[3] == 1 ? t : t.float32().contiguous()
    let out = Storage(byteCount: bs * heads * l * d * 2)
    let dst = out.base.assumingMemoryBound(to: UInt16.self), base = src.data
    let (sb, sh, sl) = (src.strides[0], src.strides[1], src.strides[2])
    withExtendedLifetime(src) {
        Parallel.forEach(bs * heads, costPerItem: l * d) { bh in
            let b = bh / heads, h = bh % heads
            for i in 0..<l { ck_to_bf16(base + b * sb + h * sh + i * sl, dst + (bh * l + i) * d, d) }
        }
    }
    return out
}

@inline(__always) private func gemmBF16(_ transB: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Float,
                                        _ a: UnsafePointer<UInt16>, _ lda: Int, _ b: UnsafePointer<UInt16>, _ ldb: Int,
                                        _ beta: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int) {
    let st = dnnl_gemm_bf16bf16f32(78, transB ? 84 : 78, Int64(m), Int64(n), Int64(k), alpha, a, Int64(lda), b, Int64(ldb), beta, c, Int64(ldc))
    precondition(st == dnnl_success, "oneDNN bf16 gemm \(m)x\(n)x\(k) failed: \(st.rawValue)")
}

/// The inference forward of `scaledDotProductAttention` in native bf16 (see above); the result is a (B, H, Lq, Dv)
/// view of (B, Lq, H, Dv) float32 memory, as the float32 kernel returns.
func scaledDotProductAttentionBF16(_ q: Tensor, _ k: Tensor, _ v: Tensor, scale sc: Float, causal: Bool) -> Tensor {
    let (bs, heads, lq, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3])
    let lk = k.shape[2], dv = v.shape[3]
    // The own kernel takes the running maximum of unscaled scores, which needs scale > 0 (always so in the models).
    if !causal && lk > 0 && sc > 0 && AttentionTiling.ownBF16Kernel, let out = ownKernelAttentionBF16(q, k, v, scale: sc) { return out }
    let qb = bf16Heads(q), kb = bf16Heads(k), vb = bf16Heads(v)
    let Q = qb.base.assumingMemoryBound(to: UInt16.self), K = kb.base.assumingMemoryBound(to: UInt16.self)
    let V = vb.base.assumingMemoryBound(to: UInt16.self)
    let outMem = Tensor.empty([bs, lq, heads, dv])
    let O = outMem.data, osl = heads * dv // output row (b, h, i) at ((b * lq + i) * heads + h) * dv
    let qBlocks = (lq + blockQ - 1) / blockQ
    withExtendedLifetime((qb, kb, vb)) {
        Parallel.forEach(bs * heads * qBlocks, costPerItem: 1 << 16) { task in
            let qblk = task % qBlocks, bh = task / qBlocks, b = bh / heads, h = bh % heads
            let i0 = qblk * blockQ, rows = min(blockQ, lq - i0)
            let s = UnsafeMutablePointer<Float>.allocate(capacity: blockQ * blockK)
            let p = UnsafeMutablePointer<UInt16>.allocate(capacity: blockQ * blockK)
            let m = UnsafeMutablePointer<Float>.allocate(capacity: blockQ), l = UnsafeMutablePointer<Float>.allocate(capacity: blockQ)
            defer {
                s.deallocate()
                p.deallocate()
                m.deallocate()
                l.deallocate()
            }
            m.update(repeating: -.infinity, count: rows)
            l.update(repeating: 0, count: rows)
            let o = O + ((b * lq + i0) * heads + h) * dv
            for r in 0..<rows { (o + r * osl).update(repeating: 0, count: dv) }
            let qRows = Q + (bh * lq + i0) * d, kHead = K + bh * lk * d, vHead = V + bh * lk * dv
            let kEnd = causal ? min(lk, i0 + rows + (lk - lq)) : lk
            var j0 = 0
            while j0 < kEnd {
                let cols = min(blockK, kEnd - j0)
                gemmBF16(true, rows, cols, d, sc, qRows, d, kHead + j0 * d, d, 0, s, blockK)
                for r in 0..<rows {
                    let srow = s + r * blockK, prow = p + r * blockK
                    if causal {
                        let lim = i0 + r + (lk - lq)
                        for c in 0..<cols where j0 + c > lim { srow[c] = -.infinity }
                    }
                    let mx = max(m[r], ck_max(srow, cols))
                    if mx == -.infinity {
                        prow.update(repeating: 0, count: cols)
                        continue
                    } // fully masked so far
                    let corr = fastExp(m[r] - mx)
                    l[r] = l[r] * corr + ck_exp_shifted_sum(srow, cols, mx)
                    m[r] = mx
                    ck_to_bf16(srow, prow, cols)
                    if corr != 1 {
                        let orow = o + r * osl
                        for c in 0..<dv { orow[c] *= corr }
                    }
                }
                gemmBF16(false, rows, dv, cols, 1, p, blockK, vHead + j0 * dv, dv, 1, o, osl)
                j0 += cols
            }
            for r in 0..<rows {
                let inv = l[r] > 0 ? 1 / l[r] : 0, orow = o + r * osl
                for c in 0..<dv { orow[c] *= inv }
            }
        }
    }
    return outMem.permuted([0, 2, 1, 3]).detach()
}

/// The same forward on our vdpbf16ps kernel (`ck_attention_forward_bf16`, attention_bf16.c): q, k, v read in place as
/// float32 rows; k and v rounded to bf16 and packed once per head, q per task. nil where the level in use has no
/// AVX512_BF16 (the kernel then computes nothing).
private func ownKernelAttentionBF16(_ q: Tensor, _ k: Tensor, _ v: Tensor, scale sc: Float) -> Tensor? {
    guard CPUFeatures.active.hasNativeBF16 else { return nil }
    let (bs, heads, lq, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3])
    let lk = k.shape[2], dv = v.shape[3]
    let rowsView = { (t: Tensor) in t.dtype == .float32 && t.strides[3] == 1 ? t : t.float32().contiguous() }
    let qc = rowsView(q), kc = rowsView(k), vc = rowsView(v)
    let outMem = Tensor.empty([bs, lq, heads, dv])
    let O = outMem.data, osl = heads * dv
    let rowsPerTask = AttentionTiling.fusedRows, qBlocks = (lq + rowsPerTask - 1) / rowsPerTask
    let work = ck_attention_bf16_work_bytes(rowsPerTask, d, dv), headWords = ck_attention_bf16_packed_words(lk, d, dv)
    // Every head's keys and values rounded to bf16 and packed once, shared by all the head's query tasks (in a
    // Storage: the buffer cache's, not pages faulted in afresh every call).
    let packedStorage = Storage(byteCount: bs * heads * headWords * 4)
    let packed = packedStorage.base.assumingMemoryBound(to: UInt32.self)
    withExtendedLifetime((qc, kc, vc, packedStorage)) {
        Parallel.forEach(bs * heads, costPerItem: lk * (d + dv)) { bh in
            let b = bh / heads, h = bh % heads
            ck_attention_bf16_pack(kc.data + b * kc.strides[0] + h * kc.strides[1], kc.strides[2],
                                   vc.data + b * vc.strides[0] + h * vc.strides[1], vc.strides[2], lk, d, dv, packed + bh * headWords)
        }
        Parallel.forEach(bs * heads * qBlocks, costPerItem: 1 << 18) { task in
            let qblk = task % qBlocks, bh = task / qBlocks, b = bh / heads, h = bh % heads
            let i0 = qblk * rowsPerTask, rows = min(rowsPerTask, lq - i0)
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: work, alignment: 64)
            defer { buffer.deallocate() }
            let qr = qc.data + b * qc.strides[0] + h * qc.strides[1] + i0 * qc.strides[2]
            let done = ck_attention_forward_bf16(qr, qc.strides[2], packed + bh * headWords, O + ((b * lq + i0) * heads + h) * dv,
                                                 osl, rows, lk, d, dv, sc, nil, buffer)
            precondition(done == 1, "attention: the bf16 kernel refused a level with AVX512_BF16")
        }
    }
    return outMem.permuted([0, 2, 1, 3]).detach()
}
