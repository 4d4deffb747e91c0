import Foundation
import CDNNL
import CKernels

// torch.nn.functional.conv2d on oneDNN: stride, symmetric or asymmetric padding, dilation, groups; forward and both
// backward passes (data and weights/bias). Weights may be stored in bfloat16; they are reordered (and converted)
// once per weight version and cached.

public struct Conv2dOptions: Hashable {
    public var stride: (Int, Int) = (1, 1)
    /// (top, left, bottom, right), as CompVis' F.pad(x, (0,1,0,1)) + conv(padding=0) becomes (0,0,1,1).
    public var padding: (top: Int, left: Int, bottom: Int, right: Int) = (0, 0, 0, 0)
    public var dilation: (Int, Int) = (1, 1)
    public var groups = 1
    public init(stride: Int = 1, padding: Int = 0, dilation: Int = 1, groups: Int = 1) {
        self.stride = (stride, stride)
        self.padding = (padding, padding, padding, padding)
        self.dilation = (dilation, dilation)
        self.groups = groups
    }
    public static func == (a: Self, b: Self) -> Bool { a.key == b.key }
    public func hash(into h: inout Hasher) { h.combine(key) }
    var key: String { "s\(stride.0),\(stride.1)p\(padding.top),\(padding.left),\(padding.bottom),\(padding.right)d\(dilation.0),\(dilation.1)g\(groups)" }
}

struct ConvGeometry {
    let n, ic, h, w, oc, kh, kw, oh, ow: Int
    let o: Conv2dOptions
    init(_ x: [Int], _ wt: [Int], _ o: Conv2dOptions) {
        precondition(x.count == 4 && wt.count == 4, "conv2d: input \(x) and weight \(wt) must be 4-d")
        n = x[0]
        ic = x[1]
        h = x[2]
        w = x[3]
        oc = wt[0]
        kh = wt[2]
        kw = wt[3]
        self.o = o
        precondition(ic == wt[1] * o.groups && oc % o.groups == 0, "conv2d: input \(x) does not match weight \(wt) with groups \(o.groups)")
        oh = (h + o.padding.top + o.padding.bottom - o.dilation.0 * (kh - 1) - 1) / o.stride.0 + 1
        ow = (w + o.padding.left + o.padding.right - o.dilation.1 * (kw - 1) - 1) / o.stride.1 + 1
        precondition(oh > 0 && ow > 0, "conv2d: output size \(oh)x\(ow) for input \(x), kernel \(kh)x\(kw)")
    }
    var key: String { "\(n),\(ic),\(h),\(w)>\(oc),\(kh),\(kw)" + o.key }
    var src: dnnl_memory_desc_t { memoryDesc([n, ic, h, w]) }
    var dst: dnnl_memory_desc_t { memoryDesc([n, oc, oh, ow]) }
    var wei: dnnl_memory_desc_t {
        o.groups == 1 ? memoryDesc([oc, ic, kh, kw]) : memoryDesc([o.groups, oc / o.groups, ic / o.groups, kh, kw])
    }
    var weiShape: [Int] { o.groups == 1 ? [oc, ic, kh, kw] : [o.groups, oc / o.groups, ic / o.groups, kh, kw] }
    func any(_ shape: [Int]) -> dnnl_memory_desc_t { memoryDesc(shape, tag: dnnl_format_tag_any) }
    /// A 1x1 convolution with stride 1, no padding and one group: a GEMM over the channel planes.
    var pointwise: Bool {
        kh == 1 && kw == 1 && o.stride == (1, 1) && o.groups == 1
            && o.padding.top == 0 && o.padding.left == 0 && o.padding.bottom == 0 && o.padding.right == 0
    }
    /// Whether the forward convolution runs as Winograd F(4x4, 3x3).
    var winograd: Bool { Winograd.applies(n: n, ic: ic, oc: oc, kh: kh, kw: kw, oh: oh, ow: ow, o) }
    /// Whether a forward runs as Winograd when `bf16` (native bf16 compute) is on; `inference`: no gradients are
    /// recorded (Winograd.appliesForInference).
    func winograd(bf16: Bool, inference: Bool) -> Bool {
        guard bf16 else { return inference ? Winograd.appliesForInference(n: n, ic: ic, oc: oc, kh: kh, kw: kw, oh: oh, ow: ow, o) : winograd }
        return NativeBF16.keepsWinograd && winograd && n * ((oh + 3) / 4) * ((ow + 3) / 4) >= NativeBF16.winogradMinTiles
    }
    /// The backward-data convolution's options when it can run as Winograd (the stride-1 3x3 case: a convolution of
    /// the output gradient with the transposed, flipped kernel and the complementary padding).
    var winogradBackwardData: Conv2dOptions? {
        let p = o.padding
        var b = o
        b.padding = (2 - p.top, 2 - p.left, 2 - p.bottom, 2 - p.right)
        guard [b.padding.top, b.padding.left, b.padding.bottom, b.padding.right].allSatisfy({ $0 >= 0 }),
              Winograd.applies(n: n, ic: oc, oc: ic, kh: kh, kw: kw, oh: h, ow: w, b) else { return nil }
        return b
    }

    /// Forward (training = keep for backward hints). `bf16`: bf16 input and weights, float32 bias and output
    /// (NativeBF16).
    func forward(bias: Bool, bf16: Bool = false) -> Primitive {
        DNNL.primitive("conv_fwd:" + key + "b\(bias)" + (bf16 ? "bf16" : "")) {
            var d = dnnl_convolution_desc_t()
            let t = bf16 ? dnnl_bf16 : dnnl_f32
            var s = memoryDesc([n, ic, h, w], t, tag: dnnl_format_tag_any), wd = memoryDesc(weiShape, t, tag: dnnl_format_tag_any)
            var b = memoryDesc([oc]), ds = any([n, oc, oh, ow])
            var st = dims([o.stride.0, o.stride.1]), dl = dims([o.dilation.0 - 1, o.dilation.1 - 1])
            var pl = dims([o.padding.top, o.padding.left]), pr = dims([o.padding.bottom, o.padding.right])
            withUnsafePointer(to: &b) { bp in
                dnnlCheck(dnnl_dilated_convolution_forward_desc_init(&d, dnnl_forward_training, dnnl_convolution_direct,
                    &s, &wd, bias ? bp : nil, &ds, &st.0, &dl.0, &pl.0, &pr.0), "conv forward desc \(key)")
            }
            var pd: dnnl_primitive_desc_t?
            dnnlCheck(dnnl_primitive_desc_create(&pd, &d, DNNL.attr, DNNL.engine, nil), "conv forward pd \(key)")
            return Primitive(pd: pd!)
        }
    }
    func backwardData() -> Primitive {
        DNNL.primitive("conv_bwd_data:" + key) {
            var d = dnnl_convolution_desc_t()
            var s = any([n, ic, h, w]), wd = any(weiShape), ds = any([n, oc, oh, ow])
            var st = dims([o.stride.0, o.stride.1]), dl = dims([o.dilation.0 - 1, o.dilation.1 - 1])
            var pl = dims([o.padding.top, o.padding.left]), pr = dims([o.padding.bottom, o.padding.right])
            dnnlCheck(dnnl_dilated_convolution_backward_data_desc_init(&d, dnnl_convolution_direct, &s, &wd, &ds, &st.0, &dl.0, &pl.0, &pr.0), "conv bwd data desc")
            var pd: dnnl_primitive_desc_t?
            dnnlCheck(dnnl_primitive_desc_create(&pd, &d, DNNL.attr, DNNL.engine, forward(bias: false).pd), "conv bwd data pd \(key)")
            return Primitive(pd: pd!)
        }
    }
    func backwardWeights(bias: Bool) -> Primitive {
        DNNL.primitive("conv_bwd_w:" + key + "b\(bias)") {
            var d = dnnl_convolution_desc_t()
            var s = any([n, ic, h, w]), wd = any(weiShape), b = memoryDesc([oc]), ds = any([n, oc, oh, ow])
            var st = dims([o.stride.0, o.stride.1]), dl = dims([o.dilation.0 - 1, o.dilation.1 - 1])
            var pl = dims([o.padding.top, o.padding.left]), pr = dims([o.padding.bottom, o.padding.right])
            withUnsafePointer(to: &b) { bp in
                dnnlCheck(dnnl_dilated_convolution_backward_weights_desc_init(&d, dnnl_convolution_direct, &s, &wd, bias ? bp : nil, &ds, &st.0, &dl.0, &pl.0, &pr.0), "conv bwd weights desc")
            }
            var pd: dnnl_primitive_desc_t?
            dnnlCheck(dnnl_primitive_desc_create(&pd, &d, DNNL.attr, DNNL.engine, forward(bias: bias).pd), "conv bwd weights pd \(key)")
            return Primitive(pd: pd!)
        }
    }
}

/// Whether reordered convolution weights are kept between calls. PyTorch reorders every call; keeping every weight
/// twice (as loaded and as reordered) would add the size of all convolution weights to peak memory (1.7 GB for the
/// SD-1.5 UNet), so only weights up to `maxCachedBytes` stay cached; larger ones are reordered per call into a
/// recycled buffer (about 4% of a UNet forward).
public enum ConvWeightCache {
    /// 1x1 inference convolutions as a GEMM on the plain planes (`pointwiseConv`); `LDM_CONV1X1_GEMM=0` sends them to
    /// oneDNN's convolution instead (benchmark comparisons).
    public nonisolated(unsafe) static var pointwiseGEMM = ProcessInfo.processInfo.environment["LDM_CONV1X1_GEMM"] != "0"
    public nonisolated(unsafe) static var maxCachedBytes = (ProcessInfo.processInfo.environment["LDM_CONV_WEIGHT_CACHE_MB"].flatMap { Int($0) } ?? 1) << 20
}

extension Tensor {
    /// The weight in the layout `prim` wants, reordered from this tensor (float32 or bfloat16 storage). Returns the
    /// pointer and the storage that owns it (cached on the tensor, or a temporary the caller keeps alive).
    fileprivate func reorderedWeight(for prim: Primitive, plain: dnnl_memory_desc_t, key: String) -> (UnsafeMutableRawPointer, Storage) {
        if let c = layoutCache, c.key == key, c.version == version { return (c.storage.base, c.storage) }
        if dtype == .bfloat16 && isContiguous && prim.md(dnnl_query_weights_md).data_type == dnnl_bf16 {
            // A bf16 weight for a bf16 kernel: reordered from its own bytes, never expanded to float32.
            var p = plain
            p.data_type = dnnl_bf16
            return reordered(storage.base + offset * 2, plain: p, for: prim, key: key)
        }
        let w32 = float32().contiguous()
        defer { withExtendedLifetime(w32) {} }
        var want = prim.md(dnnl_query_weights_md), p = plain
        if dnnl_memory_desc_equal(&want, &p) != 0 { return (UnsafeMutableRawPointer(w32.data), w32.storage) }
        let bytes = dnnl_memory_desc_get_size(&want)
        let buf = Storage(byteCount: bytes)
        DNNL.reorder(from: plain, UnsafeMutableRawPointer(w32.data), to: want, buf.base)
        if bytes <= ConvWeightCache.maxCachedBytes { layoutCache = (key, version, buf) }
        return (buf.base, buf)
    }
}

/// Inference convolutions with a large output run in horizontal bands of output rows: oneDNN's blocked copies of the
/// input and output then exist for one band at a time (a few MB) instead of for the whole image, which bounds the
/// memory of a VAE decode at 512x512 and above and keeps the layout reorders in cache. Each output pixel is computed
/// by the same kernel from the same inputs either way. `LDM_CONV_BAND_MB` sets the band's output size (0: off).
public enum ConvBanding {
    public nonisolated(unsafe) static var bandBytes = (ProcessInfo.processInfo.environment["LDM_CONV_BAND_MB"].flatMap { Int($0) } ?? 4) << 20
}

/// Plain NCHW descriptor of `rows` rows starting anywhere inside a (n, c, h, w) tensor.
private func rowBandDesc(_ n: Int, _ c: Int, _ rows: Int, _ w: Int, fullHeight h: Int) -> dnnl_memory_desc_t {
    var md = dnnl_memory_desc_t()
    var d = dims([n, c, rows, w]), st = dims([c * h * w, h * w, w, 1])
    dnnlCheck(dnnl_memory_desc_init_by_strides(&md, 4, &d.0, dnnl_f32, &st.0), "band desc")
    return md
}

/// `conv2d` without autograd, over bands of at most `bandRows` output rows (see `ConvBanding`). The input may be
/// upsampled by nearest-neighbour `upsample` first (Upsample2D's interpolate + conv): each band's input rows are then
/// assembled from the low-resolution tensor, and the upsampled image never exists in full.
private enum BandInput {
    case plain
    /// Nearest-neighbour upsampling by an integer factor.
    case upsample(Int)
    /// Per-(sample, channel) affine map, optionally followed by SiLU: a group norm (+ swish) fused into the band.
    case affine(scale: [Float], shift: [Float], silu: Bool)
}

private func conv2dBanded(_ x: Tensor, _ input: BandInput, _ weight: Tensor, _ bias: Tensor?, _ options: Conv2dOptions, bandRows: Int) -> Tensor {
    let xin = x.float32().contiguous()
    var upsample = 1
    if case .upsample(let f) = input { upsample = f }
    let (n, ic, h, w) = (xin.shape[0], xin.shape[1], xin.shape[2] * upsample, xin.shape[3] * upsample)
    let g = ConvGeometry([n, ic, h, w], weight.shape, options)
    let out = Tensor.empty([g.n, g.oc, g.oh, g.ow])
    let b32 = bias?.float32().contiguous()
    let o = options
    let bf16 = NativeBF16.applies([x, weight] + (bias.map { [$0] } ?? []))
    var weightCopy: (md: dnnl_memory_desc_t, ptr: UnsafeMutableRawPointer, owner: Storage)?
    var winograd: Winograd.Weights? // when the bands go through Winograd
    var staged: Storage? // the band's upsampled input rows (plain layout)
    var r0 = 0
    while r0 < g.oh {
        let rows = min(bandRows, g.oh - r0)
        // Input rows this band reads, in (possibly upsampled) input coordinates; outside [0, h) is padding.
        let ih0 = r0 * o.stride.0 - o.padding.top
        let ih1 = (r0 + rows - 1) * o.stride.0 - o.padding.top + (g.kh - 1) * o.dilation.0 + 1
        let a = max(0, ih0), b = min(h, ih1)
        var bo = o
        bo.padding = (max(0, -ih0), o.padding.left, max(0, ih1 - h), o.padding.right)
        let bg = ConvGeometry([n, ic, b - a, w], weight.shape, bo)
        precondition(bg.oh == rows && bg.ow == g.ow, "conv2d band: \(bg.oh)x\(bg.ow), expected \(rows)x\(g.ow)")
        let useWinograd = bg.winograd(bf16: bf16, inference: true)
        if useWinograd, winograd == nil { winograd = Winograd.Weights(weight, transposed: false) }
        let prim = useWinograd ? nil : bg.forward(bias: bias != nil, bf16: bf16)
        if let prim {
            var want = prim.md(dnnl_query_weights_md)
            if weightCopy == nil || dnnl_memory_desc_equal(&want, &weightCopy!.md) == 0 {
                let (ptr, owner) = weight.reorderedWeight(for: prim, plain: g.wei, key: "fwd" + bg.key + (bf16 ? "bf16" : ""))
                weightCopy = (want, ptr, owner)
            }
        }
        var src: UnsafeMutableRawPointer, srcDesc: dnnl_memory_desc_t
        var srcPlaneRows = h // rows per channel plane of `src`: the whole input's, or the staged band's
        if case .plain = input {
            src = UnsafeMutableRawPointer(xin.data + a * w)
            srcDesc = rowBandDesc(n, ic, b - a, w, fullHeight: h)
        } else {
            let bytes = n * ic * (b - a) * w * 4
            if staged == nil || staged!.byteCount < bytes { staged = Storage(byteCount: bytes) }
            let dst = staged!.base.assumingMemoryBound(to: Float.self), xs = xin.data, bandH = b - a
            switch input {
            case .plain: break
            case .upsample(let f):
                let (lh, lw) = (h / f, w / f)
                Parallel.forEach(n * ic, costPerItem: bandH * w) { plane in
                    let sp = xs + plane * lh * lw, dp = dst + plane * bandH * w
                    for r in 0..<bandH {
                        let srow = sp + ((a + r) / f) * lw, drow = dp + r * w
                        for c in 0..<w { drow[c] = srow[c / f] }
                    }
                }
            case .affine(let scale, let shift, let silu):
                scale.withUnsafeBufferPointer { sc in shift.withUnsafeBufferPointer { sh in
                    let scp = sc.baseAddress!, shp = sh.baseAddress!
                    Parallel.forEach(n * ic, costPerItem: bandH * w) { plane in
                        ck_affine(xs + plane * h * w + a * w, dst + plane * bandH * w, bandH * w, scp[plane], shp[plane], silu ? 1 : 0)
                    }
                } }
            }
            src = staged!.base
            srcDesc = memoryDesc([n, ic, b - a, w])
            srcPlaneRows = b - a
        }
        if useWinograd, let winograd {
            withExtendedLifetime((xin, b32, staged)) {
                Winograd.convolve(src.assumingMemoryBound(to: Float.self), n: n, h: b - a, w: w, xs: (ic * srcPlaneRows * w, srcPlaneRows * w),
                                  padTop: bo.padding.top, padLeft: bo.padding.left, weights: winograd, bias: b32?.data,
                                  out.data + r0 * g.ow, oh: rows, ow: g.ow, ys: (g.oc * g.oh * g.ow, g.oh * g.ow))
            }
            r0 += rows
            continue
        }
        var args: [Primitive.Arg] = [
            .init(arg: DNNL_ARG_SRC, query: dnnl_query_src_md, plain: srcDesc, ptr: src),
            .init(arg: DNNL_ARG_WEIGHTS, query: dnnl_query_weights_md, plain: g.wei, ptr: weightCopy!.ptr, cached: weightCopy!.ptr),
            .init(arg: DNNL_ARG_DST, query: dnnl_query_dst_md, plain: rowBandDesc(n, g.oc, rows, g.ow, fullHeight: g.oh),
                  ptr: UnsafeMutableRawPointer(out.data + r0 * g.ow), isOutput: true),
        ]
        if let b32 {
            args.append(.init(arg: DNNL_ARG_BIAS, query: dnnl_query_weights_md, plain: memoryDesc([g.oc]), ptr: UnsafeMutableRawPointer(b32.data), index: 1))
        }
        withExtendedLifetime((xin, b32, weightCopy!.owner, staged)) { prim!.run(args) }
        r0 += rows
    }
    return out
}

/// Output rows per band for an inference convolution producing `g`'s output, or nil when it should run whole.
private func bandRows(_ g: ConvGeometry) -> Int? {
    let rowBytes = g.n * g.oc * g.ow * 4
    // Only outputs of 8 bands or more: the memory saved matters there, and smaller convolutions (a UNet's at 64x64)
    // run faster whole.
    guard ConvBanding.bandBytes > 0, rowBytes * g.oh >= 8 * ConvBanding.bandBytes else { return nil }
    return max(1, ConvBanding.bandBytes / rowBytes)
}

/// conv2d(upsampleNearest(x, factor), ...) (diffusers' Upsample2D, CompVis' Upsample with conv): without autograd
/// and for large outputs the upsampled input is assembled band by band and never held whole.
public func conv2d(upsamplingNearest x: Tensor, factor: Int, _ weight: Tensor, _ bias: Tensor? = nil, _ options: Conv2dOptions = Conv2dOptions()) -> Tensor {
    precondition(x.rank == 4 && factor >= 1, "conv2d(upsamplingNearest:): input \(x.shape), factor \(factor)")
    let up = [x.shape[0], x.shape[1], x.shape[2] * factor, x.shape[3] * factor]
    let g = ConvGeometry(up, weight.shape, options)
    guard factor > 1, !GradMode.shouldRecord([x, weight] + (bias.map { [$0] } ?? [])), let rows = bandRows(g) else {
        return conv2d(x.upsampleNearest(height: up[2], width: up[3]), weight, bias, options)
    }
    return conv2dBanded(x, .upsample(factor), weight, bias, options, bandRows: rows)
}

/// conv2d(groupNorm(x) [+ SiLU], ...), the pre-activation of every ResNet block: without autograd and for large
/// outputs the normalised input is produced band by band and never held whole (same coefficients as `groupNorm`).
public func conv2d(groupNormed x: Tensor, groups: Int, normWeight: Tensor?, normBias: Tensor?, eps: Float, silu: Bool,
                   _ weight: Tensor, _ bias: Tensor? = nil, _ options: Conv2dOptions = Conv2dOptions()) -> Tensor {
    OpTimes.measure(convName(x, weight, bias, options, " +norm")) {
        conv2dNormed(x, groups: groups, normWeight: normWeight, normBias: normBias, eps: eps, silu: silu, weight, bias, options)
    }
}

private func conv2dNormed(_ x: Tensor, groups: Int, normWeight: Tensor?, normBias: Tensor?, eps: Float, silu: Bool,
                          _ weight: Tensor, _ bias: Tensor?, _ options: Conv2dOptions) -> Tensor {
    let g = ConvGeometry(x.shape, weight.shape, options)
    let params = [x, weight] + [bias, normWeight, normBias].compactMap { $0 }
    guard !GradMode.shouldRecord(params), let rows = bandRows(g), x.rank == 4 else {
        return conv2d(x.groupNorm(groups: groups, weight: normWeight, bias: normBias, eps: eps, silu: silu), weight, bias, options)
    }
    let xin = x.float32().contiguous()
    let (scale, shift) = groupNormChannelAffine(xin, groups: groups, weight: normWeight, bias: normBias, eps: eps)
    return conv2dBanded(xin, .affine(scale: scale, shift: shift, silu: silu), weight, bias, options, bandRows: rows)
}

/// 2-d convolution of `x` (N, C, H, W) with `weight` (O, C/groups, kh, kw) and optional `bias` (O).
public func conv2d(_ x: Tensor, _ weight: Tensor, _ bias: Tensor? = nil, _ options: Conv2dOptions = Conv2dOptions()) -> Tensor {
    OpTimes.measure(convName(x, weight, bias, options)) { conv2dOp(x, weight, bias, options) }
}

/// A 1x1 convolution in inference as a GEMM per image on the plain (C, H*W) planes: y = W x (+ bias), without the
/// layout reorders of the input and output that oneDNN's convolution makes (to its blocked layout and back).
private func pointwiseConv(_ xin: Tensor, _ weight: Tensor, _ b32: Tensor?, _ g: ConvGeometry, bf16: Bool, into out: Tensor) {
    let hw = g.h * g.w, oc = g.oc
    if let b32 {
        let yp = out.data, bp = b32.data
        Parallel.forEach(g.n * oc, costPerItem: hw) { row in (yp + row * hw).update(repeating: bp[row % oc], count: hw) }
    }
    withExtendedLifetime(b32) { pointwiseGEMM(xin, channelsLast: false, weight, bf16: bf16, accumulating: b32 != nil, into: out) }
}

/// out = weight (O, C, 1, 1) x (N, C, H, W) as one GEMM per image, added to what `out` holds when `accumulating`
/// (beta 1). `x` is float32, either contiguous NCHW or, with `channelsLast`, a transformer's (N, H, W, C) tokens seen as
/// NCHW (channels innermost, rows dense), read in place as a transposed operand. `out` is (N, O, H, W) contiguous, or
/// with `tokensOut` (N, H*W, O) tokens (the transposed product X^T W^T, for a transformer's proj_in). `bf16`: bf16
/// operands (the input rounded to nearest even, the weight as stored or converted once), float32 accumulation and
/// output, on oneDNN's bf16 GEMM (NativeBF16); else float32 sgemm.
func pointwiseGEMM(_ x: Tensor, channelsLast: Bool, _ weight: Tensor, bf16: Bool, accumulating: Bool, into out: Tensor,
                   tokensOut: Bool = false) {
    let (n, ic, h, w) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]), oc = weight.shape[0], hw = h * w
    let beta: Float = accumulating ? 1 : 0, yp = out.data
    // x_b as a GEMM operand: its (C, H*W) plane, or its (H*W, C) token rows (transposed).
    let (xTrans, ldx) = channelsLast ? (true, ic) : (false, hw)
    // Per image C = W x_b (O, H*W), or with `tokensOut` C = x_b^T W^T (H*W, O); `gemm` is row-major
    // (transA, transB, m, n, A, lda, B, ldb, C, ldc) with k = C, on bf16 or float32 operands.
    func perImage<T>(_ xImage: (Int) -> UnsafePointer<T>, _ wt: UnsafePointer<T>,
                     _ gemm: (Bool, Bool, Int, Int, UnsafePointer<T>, Int, UnsafePointer<T>, Int, UnsafeMutablePointer<Float>, Int) -> Void) {
        for b in 0..<n {
            if tokensOut { gemm(!xTrans, true, hw, oc, xImage(b), ldx, wt, ic, yp + b * oc * hw, oc) }
            else { gemm(false, xTrans, oc, hw, wt, ic, xImage(b), ldx, yp + b * oc * hw, hw) }
        }
    }
    if bf16 {
        let (wptr, wowner) = weight.bf16Rows(key: "conv1x1_bf16")
        let xb = Storage(byteCount: n * ic * hw * 2)
        let xbp = xb.base.assumingMemoryBound(to: UInt16.self), wp = UnsafePointer(wptr.assumingMemoryBound(to: UInt16.self))
        let xp = x.data, xs = x.strides[0]
        for b in 0..<n {
            Parallel.forRange(ic * hw, costPerItem: 2) { r in ck_to_bf16(xp + b * xs + r.lowerBound, xbp + b * ic * hw + r.lowerBound, r.count) }
        }
        withExtendedLifetime((x, xb, wowner, weight)) {
            perImage({ UnsafePointer(xbp + $0 * ic * hw) }, wp) { ta, tb, m, nn, a, lda, b, ldb, c, ldc in
                let st = dnnl_gemm_bf16bf16f32(ta ? 84 : 78, tb ? 84 : 78, Int64(m), Int64(nn), Int64(ic), 1, a, Int64(lda), b, Int64(ldb), beta, c, Int64(ldc))
                precondition(st == dnnl_success, "oneDNN bf16 gemm \(m)x\(nn)x\(ic) failed: \(st.rawValue)")
            }
        }
    } else {
        let w32 = weight.float32().contiguous()
        withExtendedLifetime((x, w32)) {
            let xp = x.data, xs = x.strides[0]
            perImage({ UnsafePointer(xp + $0 * xs) }, w32.data) { ta, tb, m, nn, a, lda, b, ldb, c, ldc in
                DNNL.sgemm(ta, tb, m, nn, ic, 1, a, lda, b, ldb, beta, c, ldc)
            }
        }
    }
}

/// How `conv2dOp` computes a forward. Inference only: bf16 Winograd F(2x2, 3x3) (which makes its transforms in chunks
/// of tile rows itself, so it is never banded), bands of output rows for large outputs, a 1x1 convolution as a GEMM;
/// else Winograd F(4x4, 3x3) or oneDNN's convolution.
private enum ConvPath {
    case winogradF2BF16, banded(rows: Int), pointwiseGEMM, winograd, oneDNN

    init(_ g: ConvGeometry, bf16: Bool, inference: Bool) {
        if inference && bf16 && WinogradF2BF16.applies(g) { self = .winogradF2BF16 }
        else if inference, let rows = bandRows(g) { self = .banded(rows: rows) }
        else if inference && ConvWeightCache.pointwiseGEMM && g.pointwise { self = .pointwiseGEMM }
        else { self = g.winograd(bf16: bf16, inference: inference) ? .winograd : .oneDNN }
    }
}

/// The op-times name of a convolution: kernel, stride, input size, path.
private func convName(_ x: Tensor, _ weight: Tensor, _ bias: Tensor?, _ options: Conv2dOptions, _ kind: String = "") -> String {
    let g = ConvGeometry(x.shape, weight.shape, options), operands = [x, weight] + (bias.map { [$0] } ?? [])
    let bf16 = NativeBF16.applies(operands), inference = !GradMode.shouldRecord(operands)
    let kernel = { (winograd: Bool) in winograd ? "winograd f32" : bf16 ? "oneDNN bf16" : "oneDNN f32" }
    let path = switch ConvPath(g, bf16: bf16, inference: inference) {
    case .winogradF2BF16: "winograd F(2,3) bf16"
    case .banded: "banded " + kernel(g.winograd(bf16: bf16, inference: true))
    case .pointwiseGEMM: bf16 ? "GEMM bf16" : "GEMM f32"
    case .winograd: kernel(true)
    case .oneDNN: kernel(false)
    }
    return "conv \(g.kh)x\(g.kw)/\(options.stride.0) \(g.h)x\(g.w) \(path)\(kind)"
}

private func conv2dOp(_ x: Tensor, _ weight: Tensor, _ bias: Tensor?, _ options: Conv2dOptions) -> Tensor {
    let g = ConvGeometry(x.shape, weight.shape, options), operands = [x, weight] + (bias.map { [$0] } ?? [])
    let bf16 = NativeBF16.applies(operands), training = GradMode.shouldRecord(operands)
    let path = ConvPath(g, bf16: bf16, inference: !training)
    if case .banded(let rows) = path { return conv2dBanded(x, .plain, weight, bias, options, bandRows: rows) }
    let xin = x.float32().contiguous()
    let out = Tensor.empty([g.n, g.oc, g.oh, g.ow])
    let b32 = bias?.float32().contiguous()
    switch path {
    case .banded: preconditionFailure("handled above")
    case .pointwiseGEMM:
        pointwiseConv(xin, weight, b32, g, bf16: bf16, into: out)
        return out
    case .winogradF2BF16:
        WinogradF2BF16.convolve(xin, weight, b32, g, into: out)
    case .winograd:
        let weights = Winograd.Weights(weight, transposed: false, retain: training)
        withExtendedLifetime((xin, b32)) {
            Winograd.convolve(xin.data, n: g.n, h: g.h, w: g.w, xs: (g.ic * g.h * g.w, g.h * g.w),
                              padTop: options.padding.top, padLeft: options.padding.left, weights: weights, bias: b32?.data,
                              out.data, oh: g.oh, ow: g.ow, ys: (g.oc * g.oh * g.ow, g.oh * g.ow), retain: training)
        }
        weights.done()
    case .oneDNN:
        let prim = g.forward(bias: bias != nil, bf16: bf16)
        let (wptr, wstorage) = weight.reorderedWeight(for: prim, plain: g.wei, key: "fwd" + g.key + (bf16 ? "bf16" : ""))
        var args: [Primitive.Arg] = [
            .init(arg: DNNL_ARG_SRC, query: dnnl_query_src_md, plain: g.src, ptr: UnsafeMutableRawPointer(xin.data)),
            .init(arg: DNNL_ARG_WEIGHTS, query: dnnl_query_weights_md, plain: g.wei, ptr: wptr, cached: wptr),
            .init(arg: DNNL_ARG_DST, query: dnnl_query_dst_md, plain: g.dst, ptr: UnsafeMutableRawPointer(out.data), isOutput: true),
        ]
        if let b32 {
            args.append(.init(arg: DNNL_ARG_BIAS, query: dnnl_query_weights_md, plain: memoryDesc([g.oc]), ptr: UnsafeMutableRawPointer(b32.data), index: 1))
        }
        withExtendedLifetime((xin, b32, wstorage)) { prim.run(args) }
    }
    var inputs = [x, weight]
    if let bias { inputs.append(bias) }
    return out.recorded("conv2d", inputs) { gy in
        let gy = gy.contiguous()
        var grads: [Tensor?] = [nil, nil, nil]
        if x.requiresGrad, let bo = g.winogradBackwardData {
            let gx = Tensor.empty([g.n, g.ic, g.h, g.w])
            let weights = Winograd.Weights(weight, transposed: true, retain: true)
            withExtendedLifetime(gy) {
                Winograd.convolve(gy.data, n: g.n, h: g.oh, w: g.ow, xs: (g.oc * g.oh * g.ow, g.oh * g.ow),
                                  padTop: bo.padding.top, padLeft: bo.padding.left, weights: weights, bias: nil,
                                  gx.data, oh: g.h, ow: g.w, ys: (g.ic * g.h * g.w, g.h * g.w), retain: true)
            }
            weights.done()
            grads[0] = gx
        } else if x.requiresGrad {
            let gx = Tensor.empty([g.n, g.ic, g.h, g.w])
            let bd = g.backwardData()
            let w32 = weight.float32().contiguous()
            defer { withExtendedLifetime((w32, gy)) {} }
            bd.run([
                .init(arg: DNNL_ARG_DIFF_DST, query: dnnl_query_diff_dst_md, plain: g.dst, ptr: UnsafeMutableRawPointer(gy.data)),
                .init(arg: DNNL_ARG_WEIGHTS, query: dnnl_query_weights_md, plain: g.wei, ptr: UnsafeMutableRawPointer(w32.data)),
                .init(arg: DNNL_ARG_DIFF_SRC, query: dnnl_query_diff_src_md, plain: g.src, ptr: UnsafeMutableRawPointer(gx.data), isOutput: true),
            ])
            grads[0] = gx
        }
        if g.winograd, weight.requiresGrad || (bias?.requiresGrad ?? false) {
            withExtendedLifetime((xin, gy)) {
                grads[1] = Winograd.weightGradient(xin.data, n: g.n, ic: g.ic, h: g.h, w: g.w, padTop: options.padding.top,
                                                   padLeft: options.padding.left, dy: gy.data, oc: g.oc, oh: g.oh, ow: g.ow)
            }
            if bias != nil { grads[2] = GradMode.noGrad { gy.sum(axes: [0, 2, 3]) } }
        } else if weight.requiresGrad || (bias?.requiresGrad ?? false) {
            let gw = Tensor.empty(weight.shape), gb = Tensor.empty([g.oc])
            let bw = g.backwardWeights(bias: bias != nil)
            var a: [Primitive.Arg] = [
                .init(arg: DNNL_ARG_SRC, query: dnnl_query_src_md, plain: g.src, ptr: UnsafeMutableRawPointer(xin.data)),
                .init(arg: DNNL_ARG_DIFF_DST, query: dnnl_query_diff_dst_md, plain: g.dst, ptr: UnsafeMutableRawPointer(gy.data)),
                .init(arg: DNNL_ARG_DIFF_WEIGHTS, query: dnnl_query_diff_weights_md, plain: g.wei, ptr: UnsafeMutableRawPointer(gw.data), isOutput: true),
            ]
            if bias != nil {
                a.append(.init(arg: DNNL_ARG_DIFF_BIAS, query: dnnl_query_diff_weights_md, plain: memoryDesc([g.oc]), ptr: UnsafeMutableRawPointer(gb.data), isOutput: true, index: 1))
            }
            withExtendedLifetime((xin, gy)) { bw.run(a) }
            grads[1] = gw
            if bias != nil { grads[2] = gb }
        }
        return Array(grads.prefix(inputs.count))
    }
}
