import XCTest
@testable import TensorCore

// Attention under bf16 autocast with native bf16 (AttentionBF16.swift) against its definition, as torch's CPU flash
// attention computes it on bf16 q, k, v: S = round(q) round(k)^T * scale accumulated in float32, P = exp(S - rowmax)
// in float32 rounded to bf16 for P V, the row sum over the float32 exponentials. With at most one key block the
// definition is exact up to summation order; over several blocks the running maximum changes where P is rounded, so
// those are held to the bf16 size of error against float32 attention. Skipped where the level has no native bf16.
final class AttentionBF16Tests: XCTestCase {
    private func skipUnlessNative() throws {
        if let reason = NativeBF16.unavailableReason {
            print("AttentionBF16Tests skipped: \(reason)")
            throw XCTSkip(reason)
        }
    }

    /// The definition above for (B, H, L, D) tensors, in plain loops.
    private func reference(_ q: Tensor, _ k: Tensor, _ v: Tensor, causal: Bool) -> [Float] {
        let (bs, heads, lq, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]), lk = k.shape[2], dv = v.shape[3]
        let r = { (t: Tensor) in t.contiguous().toArray().map { floatFromBF16(bf16Bits($0)) } }
        let Q = r(q), K = r(k), V = r(v)
        let scale = 1 / Float(d).squareRoot()
        var out = [Float](repeating: 0, count: bs * heads * lq * dv)
        for bh in 0..<(bs * heads) {
            for i in 0..<lq {
                let limit = causal ? min(lk, i + (lk - lq) + 1) : lk
                var s = [Float](repeating: 0, count: limit)
                for j in 0..<limit {
                    var acc: Float = 0
                    for c in 0..<d { acc += Q[(bh * lq + i) * d + c] * K[(bh * lk + j) * d + c] }
                    s[j] = acc * scale
                }
                let m = s.max()!
                let e = s.map { Foundation.exp($0 - m) }
                let l = e.reduce(0, +)
                for c in 0..<dv {
                    var acc: Float = 0
                    for j in 0..<limit { acc += floatFromBF16(bf16Bits(e[j])) * V[(bh * lk + j) * dv + c] }
                    out[(bh * lq + i) * dv + c] = acc / l
                }
            }
        }
        return out
    }

    private func relativeError(_ a: [Float], _ b: [Float]) -> Float {
        XCTAssertEqual(a.count, b.count)
        return zip(a, b).map { abs($0 - $1) }.max()! / max(b.map(abs).max() ?? 1, 1e-30)
    }

    func testOneKeyBlockMatchesDefinition() throws {
        try skipUnlessNative()
        let g = TorchGenerator(seed: 31)
        for (lq, lk, causal) in [(150, 77, false), (64, 200, false), (96, 96, true)] {
            let q = Tensor.randn([2, 3, lq, 40], generator: g), k = Tensor.randn([2, 3, lk, 40], generator: g)
            let v = Tensor.randn([2, 3, lk, 24], generator: g)
            let y = GradMode.noGrad { NativeBF16.autocastScope(true) { scaledDotProductAttention(q, k, v, causal: causal) } }
            XCTAssertEqual(y.shape, [2, 3, lq, 24])
            let err = relativeError(y.contiguous().toArray(), reference(q, k, v, causal: causal))
            XCTAssertLessThan(err, 2e-6, "lq \(lq) lk \(lk) causal \(causal)")
        }
    }

    func testSeveralKeyBlocksStayWithinBF16Error() throws {
        try skipUnlessNative()
        let g = TorchGenerator(seed: 32)
        // A (B, L, H, D) view, as the attention processor passes projections, and 1100 keys (three blocks).
        let q = Tensor.randn([1, 300, 2, 40], generator: g).permuted([0, 2, 1, 3])
        let k = Tensor.randn([1, 1100, 2, 40], generator: g).permuted([0, 2, 1, 3])
        let v = Tensor.randn([1, 1100, 2, 40], generator: g).permuted([0, 2, 1, 3])
        let y = GradMode.noGrad { NativeBF16.autocastScope(true) { scaledDotProductAttention(q, k, v) } }
        let f32 = GradMode.noGrad { scaledDotProductAttention(q, k, v) }
        let err = relativeError(y.contiguous().toArray(), f32.contiguous().toArray())
        XCTAssertGreaterThan(err, 0, "bf16 attention should differ from float32 (did it run in bf16?)")
        XCTAssertLessThan(err, 2e-2)
        XCTAssertLessThan(relativeError(y.contiguous().toArray(), reference(q, k, v, causal: false)), 5e-3)
    }

    func testOwnKernelMatchesOneDNNPath() throws {
        try skipUnlessNative()
        let g = TorchGenerator(seed: 34)
        // Our vdpbf16ps kernel against oneDNN's bf16 GEMMs (the same definition) in one key block of either, SD's head
        // dimension 40 in a (B, L, H, D) view, an odd head dimension, query counts off the 16-row groups.
        for (lq, lk, d, dv) in [(200, 256, 40, 40), (37, 77, 13, 7)] {
            let q = Tensor.randn([2, lq, 3, d], generator: g).permuted([0, 2, 1, 3])
            let k = Tensor.randn([2, lk, 3, d], generator: g).permuted([0, 2, 1, 3])
            let v = Tensor.randn([2, lk, 3, dv], generator: g).permuted([0, 2, 1, 3])
            let run = { (own: Bool) -> [Float] in
                let was = AttentionTiling.ownBF16Kernel
                AttentionTiling.ownBF16Kernel = own
                defer { AttentionTiling.ownBF16Kernel = was }
                return GradMode.noGrad { NativeBF16.autocastScope(true) { scaledDotProductAttention(q, k, v) } }.contiguous().toArray()
            }
            let ours = run(true), onednn = run(false), want = reference(q, k, v, causal: false)
            // Up to summation order and exp's last bit, which can move a probability across a bf16 rounding boundary
            // (one bf16 step of one P: ~1e-4 of the output here).
            let errOurs = relativeError(ours, want), errOneDNN = relativeError(onednn, want)
            print("bf16 attention lq \(lq) lk \(lk) d \(d): ours vs definition \(errOurs), oneDNN path vs definition \(errOneDNN)")
            XCTAssertLessThan(errOurs, 5e-4, "lq \(lq) lk \(lk) d \(d) dv \(dv)")
            XCTAssertLessThan(relativeError(ours, onednn), 5e-4, "lq \(lq) lk \(lk) d \(d) dv \(dv)")
        }
    }

    func testGradientRecordingAttentionStaysFloat32() throws {
        try skipUnlessNative()
        let g = TorchGenerator(seed: 33)
        let q = Tensor.randn([1, 2, 20, 8], generator: g).requiringGrad(), k = Tensor.randn([1, 2, 20, 8], generator: g)
        let v = Tensor.randn([1, 2, 20, 8], generator: g)
        let y = NativeBF16.autocastScope(true) { scaledDotProductAttention(q, k, v) }
        let ref = GradMode.noGrad { scaledDotProductAttention(q, k, v) }
        XCTAssertEqual(y.contiguous().toArray(), ref.contiguous().toArray(), "attention recording gradients must not run in bf16")
    }
}
