import XCTest
@testable import TensorCore

// Convolutions wide enough that oneDNN picks a blocked layout (nChw8c / nChw16c) and reorders: checked against a
// direct loop-nest convolution computed here in Double.
final class ConvLayoutTests: XCTestCase {
    func testBlockedLayoutConvMatchesDirectLoop() {
        let g = TorchGenerator(seed: 3)
        let (n, c, h, w, o) = (1, 32, 9, 7, 48)
        let x = Tensor.randn([n, c, h, w], generator: g), wt = Tensor.randn([o, c, 3, 3], generator: g), b = Tensor.randn([o], generator: g)
        let y = GradMode.noGrad { conv2d(x, wt, b, Conv2dOptions(padding: 1)) }
        let xs = x.toArray(), ws = wt.toArray(), bs = b.toArray(), ys = y.toArray()
        var maxErr: Double = 0
        for oc in 0..<o { for i in 0..<h { for j in 0..<w {
            var acc = Double(bs[oc])
            for ic in 0..<c { for a in 0..<3 { for bb in 0..<3 {
                let ii = i + a - 1, jj = j + bb - 1
                if ii < 0 || jj < 0 || ii >= h || jj >= w { continue }
                acc += Double(xs[(ic * h + ii) * w + jj]) * Double(ws[((oc * c + ic) * 3 + a) * 3 + bb])
            } } }
            maxErr = max(maxErr, abs(acc - Double(ys[(oc * h + i) * w + j])))
        } } }
        XCTAssertLessThan(maxErr, 1e-3)
        // A second call reuses the cached reordered weights; a weight update must invalidate them.
        let y2 = GradMode.noGrad { conv2d(x, wt, b, Conv2dOptions(padding: 1)) }
        XCTAssertEqual(y2.toArray(), ys)
        wt.assign(wt * 2)
        let y3 = GradMode.noGrad { conv2d(x, wt, nil, Conv2dOptions(padding: 1)) }
        let y1nb = GradMode.noGrad { conv2d(x, wt * 0.5, nil, Conv2dOptions(padding: 1)) }
        XCTAssertEqual(y3.toArray().map { $0 * 0.5 }, y1nb.toArray().map { $0 }, accuracy: 1e-3)
    }

    /// 1x1 convolutions in inference run as one GEMM per image on the plain planes (no reorders): checked against a
    /// Double loop nest, with and without bias, with a bf16-stored weight, and against the training path (oneDNN).
    func testPointwiseInferenceConvMatchesDirectLoop() {
        let g = TorchGenerator(seed: 4)
        let (n, c, h, w, o) = (2, 24, 5, 7, 40)
        let x = Tensor.randn([n, c, h, w], generator: g), wt = Tensor.randn([o, c, 1, 1], generator: g), b = Tensor.randn([o], generator: g)
        let xs = x.toArray(), ws = wt.toArray(), bs = b.toArray()
        for withBias in [true, false] {
            let y = GradMode.noGrad { conv2d(x, wt, withBias ? b : nil) }
            XCTAssertEqual(y.shape, [n, o, h, w])
            let ys = y.toArray()
            var maxErr: Double = 0
            for im in 0..<n { for oc in 0..<o { for p in 0..<(h * w) {
                var acc = withBias ? Double(bs[oc]) : 0
                for ic in 0..<c { acc += Double(xs[(im * c + ic) * h * w + p]) * Double(ws[oc * c + ic]) }
                maxErr = max(maxErr, abs(acc - Double(ys[(im * o + oc) * h * w + p])))
            } } }
            XCTAssertLessThan(maxErr, 1e-4, "bias \(withBias)")
            let training = conv2d(x, Tensor(ws, shape: wt.shape).requiringGrad(), withBias ? b : nil)
            XCTAssertEqual(training.toArray(), ys, accuracy: 1e-4)
        }
        let wb = wt.to(.bfloat16)
        let yb = GradMode.noGrad { conv2d(x, wb, b) }, yw = GradMode.noGrad { conv2d(x, wb.float32(), b) }
        XCTAssertEqual(yb.toArray(), yw.toArray())
    }
}

func XCTAssertEqual(_ a: [Float], _ b: [Float], accuracy: Float, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.count, b.count, file: file, line: line)
    let err = zip(a, b).map { abs($0 - $1) }.max() ?? 0
    XCTAssertLessThanOrEqual(err, accuracy, file: file, line: line)
}
