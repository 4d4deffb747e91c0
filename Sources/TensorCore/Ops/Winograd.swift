import Foundation
import CKernels

// 3x3 stride-1 convolutions by Winograd's minimal filtering F(4x4, 3x3) (Lavin & Gray, CVPR 2016; CKernels'
// winograd.c): 2.25 multiply-adds per output, input channel and output channel instead of 9, in our own GEMM
// micro-kernel. oneDNN 2.6 offers Winograd only for AVX-512; PyTorch's CPU convolutions are direct. The transform
// adds rounding (relative error ~4e-6 of the output's scale in float32, against ~1e-7 for a direct convolution).

public enum Winograd {
    /// `LDM_WINOGRAD=0` turns the path off (every convolution then runs on oneDNN's direct kernels).
    public nonisolated(unsafe) static var enabled = ProcessInfo.processInfo.environment["LDM_WINOGRAD"] != "0"
    /// Runs `body` with the Winograd path off (benchmarks comparing it with oneDNN's direct convolution).
    public static func withDisabled<T>(_ body: () throws -> T) rethrows -> T {
        let was = enabled
        enabled = false
        defer { enabled = was }
        return try body()
    }
    /// Bytes of transformed input and GEMM output held at once (tiles are processed in chunks of this size, at
    /// least the transformed weights' size so that they are streamed few times).
    public nonisolated(unsafe) static var chunkBytes = (ProcessInfo.processInfo.environment["LDM_WINOGRAD_CHUNK_MB"].flatMap { Int($0) } ?? 8) << 20

    /// Whether a convolution of this geometry goes through Winograd: 3x3, stride 1, no dilation, one group, padding
    /// at most 2, enough channels for the GEMM panels and enough 4x4 output tiles to repay the weight transform.
    public static func applies(n: Int, ic: Int, oc: Int, kh: Int, kw: Int, oh: Int, ow: Int, _ o: Conv2dOptions) -> Bool {
        eligible(ic: ic, oc: oc, kh: kh, kw: kw, o) && n * ((oh + 3) / 4) * ((ow + 3) / 4) >= minTiles
    }
    private static func eligible(ic: Int, oc: Int, kh: Int, kw: Int, _ o: Conv2dOptions) -> Bool {
        enabled && kh == 3 && kw == 3 && o.stride == (1, 1) && o.dilation == (1, 1) && o.groups == 1
            && [o.padding.top, o.padding.left, o.padding.bottom, o.padding.right].allSatisfy({ $0 <= 2 }) && ic >= 16 && oc >= 16
    }
    /// Whether an inference convolution (no gradients recorded) of this geometry runs as Winograd: where `applies`,
    /// and also with fewer tiles than `minTiles`, down to `fusedMinTiles`, where the weight transform is fused into
    /// the GEMMs (U too large to hold whole: the SD UNet's 1280-channel convolutions at 8x8, where this is twice as
    /// fast as oneDNN's direct kernel). Training keeps `applies`: its backward passes follow the forward's choice.
    public static func appliesForInference(n: Int, ic: Int, oc: Int, kh: Int, kw: Int, oh: Int, ow: Int, _ o: Conv2dOptions) -> Bool {
        if applies(n: n, ic: ic, oc: oc, kh: kh, kw: kw, oh: oh, ow: ow, o) { return true }
        let tiles = n * ((oh + 3) / 4) * ((ow + 3) / 4)
        return eligible(ic: ic, oc: oc, kh: kh, kw: kw, o) && tiles >= fusedMinTiles && fusesTransform(n: n, ic: ic, oc: oc, oh: oh, ow: ow)
    }
    /// Whether a Winograd convolution of this size makes U inside the GEMMs (`fusedMaxTiles`).
    public static func fusesTransform(n: Int, ic: Int, oc: Int, oh: Int, ow: Int) -> Bool {
        ck_wino_u_floats(oc, ic) * 4 > wholeWeightsBytes && n * ((oh + 3) / 4) * ((ow + 3) / 4) <= fusedMaxTiles
    }
    /// See `appliesForInference`; `LDM_WINOGRAD_FUSED_MIN_TILES` overrides it.
    public nonisolated(unsafe) static var fusedMinTiles = ProcessInfo.processInfo.environment["LDM_WINOGRAD_FUSED_MIN_TILES"].flatMap { Int($0) } ?? 8
    /// Fewest 4x4 output tiles (over the batch) for which Winograd beats oneDNN's direct kernel here (measured with
    /// `ldm bench core --ops convs`); `LDM_WINOGRAD_MIN_TILES` overrides it.
    public nonisolated(unsafe) static var minTiles = ProcessInfo.processInfo.environment["LDM_WINOGRAD_MIN_TILES"].flatMap { Int($0) } ?? 24

    /// Runs `body` with Winograd used for every eligible convolution however small (tests).
    public static func withMinTiles<T>(_ tiles: Int, _ body: () throws -> T) rethrows -> T {
        let was = minTiles
        minTiles = tiles
        defer { minTiles = was }
        return try body()
    }

    /// Scratch of the transforms, kept between the calls of training steps (which run the same convolutions every step;
    /// transient buffers rarely match the buffer cache's sizes and page-fault in afresh: a tenth of a small training
    /// step). One slot for transformed weights, one for tiles, each grown to the largest request up to `retainedBytes`
    /// and lent to one call at a time. Inference calls use transient buffers and hold nothing at their peak.
    final class ScratchSlot: @unchecked Sendable {
        static let weights = ScratchSlot(), tiles = ScratchSlot()
        nonisolated(unsafe) static var retainedBytes = (ProcessInfo.processInfo.environment["LDM_WINOGRAD_SCRATCH_MB"].flatMap { Int($0) } ?? 32) << 20
        private var buffer: Storage?
        private var busy = false
        private let lock = NSLock()

        /// A buffer of at least `bytes`: the slot's own when `retain` (and it is free and the size allowed), else a
        /// transient one. Hand it back with `give`.
        func take(_ bytes: Int, retain: Bool) -> Storage {
            if retain && bytes <= ScratchSlot.retainedBytes {
                lock.lock()
                defer { lock.unlock() }
                if !busy {
                    if buffer.map({ $0.byteCount < bytes }) ?? true {
                        buffer = nil
                        buffer = Storage(byteCount: bytes)
                    }
                    busy = true
                    return buffer!
                }
            }
            return Storage(byteCount: bytes)
        }
        func give(_ s: Storage?) {
            lock.lock()
            if let s, s === buffer { busy = false }
            lock.unlock()
        }
    }

    /// Transformed weights U up to this size are computed once per convolution; larger ones (the UNet's 640- and
    /// 1280-channel convolutions: 59-472 MB) a few output-channel panels at a time (about `panelGroupBytes`), right
    /// before the GEMMs that use them, so that they are produced and consumed in cache and never held whole.
    public nonisolated(unsafe) static var wholeWeightsBytes = 40 << 20
    public nonisolated(unsafe) static var panelGroupBytes = 6 << 20
    /// Convolutions whose U is not made whole and that have at most this many 4x4 output tiles (over the batch) make
    /// U inside the GEMMs (`Weights.fusedProducts`) instead of by panel groups: with few tile rows per GEMM, writing U
    /// out and reading it back costs more than the GEMMs (the SD UNet's 1280-channel convolutions at 16x16, 32 tiles
    /// at batch 2). From about 48 tiles on the panel groups are as fast or faster (each V row block is read once per
    /// group of U, not once per 4 panels; measured on a Zen 4, AVX-512 and AVX2 kernels).
    /// `LDM_WINOGRAD_FUSED_MAX_TILES` overrides it (0: never).
    public nonisolated(unsafe) static var fusedMaxTiles = ProcessInfo.processInfo.environment["LDM_WINOGRAD_FUSED_MAX_TILES"].flatMap { Int($0) } ?? 40

    /// A convolution's weights ready for `convolve`: (oc, ic, 3, 3) float32, or, when `transposed`, the backward-data
    /// convolution of a weight (ic, oc, 3, 3) (its transpose, flipped spatially); with U when it is small.
    struct Weights {
        /// The weight as the transform reads it: contiguous float32, or a contiguous bfloat16 weight as stored
        /// (widened exactly by the kernel, never copied to float32).
        let w32: Tensor
        let oc: Int, ic: Int
        let transposed: Bool
        private(set) var whole: Storage?

        /// `retain`: U in the retained scratch (training; hand it back with `done`).
        init(_ weight: Tensor, transposed: Bool, retain: Bool = false) {
            w32 = weight.dtype == .bfloat16 && weight.isContiguous ? weight : weight.float32().contiguous()
            (oc, ic) = transposed ? (w32.shape[1], w32.shape[0]) : (w32.shape[0], w32.shape[1])
            self.transposed = transposed
            let bytes = ck_wino_u_floats(oc, ic) * 4
            if bytes <= Winograd.wholeWeightsBytes {
                let u = ScratchSlot.weights.take(bytes, retain: retain)
                transform(into: u.floats(), panels: 0..<((oc + 15) / 16))
                whole = u
            }
        }

        func done() { ScratchSlot.weights.give(whole) }

        /// M = V U for all output-channel panels with the weight transform fused into the GEMMs (`ck_wino_fused`): U is
        /// made slice by slice in a per-thread buffer of a few hundred KB and never written whole.
        func fusedProducts(_ v: UnsafePointer<Float>, _ m: UnsafeMutablePointer<Float>, tp: Int, rows: Int, icp: Int, ocp: Int) {
            let bf16 = w32.dtype == .bfloat16
            let wp = UnsafeRawPointer(w32.storage.base + w32.offset * (bf16 ? 2 : 4)), (oc, ic) = (self.oc, self.ic)
            let t: Int32 = transposed ? 1 : 0
            withExtendedLifetime(w32) {
                Parallel.forRange(ocp / 16, costPerItem: 36 * tp * icp * 16) { r in
                    let work = UnsafeMutablePointer<Float>.allocate(capacity: ck_wino_fused_work_floats())
                    defer { work.deallocate() }
                    ck_wino_fused(wp, bf16 ? 1 : 0, oc, ic, t, v, m, tp, rows, icp, ocp, r.lowerBound, r.upperBound, work)
                }
            }
        }

        /// U of the output-channel panels `panels` into `u` (laid out for those panels only).
        func transform(into u: UnsafeMutablePointer<Float>, panels: Range<Int>) {
            let bf16 = w32.dtype == .bfloat16
            let wp = UnsafeRawPointer(w32.storage.base + w32.offset * (bf16 ? 2 : 4)), (oc, ic) = (self.oc, self.ic)
            let t: Int32 = transposed ? 1 : 0
            withExtendedLifetime(w32) {
                Parallel.forRange(panels.count, costPerItem: ic * 16 * 100) { r in
                    ck_wino_weights(wp, bf16 ? 1 : 0, oc, ic, t, u, panels.lowerBound, panels.count,
                                    panels.lowerBound + r.lowerBound, panels.lowerBound + r.upperBound)
                }
            }
        }
    }

    /// The 4x4 output tiles of a convolution, numbered image by image, processed in chunks of `chunk` tiles (a
    /// multiple of 6, the GEMM micro-kernel's rows) whose transformed input V and GEMM side M together stay within
    /// `budget` bytes.
    private struct Tiling {
        let icp: Int, ocp: Int, th: Int, tw: Int, tiles: Int, chunk: Int
        init(n: Int, ic: Int, oc: Int, oh: Int, ow: Int, budget: Int) {
            icp = (ic + 7) / 8 * 8
            ocp = (oc + 15) / 16 * 16
            th = (oh + 3) / 4
            tw = (ow + 3) / 4
            tiles = n * th * tw
            chunk = min((tiles + 5) / 6 * 6, max(6, budget / (36 * (icp + ocp) * 4) / 6 * 6))
        }
        var vBytes: Int { 36 * chunk * icp * 4 }
        var mBytes: Int { 36 * chunk * ocp * 4 }
        /// Runs `body(first tile, tiles, rows padded to 6)` per chunk, after zeroing the padding rows of the given
        /// V / M buffers (so that they stay finite, or add nothing to sums over tiles).
        func forEachChunk(zeroing buffers: [(UnsafeMutablePointer<Float>, width: Int)], _ body: (Int, Int, Int) -> Void) {
            var t0 = 0
            while t0 < tiles {
                let count = min(chunk, tiles - t0), tp = (count + 5) / 6 * 6
                if tp > count {
                    for (p, width) in buffers { for a in 0..<36 { memset(p + (a * tp + count) * width, 0, (tp - count) * width * 4) } }
                }
                body(t0, count, tp)
                t0 += count
            }
        }
    }

    /// y = conv2d(x, w) + bias for one (band of an) image batch: x holds `n` images of `ic` planes of h x w floats
    /// (`xs` = (image, channel) strides in floats), y `n` images of `oc` planes of oh x ow floats (`ys` likewise),
    /// padding (top, left) as given; bottom/right padding is implied by oh, ow.
    static func convolve(_ x: UnsafePointer<Float>, n: Int, h: Int, w: Int, xs: (Int, Int), padTop: Int, padLeft: Int,
                         weights: Weights, bias: UnsafePointer<Float>?, _ y: UnsafeMutablePointer<Float>, oh: Int, ow: Int,
                         ys: (Int, Int), retain: Bool = false) {
        let (ic, oc) = (weights.ic, weights.oc)
        // Whole U: chunks of at least U's size, so that U is streamed a few times at most. U by panel groups:
        // recomputed per chunk, so chunks are large (usually all tiles).
        let budget = weights.whole != nil ? max(chunkBytes, ck_wino_u_floats(oc, ic) * 4) : max(chunkBytes, 64 << 20)
        let plan = Tiling(n: n, ic: ic, oc: oc, oh: oh, ow: ow, budget: budget)
        let (icp, ocp, th, tw) = (plan.icp, plan.ocp, plan.th, plan.tw), ocbs = ocp / 16
        let fused = weights.whole == nil && plan.tiles <= fusedMaxTiles
        let groupPanels = min(ocbs, max(2, panelGroupBytes / (36 * icp * 16 * 4)))
        let groupBytes = weights.whole == nil && !fused ? ck_wino_u_floats(groupPanels * 16, icp) * 4 : 0
        let scratch = ScratchSlot.tiles.take(plan.vBytes + plan.mBytes + groupBytes, retain: retain)
        defer { ScratchSlot.tiles.give(scratch) }
        let vp = scratch.floats(), mp = vp + plan.vBytes / 4
        let groupU = groupBytes > 0 ? mp + plan.mBytes / 4 : nil
        plan.forEachChunk(zeroing: [(vp, icp)]) { t0, count, tp in
            Parallel.forRange(count, costPerItem: icp * 36 * 8) { r in
                ck_wino_input(x, ic, h, w, xs.0, xs.1, padTop, padLeft, th, tw, t0, r.lowerBound, r.upperBound, vp, tp)
            }
            if let u = weights.whole {
                let up = u.base.assumingMemoryBound(to: Float.self)
                Parallel.forRange(36 * ocbs, costPerItem: tp * icp * 16) { r in
                    ck_wino_gemm(vp, up, 0, ocbs, mp, tp, icp, ocp, r.lowerBound, r.upperBound)
                }
            } else if fused {
                weights.fusedProducts(vp, mp, tp: tp, rows: count, icp: icp, ocp: ocp)
            } else if let up = groupU {
                for first in stride(from: 0, to: ocbs, by: groupPanels) {
                    let panels = first..<min(ocbs, first + groupPanels)
                    weights.transform(into: up, panels: panels)
                    Parallel.forRange(36 * panels.count, costPerItem: tp * icp * 16) { r in
                        ck_wino_gemm(vp, up, panels.lowerBound, panels.count, mp, tp, icp, ocp, r.lowerBound, r.upperBound)
                    }
                }
            }
            Parallel.forRange(count, costPerItem: ocp * 36 * 8) { r in
                ck_wino_output(mp, tp, ocp, oc, bias, y, oh, ow, ys.0, ys.1, th, tw, t0, r.lowerBound, r.upperBound)
            }
        }
        withExtendedLifetime((weights.w32, weights.whole, scratch)) {}
    }

    /// The weight gradient (oc, ic, 3, 3) of y = conv2d(x, w) given dy, x and dy laid out as for `convolve` (whole
    /// images, plain NCHW): dW = G^T [ sum over tiles of (B^T d B) . (A dY A^T) ] G, the sum as 36 GEMMs over tiles.
    static func weightGradient(_ x: UnsafePointer<Float>, n: Int, ic: Int, h: Int, w: Int, padTop: Int, padLeft: Int,
                               dy: UnsafePointer<Float>, oc: Int, oh: Int, ow: Int) -> Tensor {
        let duBytes = ck_wino_u_floats(oc, ic) * 4
        let plan = Tiling(n: n, ic: ic, oc: oc, oh: oh, ow: ow, budget: max(chunkBytes, duBytes))
        let (icp, ocp, th, tw) = (plan.icp, plan.ocp, plan.th, plan.tw)
        let scratch = ScratchSlot.tiles.take(plan.vBytes + plan.mBytes, retain: true)
        let du = ScratchSlot.weights.take(duBytes, retain: true)
        defer {
            ScratchSlot.tiles.give(scratch)
            ScratchSlot.weights.give(du)
        }
        let vp = scratch.floats(), mp = vp + plan.vBytes / 4, dup = du.floats()
        memset(dup, 0, duBytes)
        plan.forEachChunk(zeroing: [(vp, icp), (mp, ocp)]) { t0, count, tp in
            Parallel.forRange(count, costPerItem: (icp + ocp) * 36 * 8) { r in
                ck_wino_input(x, ic, h, w, ic * h * w, h * w, padTop, padLeft, th, tw, t0, r.lowerBound, r.upperBound, vp, tp)
                ck_wino_output_grad(dy, oc, oh, ow, oc * oh * ow, oh * ow, th, tw, t0, r.lowerBound, r.upperBound, mp, tp)
            }
            Parallel.forRange(36 * (ocp / 16), costPerItem: tp * icp * 16) { r in
                ck_wino_weight_gemm(vp, mp, dup, tp, icp, ocp, r.lowerBound, r.upperBound)
            }
        }
        let dw = Tensor.empty([oc, ic, 3, 3])
        let dwp = dw.data
        Parallel.forRange((oc + 7) / 8, costPerItem: ic * 800) { r in ck_wino_weight_grad(dup, oc, ic, dwp, r.lowerBound, r.upperBound) }
        withExtendedLifetime((scratch, du)) {}
        return dw
    }
}
