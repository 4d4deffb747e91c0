import XCTest
@testable import TensorCore

// Winograd F(4x4, 3x3) against oneDNN's direct convolution (itself checked against PyTorch in OpParityTests and a
// direct loop in ConvLayoutTests): forward with bias, paddings 0-2 including asymmetric ones, tile and channel
// remainders, several tile chunks, the backward data and weight gradients, and inside the banded inference path.
final class WinogradTests: XCTestCase {
    private let cases: [(String, [Int], Int, Conv2dOptions)] = {
        var asym = Conv2dOptions()
        asym.padding = (top: 0, left: 1, bottom: 2, right: 1)
        return [
            ("pad 1, channel and tile remainders", [2, 17, 13, 11], 33, Conv2dOptions(padding: 1)),
            ("pad 0", [3, 32, 9, 10], 16, Conv2dOptions()),
            ("pad 2", [1, 16, 6, 7], 40, Conv2dOptions(padding: 2)),
            ("asymmetric pad", [1, 24, 12, 8], 20, asym),
            ("one tile row", [4, 16, 3, 17], 16, Conv2dOptions(padding: 1)),
        ]
    }()

    /// Runs `body` with tile chunks of `chunk` bytes and U held whole up to `whole` bytes (0: U by groups of two
    /// output-channel panels, or, when `fused`, made inside the GEMMs by ck_wino_fused).
    private func settings<T>(chunk: Int, whole: Int, fused: Bool = false, _ body: () -> T) -> T {
        let saved = (Winograd.chunkBytes, Winograd.wholeWeightsBytes, Winograd.panelGroupBytes, Winograd.fusedMaxTiles)
        (Winograd.chunkBytes, Winograd.wholeWeightsBytes, Winograd.fusedMaxTiles) = (chunk, whole, fused ? Int.max : 0)
        if whole == 0 { Winograd.panelGroupBytes = 0 }
        defer { (Winograd.chunkBytes, Winograd.wholeWeightsBytes, Winograd.panelGroupBytes, Winograd.fusedMaxTiles) = saved }
        return body()
    }

    /// max |a - b| / max |b|.
    private func relativeError(_ a: Tensor, _ b: Tensor) -> Float {
        let x = a.toArray(), y = b.toArray()
        XCTAssertEqual(x.count, y.count)
        let scale = y.map(abs).max() ?? 1
        return zip(x, y).map { abs($0 - $1) }.max()! / max(scale, 1e-30)
    }

    func testForwardMatchesDirectConvolution() {
        let g = TorchGenerator(seed: 5)
        for (name, xs, oc, o) in cases {
            let x = Tensor.randn(xs, generator: g), w = Tensor.randn([oc, xs[1], 3, 3], generator: g) * 0.1
            let b = Tensor.randn([oc], generator: g)
            let ref = GradMode.noGrad { Winograd.withDisabled { conv2d(x, w, b, o) } }
            XCTAssertTrue(Winograd.withMinTiles(1) { Winograd.applies(n: xs[0], ic: xs[1], oc: oc, kh: 3, kw: 3, oh: ref.shape[2], ow: ref.shape[3], o) }, name)
            // chunk 0: chunks as small as the transformed weights allow; whole 0: U computed two panels at a time, or
            // fused into the GEMMs.
            for (chunk, whole, fused) in [(Winograd.chunkBytes, Winograd.wholeWeightsBytes, false), (0, Winograd.wholeWeightsBytes, false),
                                          (0, 0, false), (0, 0, true)] {
                let y = settings(chunk: chunk, whole: whole, fused: fused) { GradMode.noGrad { Winograd.withMinTiles(1) { conv2d(x, w, b, o) } } }
                XCTAssertEqual(y.shape, ref.shape, name)
                XCTAssertLessThan(relativeError(y, ref), 2e-5, "\(name), chunk \(chunk), whole U up to \(whole) bytes, fused \(fused)")
            }
        }
    }

    func testBackwardMatchesDirectConvolution() {
        let g = TorchGenerator(seed: 6)
        for (name, xs, oc, o) in cases {
            let x0 = Tensor.randn(xs, generator: g), w = Tensor.randn([oc, xs[1], 3, 3], generator: g) * 0.1
            let b = Tensor.randn([oc], generator: g)
            func grads() -> (Tensor, Tensor, Tensor) {
                let x = Tensor(x0.toArray(), shape: x0.shape).requiringGrad(), wv = Tensor(w.toArray(), shape: w.shape).requiringGrad()
                let bv = Tensor(b.toArray(), shape: b.shape).requiringGrad()
                let y = conv2d(x, wv, bv, o)
                let upstream = Tensor.randn(y.shape, generator: TorchGenerator(seed: 9))
                (y * upstream).sum().backward()
                return (x.grad!, wv.grad!, bv.grad!)
            }
            let (gxRef, gwRef, gbRef) = Winograd.withDisabled { grads() }
            for (chunk, whole, fused) in [(Winograd.chunkBytes, Winograd.wholeWeightsBytes, false), (0, 0, false), (0, 0, true)] {
                let (gx, gw, gb) = settings(chunk: chunk, whole: whole, fused: fused) { Winograd.withMinTiles(1) { grads() } }
                XCTAssertLessThan(relativeError(gx, gxRef), 2e-5, "\(name): input gradient, fused \(fused)")
                XCTAssertLessThan(relativeError(gw, gwRef), 2e-5, "\(name): weight gradient, fused \(fused)")
                XCTAssertLessThan(relativeError(gb, gbRef), 1e-5, "\(name): bias gradient, fused \(fused)")
            }
        }
    }

    func testBandedInferencePathsUseWinograd() {
        let g = TorchGenerator(seed: 7)
        let x = Tensor.randn([1, 16, 30, 21], generator: g), w = Tensor.randn([24, 16, 3, 3], generator: g) * 0.1
        let b = Tensor.randn([24], generator: g), nw = Tensor.randn([16], generator: g), nb = Tensor.randn([16], generator: g)
        let saved = ConvBanding.bandBytes
        defer { ConvBanding.bandBytes = saved }
        func run(_ winograd: Bool, bands: Int) -> [Tensor] {
            ConvBanding.bandBytes = bands
            let body = {
                GradMode.noGrad {
                    [conv2d(x, w, b, Conv2dOptions(padding: 1)),
                     conv2d(upsamplingNearest: x, factor: 2, w, b, Conv2dOptions(padding: 1)),
                     conv2d(groupNormed: x, groups: 4, normWeight: nw, normBias: nb, eps: 1e-6, silu: true, w, b, Conv2dOptions(padding: 1))]
                }
            }
            return winograd ? Winograd.withMinTiles(1, body) : Winograd.withDisabled(body)
        }
        let ref = run(false, bands: 0)
        for bytes in [700, 2048] {
            let grouped = settings(chunk: 0, whole: 0) { run(true, bands: bytes) }
            let fused = settings(chunk: 0, whole: 0, fused: true) { run(true, bands: bytes) }
            for (y, r) in zip(run(true, bands: bytes) + grouped + fused, ref + ref + ref) {
                XCTAssertEqual(y.shape, r.shape)
                XCTAssertLessThan(relativeError(y, r), 2e-5, "bands of \(bytes) bytes")
            }
        }
    }

    /// A weight stored in bfloat16 is read as stored by the weight transform (no float32 copy): the result is that of
    /// the same weight widened to float32, bit for bit, whole U and U by panel groups, through every kernel level.
    func testBFloat16WeightsAreReadAsStored() {
        let g = TorchGenerator(seed: 8)
        for (name, xs, oc, o) in cases {
            let x = Tensor.randn(xs, generator: g), b = Tensor.randn([oc], generator: g)
            let wb = (Tensor.randn([oc, xs[1], 3, 3], generator: g) * 0.1).to(.bfloat16)
            XCTAssertEqual(wb.dtype, .bfloat16)
            let w32 = wb.float32()
            for level in [CPUFeatures.ISA.baseline, .avx2, .avx512].filter({ $0 <= CPUFeatures.kernels }) {
                for (whole, fused) in [(Winograd.wholeWeightsBytes, false), (0, false), (0, true)] {
                    let (y, ref) = CPUFeatures.withKernels(level) {
                        settings(chunk: Winograd.chunkBytes, whole: whole, fused: fused) {
                            GradMode.noGrad { Winograd.withMinTiles(1) { (conv2d(x, wb, b, o), conv2d(x, w32, b, o)) } }
                        }
                    }
                    XCTAssertEqual(y.toArray(), ref.toArray(), "\(name), level \(level), whole U up to \(whole) bytes, fused \(fused)")
                }
            }
        }
    }
    /// The weight transform fused into the GEMMs (ck_wino_fused) against the plain definition of the convolution (a
    /// direct sum in double precision), through every kernel level: several input-channel slices with a remainder
    /// (WINO_FUSED_KC each), output-channel panel groups with a remainder, input channels that are not a multiple of 8
    /// (the transform's general path) and tile counts that are not a multiple of the micro-kernels' 12 or 6 (18, 8,
    /// 13 and 11 tiles: AVX-512 tails of 6, 8, 1 and 11 rows). The fused and the panel-group paths sum in the same
    /// order: equal bit for bit.
    func testFusedTransformMatchesPlainConvolutionAtEveryLevel() {
        let g = TorchGenerator(seed: 11)
        for (n, ic, oc, h, w) in [(2, 136, 72, 9, 10), (1, 67, 40, 7, 13), (1, 24, 20, 4, 52), (1, 16, 24, 4, 44)] {
            let x = Tensor.randn([n, ic, h, w], generator: g), wt = Tensor.randn([oc, ic, 3, 3], generator: g) * 0.1
            let b = Tensor.randn([oc], generator: g)
            let (xs, ws, bs) = (x.toArray(), wt.toArray(), b.toArray())
            var plain = [Float](repeating: 0, count: n * oc * h * w) // padding 1: output h x w
            for i in 0..<n { for o in 0..<oc { for y in 0..<h { for xx in 0..<w {
                var sum = Double(bs[o])
                for c in 0..<ic { for ky in 0..<3 { for kx in 0..<3 {
                    let iy = y + ky - 1, ix = xx + kx - 1
                    guard iy >= 0, iy < h, ix >= 0, ix < w else { continue }
                    sum += Double(xs[((i * ic + c) * h + iy) * w + ix]) * Double(ws[((o * ic + c) * 3 + ky) * 3 + kx])
                } } }
                plain[((i * oc + o) * h + y) * w + xx] = Float(sum)
            } } } }
            let ref = Tensor(plain, shape: [n, oc, h, w])
            for level in [CPUFeatures.ISA.baseline, .avx2, .avx512].filter({ $0 <= CPUFeatures.kernels }) {
                let (fused, grouped) = CPUFeatures.withKernels(level) {
                    GradMode.noGrad { Winograd.withMinTiles(1) {
                        (settings(chunk: Winograd.chunkBytes, whole: 0, fused: true) { conv2d(x, wt, b, Conv2dOptions(padding: 1)) },
                         settings(chunk: Winograd.chunkBytes, whole: 0, fused: false) { conv2d(x, wt, b, Conv2dOptions(padding: 1)) })
                    } }
                }
                XCTAssertLessThan(relativeError(fused, ref), 2e-5, "\(n)x\(ic)->\(oc) \(h)x\(w), level \(level)")
                XCTAssertEqual(fused.toArray(), grouped.toArray(), "\(n)x\(ic)->\(oc) \(h)x\(w), level \(level)")
            }
        }
    }
    /// Below `minTiles`, an inference convolution whose U is not held whole still runs as Winograd with the fused
    /// transform (down to `fusedMinTiles`); with gradients recorded the same convolution stays on oneDNN (its backward
    /// passes follow the forward's choice), bit for bit the direct result.
    func testFewTilesRunFusedInInferenceOnly() {
        let g = TorchGenerator(seed: 12)
        let x = Tensor.randn([1, 32, 8, 8], generator: g), w = Tensor.randn([48, 32, 3, 3], generator: g) * 0.1
        let b = Tensor.randn([48], generator: g), o = Conv2dOptions(padding: 1)
        let saved = (Winograd.wholeWeightsBytes, Winograd.fusedMinTiles, Winograd.fusedMaxTiles)
        (Winograd.wholeWeightsBytes, Winograd.fusedMinTiles, Winograd.fusedMaxTiles) = (0, 4, 64)
        defer { (Winograd.wholeWeightsBytes, Winograd.fusedMinTiles, Winograd.fusedMaxTiles) = saved }
        XCTAssertFalse(Winograd.applies(n: 1, ic: 32, oc: 48, kh: 3, kw: 3, oh: 8, ow: 8, o)) // 4 tiles < minTiles
        XCTAssertTrue(Winograd.appliesForInference(n: 1, ic: 32, oc: 48, kh: 3, kw: 3, oh: 8, ow: 8, o))
        let direct = GradMode.noGrad { Winograd.withDisabled { conv2d(x, w, b, o) } }
        let inference = GradMode.noGrad { conv2d(x, w, b, o) }
        XCTAssertNotEqual(inference.toArray(), direct.toArray(), "the inference convolution should have run as Winograd")
        XCTAssertLessThan(relativeError(inference, direct), 2e-5)
        let training = conv2d(x, Tensor(w.toArray(), shape: w.shape).requiringGrad(), b, o)
        XCTAssertEqual(training.toArray(), direct.toArray())
    }
}
