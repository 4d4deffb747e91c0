import Foundation
import NeuralNetwork
import TensorCore
import XCTest

// The int8 linear layer and convolution (TensorCore's Int8.swift) against their definition written out here in plain
// Swift: the same quantisation scheme (weights per output channel symmetric s8, activations u8 with a zero point per
// row / per image, PyTorch's dynamic quantisation parameters), exact integer accumulation, the same dequantisation.
// oneDNN's VNNI kernels sum the same integers exactly, so the results agree to float rounding. Skipped, with the reason
// printed, where the CPU or the ISA level in use has no AVX512_VNNI.
final class Int8Tests: XCTestCase {
    override func setUpWithError() throws {
        if let why = Int8Compute.unavailableReason {
            print("Int8Tests skipped: \(why)")
            throw XCTSkip(why)
        }
    }

    // MARK: the definition

    /// Weights (rows = output channels) to s8: scale = max|w| / 127 (1 for an all-zero row), q = clamp(rint(w / scale)).
    static func quantizeWeights(_ w: [Float], rows: Int) -> (q: [Int32], scales: [Float], sums: [Int32]) {
        let cols = w.count / rows
        var q = [Int32](repeating: 0, count: w.count), scales = [Float](), sums = [Int32]()
        for r in 0..<rows {
            let row = w[(r * cols)..<((r + 1) * cols)]
            var s = row.map(abs).max()! / 127
            if !(s > 0) { s = 1 }
            scales.append(s)
            var sum: Int32 = 0
            for i in 0..<cols {
                let v = min(max((w[r * cols + i] / s).rounded(.toNearestOrEven), -127), 127)
                q[r * cols + i] = Int32(v)
                sum += Int32(v)
            }
            sums.append(sum)
        }
        return (q, scales, sums)
    }

    /// u8 parameters of values whose range is widened to include 0: scale = (max - min) / 255, zp = rint(-min / scale).
    static func activationParams(_ x: ArraySlice<Float>) -> (scale: Float, zp: Int32) {
        let mn = min(x.min()!, 0), mx = max(x.max()!, 0)
        var s = (mx - mn) / 255
        if !(s > 0) { s = 1 }
        return (s, Int32(min(max((-mn / s).rounded(.toNearestOrEven), 0), 255)))
    }

    static func quantize(_ x: Float, _ s: Float, _ zp: Int32) -> Int32 {
        Int32(min(max((x / s).rounded(.toNearestOrEven) + Float(zp), 0), 255))
    }

    /// y = x @ w^T + b with x quantised per row.
    static func linearDefinition(_ x: [Float], rows: Int, _ w: [Float], outputs: Int, _ b: [Float]?) -> [Float] {
        let k = x.count / rows
        let (qw, sw, _) = quantizeWeights(w, rows: outputs)
        var y = [Float](repeating: 0, count: rows * outputs)
        for r in 0..<rows {
            let (sx, zp) = activationParams(x[(r * k)..<((r + 1) * k)])
            let qx = (0..<k).map { quantize(x[r * k + $0], sx, zp) }
            for o in 0..<outputs {
                var acc: Int64 = 0
                for i in 0..<k { acc += Int64(qx[i] - zp) * Int64(qw[o * k + i]) }
                y[r * outputs + o] = Float(acc) * (sx * sw[o]) + (b?[o] ?? 0)
            }
        }
        return y
    }

    /// conv2d (NCHW, groups 1) with each image quantised as a whole; padding is the real value 0.
    static func convDefinition(_ x: [Float], _ xs: [Int], _ w: [Float], _ ws: [Int], _ b: [Float]?, stride: Int,
                               pad: (top: Int, left: Int, bottom: Int, right: Int)) -> ([Float], [Int]) {
        let (n, c, h, wd) = (xs[0], xs[1], xs[2], xs[3]), (oc, kh, kw) = (ws[0], ws[2], ws[3])
        let oh = (h + pad.top + pad.bottom - kh) / stride + 1, ow = (wd + pad.left + pad.right - kw) / stride + 1
        let (qw, sw, _) = quantizeWeights(w, rows: oc)
        var y = [Float](repeating: 0, count: n * oc * oh * ow)
        let plane = c * h * wd
        for i in 0..<n {
            let (sx, zp) = activationParams(x[(i * plane)..<((i + 1) * plane)])
            let qx = (0..<plane).map { quantize(x[i * plane + $0], sx, zp) - zp }
            for o in 0..<oc {
                for oy in 0..<oh {
                    for ox in 0..<ow {
                        var acc: Int64 = 0
                        for ci in 0..<c {
                            for ky in 0..<kh {
                                let iy = oy * stride + ky - pad.top
                                guard iy >= 0 && iy < h else { continue }
                                for kx in 0..<kw {
                                    let ix = ox * stride + kx - pad.left
                                    guard ix >= 0 && ix < wd else { continue }
                                    acc += Int64(qx[(ci * h + iy) * wd + ix]) * Int64(qw[((o * c + ci) * kh + ky) * kw + kx])
                                }
                            }
                        }
                        y[((i * oc + o) * oh + oy) * ow + ox] = Float(acc) * (sx * sw[o]) + (b?[o] ?? 0)
                    }
                }
            }
        }
        return (y, [n, oc, oh, ow])
    }

    // MARK: helpers

    func random(_ shape: [Int], seed: UInt64, shift: Float = 0) -> Tensor {
        Tensor.randn(shape, generator: TorchGenerator(seed: seed)) + Tensor(scalar: shift)
    }

    func assertClose(_ a: [Float], _ b: [Float], _ what: String, tolerance: Float = 2e-6, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, what, file: file, line: line)
        let scale = b.map(abs).max() ?? 1
        let err = zip(a, b).map { abs($0 - $1) }.max() ?? 0
        XCTAssertLessThanOrEqual(err, tolerance * scale, "\(what): max error \(err) against max |y| \(scale)", file: file, line: line)
    }

    // MARK: tests

    func testWeightQuantizationIsPerOutputChannelSymmetric() {
        let w = random([7, 45], seed: 1)
        var values = w.toArray()
        for i in 0..<45 { values[2 * 45 + i] = 0 } // an all-zero channel: scale 1, all q 0
        let q = Int8Weight(Tensor(values, shape: [7, 45]))
        let (qw, sw, sums) = Int8Tests.quantizeWeights(values, rows: 7)
        XCTAssertEqual(q.int8Values.map { Int32($0) }, qw)
        XCTAssertEqual(q.scales, sw)
        XCTAssertEqual(q.sums, sums)
        XCTAssertTrue(q.int8Values.allSatisfy { $0 >= -127 })
        XCTAssertEqual(q.byteCount, 7 * 45 + 7 * 8)
        // Dequantised weights within half a step of each channel's float weights.
        let dq = q.dequantized().toArray()
        for i in 0..<values.count { XCTAssertLessThanOrEqual(abs(dq[i] - values[i]), sw[i / 45] * 0.5001) }
    }

    func testLinearEqualsDefinition() {
        for (rows, k, outF, bias, shift) in [(15, 37, 29, true, Float(0.4)), (2, 320, 1280, false, 0), (77, 768, 64, true, -2)] {
            let x = random([rows, k], seed: 2, shift: shift), w = random([outF, k], seed: 3), b = bias ? random([outF], seed: 4) : nil
            let ours = linearInt8(x, Int8Weight(w), b).toArray()
            let def = Int8Tests.linearDefinition(x.toArray(), rows: rows, w.toArray(), outputs: outF, b?.toArray())
            assertClose(ours, def, "linear \(rows)x\(k) -> \(outF)")
            // And int8 is close to the float32 layer: a few steps of the quantisation grid.
            assertClose(ours, linear(x, w, b).toArray(), "linear \(rows)x\(k) vs float32", tolerance: 0.03)
        }
        // Leading dimensions are rows.
        let x = random([2, 3, 16], seed: 5), w = random([8, 16], seed: 6)
        XCTAssertEqual(linearInt8(x, Int8Weight(w), nil).shape, [2, 3, 8])
        assertClose(linearInt8(x, Int8Weight(w), nil).toArray(), linearInt8(x.reshaped([6, 16]), Int8Weight(w), nil).toArray(), "rows", tolerance: 0)
    }

    func testConvolutionEqualsDefinition() {
        let cases: [(x: [Int], w: [Int], stride: Int, pad: (Int, Int, Int, Int), shift: Float)] = [
            ([2, 8, 9, 7], [12, 8, 3, 3], 1, (1, 1, 1, 1), 0.5),
            ([1, 16, 10, 10], [8, 16, 3, 3], 2, (1, 1, 1, 1), 0),
            ([2, 6, 8, 8], [5, 6, 3, 3], 2, (0, 0, 1, 1), 1), // CompVis' Downsample: F.pad(0,1,0,1), no conv padding
            ([2, 24, 5, 6], [16, 24, 1, 1], 1, (0, 0, 0, 0), -0.3),
            ([1, 320, 4, 4], [8, 320, 3, 3], 1, (1, 1, 1, 1), 0),
        ]
        for (xs, ws, stride, pad, shift) in cases {
            let x = random(xs, seed: 7, shift: shift), w = random(ws, seed: 8), b = random([ws[0]], seed: 9)
            var o = Conv2dOptions(stride: stride)
            o.padding = pad
            let ours = conv2dInt8(x, Int8Weight(w), b, o)
            let (def, shape) = Int8Tests.convDefinition(x.toArray(), xs, w.toArray(), ws, b.toArray(), stride: stride,
                                                        pad: (pad.0, pad.1, pad.2, pad.3))
            XCTAssertEqual(ours.shape, shape)
            assertClose(ours.toArray(), def, "conv \(xs) * \(ws) stride \(stride) pad \(pad)")
            assertClose(ours.toArray(), conv2d(x, w, b, o).toArray(), "conv \(xs) vs float32", tolerance: 0.03)
        }
    }

    func testBatchImagesAreQuantizedAlone() {
        // Per-image (conv) and per-row (linear) parameters: an image's result does not depend on the rest of its batch.
        let x = random([2, 8, 6, 6], seed: 10), w = Int8Weight(random([4, 8, 3, 3], seed: 11))
        let scaled = concat([x.narrow(0, 0, 1), x.narrow(0, 1, 1) * Tensor(scalar: 50)], axis: 0)
        let o = Conv2dOptions(padding: 1)
        XCTAssertEqual(conv2dInt8(scaled, w, nil, o).narrow(0, 0, 1).toArray(), conv2dInt8(x.narrow(0, 0, 1), w, nil, o).toArray())
    }

    func testLayersUseTheirInt8Weights() {
        let lin = Linear(16, 8), conv = Conv2d(4, 6, kernel: 3, padding: 1)
        lin.weight.assign(random([8, 16], seed: 12))
        conv.weight.assign(random([6, 4, 3, 3], seed: 13))
        let x = random([3, 16], seed: 14), xi = random([1, 4, 5, 5], seed: 15)
        let f32 = (lin(x).toArray(), conv(xi).toArray())
        let report = GradMode.noGrad { lin.quantizeToInt8() }
        XCTAssertEqual(report.layers, 1)
        XCTAssertEqual(report.int8Bytes, 16 * 8 + 8 * 8)
        _ = conv.quantizeToInt8()
        GradMode.noGrad {
            XCTAssertEqual(lin(x).toArray(), linearInt8(x, lin.int8!, lin.bias).toArray())
            XCTAssertEqual(conv(xi).toArray(), conv2dInt8(xi, conv.int8!, conv.bias, conv.options).toArray())
            XCTAssertNotEqual(lin(x).toArray(), f32.0)
        }
        lin.removeInt8Quantization()
        conv.removeInt8Quantization()
        XCTAssertEqual(lin(x).toArray(), f32.0)
        XCTAssertEqual(conv(xi).toArray(), f32.1)
        // Skipped layers keep their float weights.
        _ = conv.quantizeToInt8(skipping: [ObjectIdentifier(conv)])
        XCTAssertNil(conv.int8)
    }
}
