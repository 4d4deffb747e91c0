import XCTest
@testable import TensorCore

// Native bf16 compute (oneDNN's avx512_core_bf16 / amx convolution and matmul) against its definition: the float32
// kernels on bf16-rounded inputs and weights (bf16 products are exact in float32, so only the summation order
// differs). Skipped, with the reason printed, where the ISA level in use has no native bf16.
final class NativeBF16Tests: XCTestCase {
    private func skipUnlessNative() throws {
        guard NativeBF16.available else {
            let reason = "no native bf16 at ISA level \(CPUFeatures.active.name) (detected \(CPUFeatures.detected.name))"
            print("NativeBF16Tests skipped: \(reason)")
            throw XCTSkip(reason)
        }
    }

    private func relativeError(_ a: Tensor, _ b: Tensor) -> Float {
        let x = a.toArray(), y = b.toArray()
        XCTAssertEqual(x.count, y.count)
        return zip(x, y).map { abs($0 - $1) }.max()! / max(y.map(abs).max() ?? 1, 1e-30)
    }

    func testLinearMatchesFloat32OnRoundedOperands() throws {
        try skipUnlessNative()
        let g = TorchGenerator(seed: 21)
        let x = Tensor.randn([2, 77, 96], generator: g), w = Tensor.randn([130, 96], generator: g) * 0.1, b = Tensor.randn([130], generator: g)
        let ref = GradMode.noGrad { linear(x.roundedToBFloat16(), w.roundedToBFloat16(), b) }
        for weight in [w, w.to(.bfloat16)] { // float32 weights, and bf16 ones read as stored
            let y = GradMode.noGrad { NativeBF16.scope { linear(x, weight, b) } }
            XCTAssertEqual(y.shape, ref.shape)
            XCTAssertLessThan(relativeError(y, ref), 2e-6, "weights \(weight.dtype)")
        }
    }

    func testConvolutionMatchesFloat32OnRoundedOperands() throws {
        try skipUnlessNative()
        let g = TorchGenerator(seed: 22)
        var asym = Conv2dOptions()
        asym.padding = (top: 0, left: 0, bottom: 1, right: 1)
        asym.stride = (2, 2)
        for (xs, oc, k, o) in [([2, 32, 16, 16], 48, 3, Conv2dOptions(padding: 1)), ([1, 24, 15, 17], 16, 3, asym), ([2, 64, 8, 8], 32, 1, Conv2dOptions())] {
            let x = Tensor.randn(xs, generator: g), w = Tensor.randn([oc, xs[1], k, k], generator: g) * 0.1, b = Tensor.randn([oc], generator: g)
            let ref = GradMode.noGrad { Winograd.withDisabled { conv2d(x.roundedToBFloat16(), w.roundedToBFloat16(), b, o) } }
            for weight in [w, w.to(.bfloat16)] {
                let y = GradMode.noGrad { WinogradF2BF16.with(enabled: false) { Winograd.withDisabled { NativeBF16.scope { conv2d(x, weight, b, o) } } } }
                XCTAssertEqual(y.shape, ref.shape)
                XCTAssertLessThan(relativeError(y, ref), 2e-6, "\(xs) k\(k), weights \(weight.dtype)")
            }
        }
    }

    func testGradientRecordingOpsStayFloat32() throws {
        try skipUnlessNative()
        let g = TorchGenerator(seed: 23)
        let x = Tensor.randn([4, 40], generator: g), w = Tensor.randn([24, 40], generator: g).requiringGrad()
        let y = NativeBF16.scope { linear(x, w) }
        let ref = GradMode.noGrad { linear(x, w) }
        XCTAssertEqual(y.toArray(), ref.toArray(), "an op recording gradients must not run in bf16")
    }
}
