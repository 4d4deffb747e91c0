import Foundation
import XCTest
@testable import TensorCore

// The fused float32 attention forward of our own (CKernels attention_body.h) against softmax(q k^T scale) v computed in
// Double, at every C kernel level this CPU runs: head dimensions that do not fill a vector (13) and SD's 40, value
// width unlike the key width, query counts that are not multiples of the 16-row groups, key counts across several key
// blocks and micro-kernel tails, causal masks with more keys than queries and with fewer (rows that see no key give
// zeros), tasks of several hundred rows, and a (B, L, H, D) view as the attention processor passes its projections.
// (At the AVX-512 level the kernel is attention_avx512.c's 512-bit body, at the others attention_body.h's 8-lane one.)
final class AttentionKernelTests: XCTestCase {
    private var kernelWas = AttentionTiling.Float32Kernel.auto
    override func setUp() {
        kernelWas = AttentionTiling.float32Kernel
        AttentionTiling.float32Kernel = .fused // the kernel under test at every level (auto: AVX-512 and above only)
    }
    override func tearDown() { AttentionTiling.float32Kernel = kernelWas }

    private var levels: [CPUFeatures.ISA] { [.baseline, .avx2, .avx512].filter { $0 <= CPUFeatures.kernels } }

    private func reference(_ q: Tensor, _ k: Tensor, _ v: Tensor, causal: Bool) -> [Float] {
        let (bs, heads, lq, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]), lk = k.shape[2], dv = v.shape[3]
        let Q = q.contiguous().toArray(), K = k.contiguous().toArray(), V = v.contiguous().toArray()
        let scale = 1 / Double(d).squareRoot()
        var out = [Float](repeating: 0, count: bs * heads * lq * dv)
        for bh in 0..<(bs * heads) {
            for i in 0..<lq {
                let limit = causal ? max(0, min(lk, i + (lk - lq) + 1)) : lk
                if limit == 0 { continue } // no key: torch's flash kernel and ours give 0 (the math form NaN)
                var s = [Double](repeating: 0, count: limit)
                for j in 0..<limit {
                    var acc = 0.0
                    for c in 0..<d { acc += Double(Q[(bh * lq + i) * d + c]) * Double(K[(bh * lk + j) * d + c]) }
                    s[j] = acc * scale
                }
                let m = s.max()!
                let e = s.map { Foundation.exp($0 - m) }
                let l = e.reduce(0, +)
                for c in 0..<dv {
                    var acc = 0.0
                    for j in 0..<limit { acc += e[j] * Double(V[(bh * lk + j) * dv + c]) }
                    out[(bh * lq + i) * dv + c] = Float(acc / l)
                }
            }
        }
        return out
    }

    private func relativeError(_ a: [Float], _ b: [Float]) -> Float {
        XCTAssertEqual(a.count, b.count)
        return zip(a, b).map { abs($0 - $1) }.max()! / max(b.map(abs).max() ?? 1, 1e-30)
    }

    func testFusedForwardMatchesDoubleReferenceAtEveryLevel() {
        print("attention kernel levels compared: \(levels.map(\.name))")
        let g = TorchGenerator(seed: 41)
        let cases: [(lq: Int, lk: Int, d: Int, dv: Int, causal: Bool)] = [
            (37, 130, 40, 24, false), (150, 77, 40, 40, false), (70, 70, 13, 13, true), (20, 90, 8, 5, true),
            (90, 20, 16, 16, true), (1, 1, 3, 2, false), (33, 200, 64, 64, false), (300, 130, 160, 160, false),
            (20, 50, 200, 170, true), // above fusedMaxHeadDim: sgemm tiles
            (1100, 60, 40, 40, false), (520, 540, 16, 16, true), // tasks of several hundred rows, ragged last task
        ]
        for c in cases {
            let q = Tensor.randn([2, 3, c.lq, c.d], generator: g) * 2, k = Tensor.randn([2, 3, c.lk, c.d], generator: g)
            let v = Tensor.randn([2, 3, c.lk, c.dv], generator: g)
            let want = reference(q, k, v, causal: c.causal)
            for level in levels {
                let y = CPUFeatures.withKernels(level) { GradMode.noGrad { scaledDotProductAttention(q, k, v, causal: c.causal) } }
                XCTAssertEqual(y.shape, [2, 3, c.lq, c.dv])
                let err = relativeError(y.contiguous().toArray(), want)
                XCTAssertLessThan(err, 1e-5, "\(level.name): lq \(c.lq) lk \(c.lk) d \(c.d) dv \(c.dv) causal \(c.causal)")
            }
        }
    }

    func testAutoChoosesTheFusedKernelFromAVX512() {
        AttentionTiling.float32Kernel = .auto
        for level in [CPUFeatures.ISA.baseline, .avx2, .avx512] where level <= CPUFeatures.kernels {
            XCTAssertEqual(CPUFeatures.withKernels(level) { AttentionTiling.fusedFloat32 }, level >= .avx512, level.name)
        }
        AttentionTiling.float32Kernel = .sgemm
        XCTAssertFalse(AttentionTiling.fusedFloat32)
        AttentionTiling.float32Kernel = .fused
        XCTAssertTrue(CPUFeatures.withKernels(.baseline) { AttentionTiling.fusedFloat32 })
    }

    func testSGEMMTilesMatchTheFusedKernel() {
        // The default float32 path (sgemm tiles) and the fused kernel on SD's shapes, causal and not.
        let g = TorchGenerator(seed: 43)
        for (lq, lk, causal) in [(300, 77, false), (130, 130, true)] {
            let q = Tensor.randn([2, 8, lq, 40], generator: g), k = Tensor.randn([2, 8, lk, 40], generator: g)
            let v = Tensor.randn([2, 8, lk, 40], generator: g)
            let fused = GradMode.noGrad { scaledDotProductAttention(q, k, v, causal: causal) }.contiguous().toArray()
            AttentionTiling.float32Kernel = .sgemm
            let tiles = GradMode.noGrad { scaledDotProductAttention(q, k, v, causal: causal) }.contiguous().toArray()
            AttentionTiling.float32Kernel = .fused
            XCTAssertLessThan(relativeError(fused, tiles), 1e-5, "lq \(lq) lk \(lk) causal \(causal)")
        }
    }

    func testProjectionLayoutViewAndLogSumExpGradient() {
        // (B, L, H, D) memory seen as (B, H, L, D): rows of q, k, v are H * D floats apart.
        let g = TorchGenerator(seed: 42)
        let q = Tensor.randn([2, 45, 4, 40], generator: g).permuted([0, 2, 1, 3])
        let k = Tensor.randn([2, 80, 4, 40], generator: g).permuted([0, 2, 1, 3])
        let v = Tensor.randn([2, 80, 4, 40], generator: g).permuted([0, 2, 1, 3])
        let want = reference(q, k, v, causal: false)
        for level in levels {
            let y = CPUFeatures.withKernels(level) { GradMode.noGrad { scaledDotProductAttention(q, k, v) } }
            XCTAssertLessThan(relativeError(y.contiguous().toArray(), want), 1e-5, level.name)
        }
        // The backward reads the forward's log-sum-exp: dq of sum(out * w) against central differences in Double.
        let w = Tensor.randn([1, 2, 9, 6], generator: g)
        let qs = Tensor.randn([1, 2, 9, 6], generator: g), ks = Tensor.randn([1, 2, 11, 6], generator: g)
        let vs = Tensor.randn([1, 2, 11, 6], generator: g)
        let qg = Tensor(qs.toArray(), shape: qs.shape).requiringGrad()
        (scaledDotProductAttention(qg, ks, vs) * w).sum().backward()
        let grad = qg.grad!.toArray(), W = w.toArray()
        var numeric = [Float](repeating: 0, count: grad.count)
        let h: Float = 1e-2
        for i in 0..<grad.count {
            var up = qs.toArray(), down = up
            up[i] += h
            down[i] -= h
            let fUp = zip(reference(Tensor(up, shape: qs.shape), ks, vs, causal: false), W).map { Double($0 * $1) }.reduce(0, +)
            let fDown = zip(reference(Tensor(down, shape: qs.shape), ks, vs, causal: false), W).map { Double($0 * $1) }.reduce(0, +)
            numeric[i] = Float((fUp - fDown) / Double(2 * h))
        }
        XCTAssertLessThan(relativeError(grad, numeric), 2e-3)
    }
}
