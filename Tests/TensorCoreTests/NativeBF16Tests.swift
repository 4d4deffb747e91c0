import XCTest
@testable import TensorCore

// Native bf16 compute (oneDNN's avx512_core_bf16 / amx convolution and matmul) against its definition: the float32
// kernels on bf16-rounded inputs and weights (bf16 products are exact in float32, so only the summation order
// differs). Skipped, with the reason printed, where the ISA level in use has no native bf16.
final class NativeBF16Tests: XCTestCase {
    private func skipUnlessNative() throws {
        if let reason = NativeBF16.unavailableReason {
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

    /// The fused forms (the residual added in the float32 accumulator, the token layout written directly) against the
    /// same definition: the float32 kernels on rounded operands, then the float32 sum / the permuted copy.
    func testFusedResidualAndTokenOutputsMatchFloat32OnRoundedOperands() throws {
        try skipUnlessNative()
        let g = TorchGenerator(seed: 24)
        let x = Tensor.randn([2, 77, 96], generator: g), w = Tensor.randn([130, 96], generator: g) * 0.1, b = Tensor.randn([130], generator: g)
        let r = Tensor.randn([2, 77, 130], generator: g)
        let linRef = GradMode.noGrad { linear(x.roundedToBFloat16(), w.roundedToBFloat16(), b) + r }
        for (weight, bias) in [(w, b), (w.to(.bfloat16), b), (w, nil)] {
            let y = GradMode.noGrad { NativeBF16.scope { linear(x, weight, bias, adding: r) } }
            let ref = bias == nil ? GradMode.noGrad { linear(x.roundedToBFloat16(), w.roundedToBFloat16()) + r } : linRef
            XCTAssertLessThan(relativeError(y, ref), 2e-6, "linear + residual, weights \(weight.dtype), bias \(bias != nil)")
        }
        // 1x1 convolutions: an NCHW input and a (B, H, W, C) token input seen as NCHW (proj_out), and proj_in's tokens.
        let (c, oc, h, wd) = (64, 40, 6, 10)
        let planes = Tensor.randn([2, c, h, wd], generator: g), tokens = Tensor.randn([2, h * wd, c], generator: g)
        let cw = Tensor.randn([oc, c, 1, 1], generator: g) * 0.1, cb = Tensor.randn([oc], generator: g)
        let cr = Tensor.randn([2, oc, h, wd], generator: g)
        for input in [planes, tokens.reshaped([2, h, wd, c]).permuted([0, 3, 1, 2])] {
            let ref = GradMode.noGrad { conv2d(input.roundedToBFloat16(), cw.roundedToBFloat16(), cb) + cr }
            let y = GradMode.noGrad { NativeBF16.scope { conv2d(input, cw, cb, Conv2dOptions(), adding: cr) } }
            XCTAssertEqual(y.shape, ref.shape)
            XCTAssertLessThan(relativeError(y, ref), 2e-6, "conv 1x1 + residual, input strides \(input.strides)")
        }
        let tokRef = GradMode.noGrad { conv2d(planes.roundedToBFloat16(), cw.roundedToBFloat16(), cb).permuted([0, 2, 3, 1]).reshaped([2, h * wd, oc]) }
        let tok = GradMode.noGrad { NativeBF16.scope { conv2d(tokens: planes, cw, cb, Conv2dOptions()) } }
        XCTAssertEqual(tok.shape, tokRef.shape)
        XCTAssertLessThan(relativeError(tok, tokRef), 2e-6, "conv 1x1 -> tokens")
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
