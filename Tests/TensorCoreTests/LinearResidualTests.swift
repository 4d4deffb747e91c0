import XCTest
@testable import TensorCore

// linear(x, w, b, adding: r): the residual added in the GEMM's accumulator (float32 inference) gives linear(x, w, b) + r
// to float32 rounding, with and without bias, for a residual view that is not contiguous; recording gradients it is
// that sum as written (same values, gradients to every operand).
final class LinearResidualTests: XCTestCase {
    private func maxRelativeDifference(_ a: Tensor, _ b: Tensor) -> Float {
        let x = a.contiguous().toArray(), y = b.contiguous().toArray()
        XCTAssertEqual(x.count, y.count)
        return zip(x, y).map { abs($0 - $1) }.max()! / max(y.map(abs).max()!, 1e-30)
    }

    func testResidualInTheAccumulatorEqualsTheSum() {
        let g = TorchGenerator(seed: 7)
        let x = Tensor.randn([2, 37, 48], generator: g), w = Tensor.randn([40, 48], generator: g)
        let b = Tensor.randn([40], generator: g)
        let r = Tensor.randn([2, 40, 37], generator: g).transposed(1, 2) // (2, 37, 40), not contiguous
        for bias in [b, nil] {
            let fused = GradMode.noGrad { linear(x, w, bias, adding: r) }
            let plain = GradMode.noGrad { linear(x, w, bias) + r }
            XCTAssertEqual(fused.shape, [2, 37, 40])
            XCTAssertLessThan(maxRelativeDifference(fused, plain), 1e-6, "bias \(bias != nil)")
            XCTAssertGreaterThan(maxRelativeDifference(fused, GradMode.noGrad { linear(x, w, bias) }), 0.1) // r was added
        }
    }

    func testRecordingGradientsKeepsTheSum() {
        let g = TorchGenerator(seed: 8)
        let x = Tensor.randn([5, 12], generator: g).requiringGrad(), w = Tensor.randn([6, 12], generator: g).requiringGrad()
        let b = Tensor.randn([6], generator: g).requiringGrad(), r = Tensor.randn([5, 6], generator: g).requiringGrad()
        linear(x, w, b, adding: r).sum().backward()
        let grads = [x, w, b, r].map { $0.grad!.toArray() }
        let x2 = Tensor(x.toArray(), shape: x.shape).requiringGrad(), w2 = Tensor(w.toArray(), shape: w.shape).requiringGrad()
        let b2 = Tensor(b.toArray(), shape: b.shape).requiringGrad(), r2 = Tensor(r.toArray(), shape: r.shape).requiringGrad()
        (linear(x2, w2, b2) + r2).sum().backward()
        XCTAssertEqual(grads, [x2, w2, b2, r2].map { $0.grad!.toArray() })
    }
}

// conv2d(x, w, b, options, adding: r) for 1x1 convolutions: the GEMM with the residual in its accumulator, on an NCHW
// input and on a channels-innermost view read in place, equals conv2d + r to float32 rounding; a 3x3 convolution and
// recorded gradients take the sum as written.
final class ConvResidualTests: XCTestCase {
    func testPointwiseConvolutionWithResidual() {
        let g = TorchGenerator(seed: 9)
        let tokens = Tensor.randn([2, 5, 7, 24], generator: g) // (B, H, W, C)
        let viewed = tokens.permuted([0, 3, 1, 2]), plainInput = viewed.contiguous()
        let w = Tensor.randn([16, 24, 1, 1], generator: g), b = Tensor.randn([16], generator: g)
        let r = Tensor.randn([2, 16, 5, 7], generator: g)
        for input in [viewed, plainInput] {
            for bias in [b, nil] {
                let fused = GradMode.noGrad { conv2d(input, w, bias, Conv2dOptions(), adding: r) }
                let want = GradMode.noGrad { conv2d(plainInput, w, bias) + r }
                let a = fused.contiguous().toArray(), e = want.contiguous().toArray()
                XCTAssertEqual(fused.shape, [2, 16, 5, 7])
                XCTAssertLessThan(zip(a, e).map { abs($0 - $1) }.max()! / e.map(abs).max()!, 1e-6)
            }
        }
        let w3 = Tensor.randn([16, 24, 3, 3], generator: g)
        let three = GradMode.noGrad { conv2d(plainInput, w3, b, Conv2dOptions(padding: 1), adding: r) }
        XCTAssertEqual(three.toArray(), GradMode.noGrad { conv2d(plainInput, w3, b, Conv2dOptions(padding: 1)) + r }.toArray())
        let wg = Tensor(w.toArray(), shape: w.shape).requiringGrad()
        conv2d(viewed, wg, b, Conv2dOptions(), adding: r).sum().backward()
        XCTAssertNotNil(wg.grad)
    }
}
