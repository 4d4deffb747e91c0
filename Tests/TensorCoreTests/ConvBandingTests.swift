import XCTest
@testable import TensorCore

// Inference convolutions over bands of output rows (ConvBanding), with the nearest upsampling or the group norm
// (+ SiLU) in front fused into the band assembly: each must equal the whole-image computation. Run on oneDNN's
// direct kernel, where a band computes every pixel exactly as the whole image does (Winograd's tiles start at each
// band's first row, so its rounding differs by band; WinogradTests covers Winograd inside bands).
final class ConvBandingTests: XCTestCase {
    private func whole<T>(_ body: () -> T) -> T {
        let saved = ConvBanding.bandBytes
        ConvBanding.bandBytes = 0
        defer { ConvBanding.bandBytes = saved }
        return Winograd.withDisabled(body)
    }
    /// Bands of `bytes` bytes of output (a few rows each for the shapes below).
    private func banded<T>(_ bytes: Int, _ body: () -> T) -> T {
        let saved = ConvBanding.bandBytes
        ConvBanding.bandBytes = bytes
        defer { ConvBanding.bandBytes = saved }
        return Winograd.withDisabled(body)
    }

    func testBandedConvolutionEqualsWhole() {
        let g = TorchGenerator(seed: 11)
        var asymmetric = Conv2dOptions(stride: 2)
        asymmetric.padding = (top: 0, left: 0, bottom: 1, right: 1) // CompVis' Downsample
        let cases: [(String, [Int], [Int], Conv2dOptions)] = [
            ("3x3 pad 1", [2, 16, 37, 23], [24, 16, 3, 3], Conv2dOptions(padding: 1)),
            ("3x3 stride 2 asymmetric pad", [1, 16, 36, 22], [16, 16, 3, 3], asymmetric),
            ("3x3 dilation 2 pad 2", [1, 8, 29, 19], [16, 8, 3, 3], Conv2dOptions(padding: 2, dilation: 2)),
            ("1x1", [1, 16, 31, 17], [8, 16, 1, 1], Conv2dOptions()),
        ]
        for (name, xs, ws, o) in cases {
            let x = Tensor.randn(xs, generator: g), w = Tensor.randn(ws, generator: g), b = Tensor.randn([ws[0]], generator: g)
            let ref = GradMode.noGrad { whole { conv2d(x, w, b, o) } }
            for bytes in [256, 1000, 2048] {
                let y = GradMode.noGrad { banded(bytes) { conv2d(x, w, b, o) } }
                XCTAssertEqual(y.shape, ref.shape, name)
                XCTAssertEqual(y.toArray(), ref.toArray(), accuracy: 1e-5, file: #filePath, line: #line)
            }
        }
    }

    func testBandedUpsamplingConvolutionEqualsUpsampleThenConvolve() {
        let g = TorchGenerator(seed: 12)
        let x = Tensor.randn([2, 16, 13, 9], generator: g), w = Tensor.randn([16, 16, 3, 3], generator: g), b = Tensor.randn([16], generator: g)
        let ref = GradMode.noGrad { whole { conv2d(x.upsampleNearest(height: 26, width: 18), w, b, Conv2dOptions(padding: 1)) } }
        for bytes in [300, 1024] {
            let y = GradMode.noGrad { banded(bytes) { conv2d(upsamplingNearest: x, factor: 2, w, b, Conv2dOptions(padding: 1)) } }
            XCTAssertEqual(y.shape, [2, 16, 26, 18])
            XCTAssertEqual(y.toArray(), ref.toArray(), accuracy: 1e-5)
        }
        // With autograd recording it falls back to the two ops and still differentiates.
        let xr = x.detach().requiringGrad()
        let yr = banded(300) { conv2d(upsamplingNearest: xr, factor: 2, w, b, Conv2dOptions(padding: 1)) }
        XCTAssertEqual(yr.toArray(), ref.toArray(), accuracy: 1e-5)
        yr.sum().backward()
        XCTAssertNotNil(xr.grad)
    }

    func testBandedGroupNormConvolutionEqualsNormThenConvolve() {
        let g = TorchGenerator(seed: 13)
        let x = Tensor.randn([2, 16, 21, 15], generator: g) * 3 + 1
        let nw = Tensor.randn([16], generator: g), nb = Tensor.randn([16], generator: g)
        let w = Tensor.randn([8, 16, 3, 3], generator: g), b = Tensor.randn([8], generator: g)
        for silu in [true, false] {
            let ref = GradMode.noGrad { whole { conv2d(x.groupNorm(groups: 4, weight: nw, bias: nb, eps: 1e-6, silu: silu), w, b, Conv2dOptions(padding: 1)) } }
            let y = GradMode.noGrad { banded(512) {
                conv2d(groupNormed: x, groups: 4, normWeight: nw, normBias: nb, eps: 1e-6, silu: silu, w, b, Conv2dOptions(padding: 1))
            } }
            XCTAssertEqual(y.toArray(), ref.toArray(), accuracy: 1e-5)
        }
    }

    func testAccumulateAddsInPlace() {
        let g = TorchGenerator(seed: 14)
        let x = Tensor.randn([1, 8, 5, 7], generator: g)
        let y = GradMode.noGrad { x.detach().contiguous() * 2 } // a private copy
        let before = y.toArray()
        let sum = GradMode.noGrad { y.accumulate(x) }
        XCTAssertEqual(sum.toArray(), zip(before, x.toArray()).map { $0 + $1 }, accuracy: 1e-6)
        XCTAssertEqual(y.toArray(), sum.toArray()) // written over y's own storage
    }
}

/// The attention backward's one-pass path (a task per (batch, head) walking all its tiles) against the two-pass path,
/// on shapes with several query and key tiles (lq 300 > 128, lk 700 > 512), causal or not.
final class AttentionBackwardPathTests: XCTestCase {
    func testOnePassBackwardEqualsTwoPass() {
        let g = TorchGenerator(seed: 21)
        for causal in [false, true] {
            let lk = causal ? 300 : 700
            let q = Tensor.randn([2, 3, 300, 16], generator: g), k = Tensor.randn([2, 3, lk, 16], generator: g)
            let v = Tensor.randn([2, 3, lk, 8], generator: g), w = Tensor.randn([2, 3, 300, 8], generator: g)
            func grads(_ onePass: Bool) -> [[Float]] {
                let saved = AttentionTiling.onePassBackward
                AttentionTiling.onePassBackward = onePass
                defer { AttentionTiling.onePassBackward = saved }
                let (qr, kr, vr) = (q.detach().requiringGrad(), k.detach().requiringGrad(), v.detach().requiringGrad())
                (scaledDotProductAttention(qr, kr, vr, causal: causal) * w).sum().backward()
                return [qr.grad!.toArray(), kr.grad!.toArray(), vr.grad!.toArray()]
            }
            let one = grads(true), two = grads(false)
            for (a, b) in zip(one, two) { XCTAssertEqual(a, b, accuracy: 1e-4) }
            XCTAssertGreaterThan(one[0].map(abs).max() ?? 0, 1e-3)
        }
    }
}
