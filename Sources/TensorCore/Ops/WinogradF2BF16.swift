import CDNNL
import CKernels
import Foundation

/// 3x3 stride-1 padding-1 convolutions under native bf16 as Winograd F(2x2, 3x3) with bf16 operands (CKernels'
/// winograd_f2_bf16.c): 16 bf16 products per 2x2 output tile and channel pair (4 per output) on oneDNN's bf16 matmul,
/// against 9 per output for the direct bf16 kernel and 2.25 float32 ones per output for float32 F(4x4, 3x3) (36 per
/// 4x4 tile), whose float32 multiply-adds run at half the bf16 dot product's rate here. Its transforms only add and
/// halve, so the rounding of V and U to bf16 keeps the error near the direct bf16 convolution's (about twice,
/// tools/bench/winograd_bf16_error.py; F(4x4, 3x3) in bf16 would be ten times). Inference only.
public enum WinogradF2BF16 {
    /// `LDM_BF16_WINOGRAD_F2=0` turns the path off (the convolutions then take float32 Winograd or oneDNN's direct
    /// bf16 kernel, as before it).
    public nonisolated(unsafe) static var enabled = ProcessInfo.processInfo.environment["LDM_BF16_WINOGRAD_F2"] != "0"
    /// Fewest 2x2 output tiles over the batch (`LDM_BF16_WINOGRAD_F2_MIN_TILES`): below, oneDNN's direct bf16 kernel is
    /// faster, since U is made per call (a 1280-channel U is 52 MB). Where U stays cached on the weight
    /// (`ConvWeightCache.maxCachedBytes`, as `ldm bench` sets it) from half that (the SD UNet's 8x8 level at batch 2:
    /// 0.11 s against 0.16 s for its 14 convolutions on a Zen 4).
    public nonisolated(unsafe) static var minTiles = max(1, ProcessInfo.processInfo.environment["LDM_BF16_WINOGRAD_F2_MIN_TILES"].flatMap { Int($0) } ?? 64)
    /// Bytes of V and M per chunk of tile rows (at least one tile row).
    public nonisolated(unsafe) static var chunkBytes = min(max(1, ProcessInfo.processInfo.environment["LDM_BF16_WINOGRAD_F2_CHUNK_MB"].flatMap { Int($0) } ?? 24), 1 << 20) << 20

    /// Runs `body` with the path on or off and `minTiles` set (tests).
    public static func with<T>(enabled on: Bool, minTiles tiles: Int = 64, _ body: () throws -> T) rethrows -> T {
        let (was, wasTiles) = (enabled, minTiles)
        (enabled, minTiles) = (on, tiles)
        defer { (enabled, minTiles) = (was, wasTiles) }
        return try body()
    }

    /// Whether a native-bf16 inference convolution of this geometry runs here.
    static func applies(_ g: ConvGeometry) -> Bool {
        enabled && g.kh == 3 && g.kw == 3 && g.o.stride == (1, 1) && g.o.dilation == (1, 1) && g.o.groups == 1
            && g.o.padding == (1, 1, 1, 1) && g.h % 2 == 0 && g.w % 2 == 0 && g.w <= 1024 && g.ic >= 8 && g.oc >= 8
            && g.n * (g.h / 2) * (g.w / 2) >= (uBytes(oc: g.oc, ic: g.ic) <= ConvWeightCache.maxCachedBytes ? minTiles / 2 : minTiles)
    }

    /// Bytes of a weight's U: 16 positions x oc x ic bf16.
    static func uBytes(oc: Int, ic: Int) -> Int { 16 * oc * ic * 2 }

    /// y = conv2d(x, weight, bias) for a geometry where `applies`; x contiguous float32 NCHW, y (n, oc, h, w).
    static func convolve(_ x: Tensor, _ weight: Tensor, _ bias: Tensor?, _ g: ConvGeometry, into y: Tensor) {
        precondition(NativeBF16.available, "WinogradF2BF16: the C kernels are compiled for x86-64-v4 (AVX-512) and need native bf16")
        let (n, ic, oc, h, w) = (g.n, g.ic, g.oc, g.h, g.w), tw = w / 2, rows = n * (h / 2)
        let (u, uOwner) = weight.winogradF2U(oc: oc, ic: ic)
        // Tile rows per chunk: V (bf16) and M (float32) of a chunk within chunkBytes.
        let perRow = 16 * tw * (2 * ic + 4 * oc)
        let chunkRows = max(1, min(rows, chunkBytes / perRow))
        let scratch = Storage(byteCount: chunkRows * perRow)
        let v = scratch.base.assumingMemoryBound(to: UInt16.self)
        let m = (scratch.base + 16 * chunkRows * tw * ic * 2).assumingMemoryBound(to: Float.self)
        let bp = bias?.data
        withExtendedLifetime((x, weight, bias, uOwner, scratch)) {
            var r0 = 0
            while r0 < rows {
                let r1 = min(rows, r0 + chunkRows), tc = (r1 - r0) * tw
                Parallel.forRange(ic, costPerItem: 40 * (r1 - r0) * w) { c in
                    ck_wf2_input(x.data, ic * h * w, h * w, h, w, r0, r1, c.lowerBound, c.upperBound, ic, v, tc)
                }
                products(u, v, m, oc: oc, ic: ic, tc: tc)
                Parallel.forRange(oc, costPerItem: 40 * (r1 - r0) * w) { o in
                    ck_wf2_output(m, tc, oc, o.lowerBound, o.upperBound, bp, y.data, oc * h * w, h * w, h, w, r0, r1)
                }
                r0 = r1
            }
        }
    }

    /// M[p] = U[p] V[p] for the 16 positions: one batched oneDNN bf16 matmul (float32 accumulation and result).
    private static func products(_ u: UnsafeRawPointer, _ v: UnsafeMutablePointer<UInt16>, _ m: UnsafeMutablePointer<Float>, oc: Int, ic: Int, tc: Int) {
        let key = "wf2_bf16:\(oc),\(ic),\(tc)"
        let prim = DNNL.primitive(key) {
            var d = dnnl_matmul_desc_t()
            var s = memoryDesc([16, oc, ic], dnnl_bf16), wd = memoryDesc([16, ic, tc], dnnl_bf16), ds = memoryDesc([16, oc, tc])
            dnnlCheck(dnnl_matmul_desc_init(&d, &s, &wd, nil, &ds), "bf16 batched matmul desc \(key)")
            var pd: dnnl_primitive_desc_t?
            dnnlCheck(dnnl_primitive_desc_create(&pd, &d, DNNL.attr, DNNL.engine, nil), "bf16 batched matmul pd \(key)")
            return Primitive(pd: pd!)
        }
        prim.run([
            .init(arg: DNNL_ARG_SRC, query: dnnl_query_src_md, plain: memoryDesc([16, oc, ic], dnnl_bf16), ptr: UnsafeMutableRawPointer(mutating: u)),
            .init(arg: DNNL_ARG_WEIGHTS, query: dnnl_query_weights_md, plain: memoryDesc([16, ic, tc], dnnl_bf16), ptr: UnsafeMutableRawPointer(v)),
            .init(arg: DNNL_ARG_DST, query: dnnl_query_dst_md, plain: memoryDesc([16, oc, tc]), ptr: UnsafeMutableRawPointer(m), isOutput: true),
        ])
    }
}

extension Tensor {
    /// This (oc, ic, 3, 3) weight's F(2x2, 3x3) transform U (16 x oc x ic bf16), cached on the tensor when at most
    /// `ConvWeightCache.maxCachedBytes`, else made for this call.
    func winogradF2U(oc: Int, ic: Int) -> (UnsafeRawPointer, AnyObject) {
        let key = "wf2_u"
        if let c = layoutCache, c.key == key, c.version == version { return (UnsafeRawPointer(c.storage.base), c.storage) }
        let src = dtype == .bfloat16 && isContiguous ? self : float32().contiguous()
        let bf16: Int32 = src.dtype == .bfloat16 ? 1 : 0
        let u = Storage(byteCount: WinogradF2BF16.uBytes(oc: oc, ic: ic))
        let up = u.base.assumingMemoryBound(to: UInt16.self)
        withExtendedLifetime(src) {
            let wp = UnsafeRawPointer(src.storage.base + src.offset * (bf16 == 1 ? 2 : 4))
            Parallel.forRange(oc, costPerItem: 200 * ic) { o in ck_wf2_weights(wp, bf16, oc, ic, o.lowerBound, o.upperBound, up) }
        }
        if u.byteCount <= ConvWeightCache.maxCachedBytes { layoutCache = (key, version, u) }
        return (UnsafeRawPointer(u.base), u)
    }
}
