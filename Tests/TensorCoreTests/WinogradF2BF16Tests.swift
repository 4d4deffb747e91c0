import XCTest
@testable import TensorCore

// Winograd F(2x2, 3x3) with bf16 operands (WinogradF2BF16, native bf16 inference) against its definition, written out
// here independently of the kernels: V = B^T d B and U = G g G^T (g rounded to bf16) computed in float32 and rounded to bf16, their
// products summed in float64, y = A^T M A + bias; and its error against the float32 convolution, next to the direct
// bf16 convolution's. Skipped, with the reason printed, where the ISA level in use has no native bf16.
final class WinogradF2BF16Tests: XCTestCase {
    private func skipUnlessNative() throws {
        if let reason = NativeBF16.unavailableReason {
            print("WinogradF2BF16Tests skipped: \(reason)")
            throw XCTSkip(reason)
        }
    }

    /// f rounded to the nearest bf16 (ties to even; finite values).
    private func bf16(_ f: Float) -> Double {
        let u = f.bitPattern
        return Double(Float(bitPattern: ((u &+ 0x7fff &+ ((u >> 16) & 1)) >> 16) << 16))
    }

    /// The definition, for x (n, ic, h, w) and w (oc, ic, 3, 3), padding 1.
    private func definition(_ x: Tensor, _ w: Tensor, _ b: Tensor?) -> [Float] {
        let (n, ic, h, wd, oc) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3], w.shape[0])
        let xs = x.toArray(), ws = w.roundedToBFloat16().float32().toArray(), bs = b?.toArray()
        let bt: [[Float]] = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
        let gm: [[Float]] = [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]
        // U[o][c][i][j] rounded to bf16.
        var u = [Double](repeating: 0, count: oc * ic * 16)
        for o in 0..<oc { for c in 0..<ic { for i in 0..<4 { for j in 0..<4 {
            var s: Float = 0 // (G g) G^T, in that order (as float32 rounds it)
            for e in 0..<3 {
                var t: Float = 0
                for a in 0..<3 { t += gm[i][a] * ws[((o * ic + c) * 3 + a) * 3 + e] }
                s += t * gm[j][e]
            }
            u[((o * ic + c) * 4 + i) * 4 + j] = bf16(s)
        } } } }
        var y = [Float](repeating: 0, count: n * oc * h * wd)
        for bi in 0..<n { for ty in 0..<(h / 2) { for tx in 0..<(wd / 2) {
            var v = [Double](repeating: 0, count: ic * 16)
            for c in 0..<ic {
                func d(_ r: Int, _ q: Int) -> Float {
                    let yy = 2 * ty - 1 + r, xx = 2 * tx - 1 + q
                    return yy < 0 || yy >= h || xx < 0 || xx >= wd ? 0 : xs[((bi * ic + c) * h + yy) * wd + xx]
                }
                for i in 0..<4 { for j in 0..<4 {
                    var s: Float = 0 // B^T (d B), in that order
                    for r in 0..<4 {
                        var t: Float = 0
                        for q in 0..<4 { t += d(r, q) * bt[j][q] }
                        s += bt[i][r] * t
                    }
                    v[c * 16 + i * 4 + j] = bf16(s)
                } }
            }
            for o in 0..<oc {
                var m = [Double](repeating: 0, count: 16)
                for c in 0..<ic { for p in 0..<16 { m[p] += u[(o * ic + c) * 16 + p] * v[c * 16 + p] } }
                let at: [[Double]] = [[1, 1, 1, 0], [0, 1, -1, -1]]
                for a in 0..<2 { for e in 0..<2 {
                    var s = 0.0
                    for i in 0..<4 { for j in 0..<4 { s += at[a][i] * m[i * 4 + j] * at[e][j] } }
                    y[((bi * oc + o) * h + 2 * ty + a) * wd + 2 * tx + e] = Float(s) + (bs?[o] ?? 0)
                } }
            }
        } } }
        return y
    }

    private func maxError(_ a: [Float], _ b: [Float]) -> Float {
        zip(a, b).map { abs($0 - $1) }.max()! / max(b.map(abs).max()!, 1e-30)
    }

    func testMatchesItsDefinition() throws {
        try skipUnlessNative()
        let g = TorchGenerator(seed: 31)
        for (xs, oc, bias) in [([2, 24, 8, 12], 40, true), ([1, 48, 10, 6], 16, false)] {
            let x = Tensor.randn(xs, generator: g), w = Tensor.randn([oc, xs[1], 3, 3], generator: g) * 0.1
            let b = bias ? Tensor.randn([oc], generator: g) : nil
            for weight in [w, w.to(.bfloat16)] { // float32 weights, and bf16 ones read as stored
                let ref = definition(x, weight, b)
                let y = GradMode.noGrad { WinogradF2BF16.with(enabled: true, minTiles: 1) { NativeBF16.scope { conv2d(x, weight, b, Conv2dOptions(padding: 1)) } } }
                XCTAssertEqual(y.shape, [xs[0], oc, xs[2], xs[3]])
                XCTAssertLessThan(maxError(y.toArray(), ref), 1e-5, "\(xs) -> \(oc), weights \(weight.dtype)")
            }
        }
    }

    func testChunksOfTileRowsAcrossImages() throws {
        try skipUnlessNative()
        let g = TorchGenerator(seed: 34)
        let (n, ic, oc, h, w) = (3, 16, 24, 10, 8) // 5 tile rows per image, 15 in all
        let x = Tensor.randn([n, ic, h, w], generator: g), wt = Tensor.randn([oc, ic, 3, 3], generator: g) * 0.1
        let b = Tensor.randn([oc], generator: g)
        let ref = definition(x, wt, b)
        let perRow = 16 * (w / 2) * (2 * ic + 4 * oc)
        for rows in [1, 4, 7] { // chunks within an image, across image boundaries, with a shorter last chunk
            let saved = WinogradF2BF16.chunkBytes
            WinogradF2BF16.chunkBytes = rows * perRow
            defer { WinogradF2BF16.chunkBytes = saved }
            let y = GradMode.noGrad { WinogradF2BF16.with(enabled: true, minTiles: 1) { NativeBF16.scope { conv2d(x, wt, b, Conv2dOptions(padding: 1)) } } }
            XCTAssertLessThan(maxError(y.toArray(), ref), 1e-5, "\(rows) tile rows per chunk")
        }
    }

    func testErrorNearTheDirectBF16Convolution() throws {
        try skipUnlessNative()
        let g = TorchGenerator(seed: 32)
        let x = Tensor.randn([2, 64, 16, 16], generator: g).silu(), w = Tensor.randn([48, 64, 3, 3], generator: g) * (1 / 24.0)
        let o = Conv2dOptions(padding: 1)
        let exact = GradMode.noGrad { Winograd.withDisabled { conv2d(x, w, nil, o) } }.toArray()
        let f2 = GradMode.noGrad { WinogradF2BF16.with(enabled: true, minTiles: 1) { NativeBF16.scope { conv2d(x, w, nil, o) } } }.toArray()
        let direct = GradMode.noGrad { WinogradF2BF16.with(enabled: false) { Winograd.withDisabled { NativeBF16.scope { conv2d(x, w, nil, o) } } } }.toArray()
        let rel = { (a: [Float]) -> Double in
            let num = zip(a, exact).reduce(0.0) { $0 + Double($1.0 - $1.1) * Double($1.0 - $1.1) }
            return (num / exact.reduce(0.0) { $0 + Double($1) * Double($1) }).squareRoot()
        }
        let (ef2, edirect) = (rel(f2), rel(direct))
        print("WinogradF2BF16Tests: relative L2 error against float32: F(2x2, 3x3) bf16 \(ef2), direct bf16 \(edirect)")
        XCTAssertGreaterThan(edirect, 1e-4, "the direct convolution must have run in bf16")
        XCTAssertLessThan(ef2, 2.5 * edirect)
    }

    func testOtherGeometriesAndGradientsKeepTheirPaths() throws {
        try skipUnlessNative()
        let g = TorchGenerator(seed: 33)
        let x = Tensor.randn([1, 16, 9, 8], generator: g), w = Tensor.randn([16, 16, 3, 3], generator: g) * 0.1
        // Odd height: not this path (the direct bf16 kernel, equal to float32 on rounded operands).
        let y = GradMode.noGrad { WinogradF2BF16.with(enabled: true, minTiles: 1) { Winograd.withDisabled { NativeBF16.scope { conv2d(x, w, nil, Conv2dOptions(padding: 1)) } } } }
        let ref = GradMode.noGrad { Winograd.withDisabled { conv2d(x.roundedToBFloat16(), w.roundedToBFloat16(), nil, Conv2dOptions(padding: 1)) } }
        XCTAssertLessThan(maxError(y.toArray(), ref.toArray()), 2e-6)
        // Recording gradients: float32.
        let x2 = Tensor.randn([1, 16, 8, 8], generator: g), wg = w.requiringGrad()
        let yg = WinogradF2BF16.with(enabled: true, minTiles: 1) { NativeBF16.scope { conv2d(x2, wg, nil, Conv2dOptions(padding: 1)) } }
        let refg = GradMode.noGrad { conv2d(x2, w, nil, Conv2dOptions(padding: 1)) }
        XCTAssertEqual(yg.toArray(), refg.toArray())
    }
}
