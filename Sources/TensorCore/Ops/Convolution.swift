import Foundation
import CDNNL

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
        self.stride = (stride, stride); self.padding = (padding, padding, padding, padding)
        self.dilation = (dilation, dilation); self.groups = groups
    }
    public static func == (a: Self, b: Self) -> Bool { a.key == b.key }
    public func hash(into h: inout Hasher) { h.combine(key) }
    var key: String { "s\(stride.0),\(stride.1)p\(padding.top),\(padding.left),\(padding.bottom),\(padding.right)d\(dilation.0),\(dilation.1)g\(groups)" }
}

private struct ConvGeometry {
    let n, ic, h, w, oc, kh, kw, oh, ow: Int
    let o: Conv2dOptions
    init(_ x: [Int], _ wt: [Int], _ o: Conv2dOptions) {
        precondition(x.count == 4 && wt.count == 4, "conv2d: input \(x) and weight \(wt) must be 4-d")
        n = x[0]; ic = x[1]; h = x[2]; w = x[3]; oc = wt[0]; kh = wt[2]; kw = wt[3]; self.o = o
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

    /// Forward (training = keep for backward hints).
    func forward(bias: Bool) -> Primitive {
        DNNL.primitive("conv_fwd:" + key + "b\(bias)") {
            var d = dnnl_convolution_desc_t()
            var s = any([n, ic, h, w]), wd = any(weiShape), b = memoryDesc([oc]), ds = any([n, oc, oh, ow])
            var st = dims([o.stride.0, o.stride.1]), dl = dims([o.dilation.0 - 1, o.dilation.1 - 1])
            var pl = dims([o.padding.top, o.padding.left]), pr = dims([o.padding.bottom, o.padding.right])
            withUnsafePointer(to: &b) { bp in
                dnnlCheck(dnnl_dilated_convolution_forward_desc_init(&d, dnnl_forward_training, dnnl_convolution_direct,
                    &s, &wd, bias ? bp : nil, &ds, &st.0, &dl.0, &pl.0, &pr.0), "conv forward desc \(key)")
            }
            var pd: dnnl_primitive_desc_t?
            dnnlCheck(dnnl_primitive_desc_create(&pd, &d, nil, DNNL.engine, nil), "conv forward pd \(key)")
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
            dnnlCheck(dnnl_primitive_desc_create(&pd, &d, nil, DNNL.engine, forward(bias: false).pd), "conv bwd data pd \(key)")
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
            dnnlCheck(dnnl_primitive_desc_create(&pd, &d, nil, DNNL.engine, forward(bias: bias).pd), "conv bwd weights pd \(key)")
            return Primitive(pd: pd!)
        }
    }
}

/// Whether reordered convolution weights are kept between calls. PyTorch reorders every call; keeping every weight
/// twice (as loaded and as reordered) would add the size of all convolution weights to peak memory (1.7 GB for the
/// SD-1.5 UNet), so only weights up to `maxCachedBytes` stay cached; larger ones are reordered per call into a
/// recycled buffer (about 4% of a UNet forward).
public enum ConvWeightCache {
    public nonisolated(unsafe) static var maxCachedBytes = (ProcessInfo.processInfo.environment["LDM_CONV_WEIGHT_CACHE_MB"].flatMap { Int($0) } ?? 1) << 20
}

extension Tensor {
    /// The weight in the layout `prim` wants, reordered from this tensor (float32 or bfloat16 storage). Returns the
    /// pointer and the storage that owns it (cached on the tensor, or a temporary the caller keeps alive).
    fileprivate func reorderedWeight(for prim: Primitive, plain: dnnl_memory_desc_t, key: String) -> (UnsafeMutableRawPointer, Storage) {
        if let c = layoutCache, c.key == key, c.version == version { return (c.storage.base, c.storage) }
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

/// 2-d convolution of `x` (N, C, H, W) with `weight` (O, C/groups, kh, kw) and optional `bias` (O).
public func conv2d(_ x: Tensor, _ weight: Tensor, _ bias: Tensor? = nil, _ options: Conv2dOptions = Conv2dOptions()) -> Tensor {
    let g = ConvGeometry(x.shape, weight.shape, options)
    let xin = x.float32().contiguous()
    let out = Tensor.empty([g.n, g.oc, g.oh, g.ow])
    let prim = g.forward(bias: bias != nil)
    let (wptr, wstorage) = weight.reorderedWeight(for: prim, plain: g.wei, key: "fwd" + g.key)
    var args: [Primitive.Arg] = [
        .init(arg: DNNL_ARG_SRC, query: dnnl_query_src_md, plain: g.src, ptr: UnsafeMutableRawPointer(xin.data)),
        .init(arg: DNNL_ARG_WEIGHTS, query: dnnl_query_weights_md, plain: g.wei, ptr: wptr, cached: wptr),
        .init(arg: DNNL_ARG_DST, query: dnnl_query_dst_md, plain: g.dst, ptr: UnsafeMutableRawPointer(out.data), isOutput: true),
    ]
    var b32: Tensor?
    if let bias {
        b32 = bias.float32().contiguous()
        args.append(.init(arg: DNNL_ARG_BIAS, query: dnnl_query_weights_md, plain: memoryDesc([g.oc]), ptr: UnsafeMutableRawPointer(b32!.data), index: 1))
    }
    withExtendedLifetime((xin, b32, wstorage)) { prim.run(args) }
    var inputs = [x, weight]
    if let bias { inputs.append(bias) }
    return out.recorded("conv2d", inputs) { gy in
        let gy = gy.contiguous()
        var grads: [Tensor?] = [nil, nil, nil]
        if x.requiresGrad {
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
        if weight.requiresGrad || (bias?.requiresGrad ?? false) {
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
