import CDNNL
import CKernels
import Foundation

// int8 inference for linear layers and convolutions on the CPU's VNNI dot products (vpdpbusd: u8 x s8 products summed
// into int32 without saturation), through oneDNN 2.6's int8 matmul and convolution (u8 source, s8 weights, s32
// destination). The scheme follows PyTorch's dynamic quantisation (torch.ao.quantization.quantize_dynamic with
// per_channel_dynamic_qconfig) and oneDNN's int8 conventions (s8 weights, u8 activations with a zero point, per output
// channel weight scales):
//   weights, once at load: per output channel symmetric, s_w = max|w| / 127, q_w = clamp(rint(w / s_w), -127, 127);
//   activations, per call: asymmetric u8 over a range that includes 0, s_x = (max - min) / 255,
//     z = rint(-min / s_x), q_x = clamp(rint(x / s_x) + z, 0, 255); one (s_x, z) per row of a linear layer's input
//     (per token) and per image of a convolution's (so a batch computes as its images alone);
//   y = float(sum q_x q_w - z sum q_w) * (s_x s_w) + bias: exact integer products and sums, one float rounding of the
//     accumulator, then the scales and the bias in float32.
// A convolution's input is quantised into an explicitly padded channels-last u8 image whose border holds z (the
// quantised 0), so the zero point's correction is the same z * sum(q_w) at every output position and oneDNN runs an
// unpadded convolution. No reduce_range: VNNI has no 16-bit intermediate (AVX2's vpmaddubsw saturates), which is why
// int8 needs AVX512_VNNI at the level in use (oneDNN's avx512_core_vnni or above).

public enum Int8Compute {
    /// Whether int8 GEMMs and convolutions run here: AVX512_VNNI in the CPU, the level in use at least AVX-512 (LDM_ISA
    /// can lower it), and oneDNN dispatching to its VNNI kernels.
    public static var available: Bool { unavailableReason == nil }

    /// Why int8 compute is not available (nil when it is), naming the missing CPU feature.
    public static var unavailableReason: String? {
        if CPUFeatures.cpu.avx512_vnni == 0 {
            return "int8 compute needs AVX512_VNNI (vpdpbusd), which this CPU (\(CPUFeatures.brand)) does not have"
        }
        if CPUFeatures.active < .avx512 {
            return "int8 compute needs AVX512_VNNI, but the ISA level in use is \(CPUFeatures.active.name) (LDM_ISA lowers it below avx512)"
        }
        let vnni: Set<String> = ["avx512_core_vnni", "avx512_core_bf16", "avx512_core_amx"]
        if !vnni.contains(CPUFeatures.oneDNNISA) {
            return "int8 compute needs AVX512_VNNI, but oneDNN dispatches to \(CPUFeatures.oneDNNISA) (ONEDNN_MAX_CPU_ISA lowers it)"
        }
        return nil
    }
}

/// A Linear or Conv2d weight quantised to s8 per output channel (see the scheme above): the s8 values (in the layout
/// oneDNN's kernels last asked for, one copy), the scales and each channel's sum of q_w.
public final class Int8Weight: @unchecked Sendable {
    /// (out, in) for a linear layer, (out, in, kh, kw) for a convolution.
    public let shape: [Int]
    public let scales: [Float]
    public let sums: [Int32]
    /// The s8 values and the oneDNN layout they are in (plain at first: (out, in...) row-major).
    private var values: Storage
    private var layout: dnnl_memory_desc_t
    private let lock = NSLock()

    public var outputs: Int { shape[0] }
    /// Elements per output channel.
    public var fanIn: Int { shape.dropFirst().reduce(1, *) }
    /// Bytes held: the s8 values, scales and sums.
    public var byteCount: Int { shape.reduce(1, *) + outputs * 8 }

    /// Quantises `weight` (float32, bf16 or f16; rank 2 or 4).
    public init(_ weight: Tensor) {
        precondition(weight.rank == 2 || weight.rank == 4, "Int8Weight: a linear or convolution weight, got shape \(weight.shape)")
        shape = weight.shape
        let rows = shape[0], cols = shape.dropFirst().reduce(1, *)
        let w = weight.contiguous().float32()
        values = Storage(byteCount: rows * cols)
        var s = [Float](repeating: 0, count: rows), sums = [Int32](repeating: 0, count: rows)
        ck_i8_quantize_weights(w.data, rows, cols, &s, &sums, values.base.assumingMemoryBound(to: Int8.self))
        scales = s
        self.sums = sums
        layout = Int8Weight.plainLayout(shape)
    }

    /// oneDNN's description of the plain s8 layout: the (in, out) matrix "ba" of a matmul, OIHW of a convolution.
    private static func plainLayout(_ shape: [Int]) -> dnnl_memory_desc_t {
        shape.count == 2 ? memoryDesc([shape[1], shape[0]], dnnl_s8, tag: dnnl_ba) : memoryDesc(shape, dnnl_s8)
    }

    /// The s8 values in plain row-major (out, in...) order.
    public var int8Values: [Int8] {
        lock.lock()
        defer { lock.unlock() }
        let n = shape.reduce(1, *)
        var plain = Int8Weight.plainLayout(shape)
        var out = [Int8](repeating: 0, count: n)
        out.withUnsafeMutableBytes { b in
            if dnnl_memory_desc_equal(&plain, &layout) != 0 { b.baseAddress!.copyMemory(from: values.base, byteCount: n) }
            else { DNNL.reorder(from: layout, values.base, to: plain, b.baseAddress!) }
        }
        return out
    }

    /// w as the int8 kernels see it: q_w * s_w per output channel (float32).
    public func dequantized() -> Tensor {
        let q = int8Values, cols = fanIn
        return Tensor((0..<q.count).map { Float(q[$0]) * scales[$0 / cols] }, shape: shape)
    }

    /// The values in the layout `prim` wants, reordered once from the layout they are in (which is then dropped).
    fileprivate func values(for prim: Primitive) -> (UnsafeMutableRawPointer, Storage) {
        lock.lock()
        defer { lock.unlock() }
        var want = prim.md(dnnl_query_weights_md)
        if dnnl_memory_desc_equal(&want, &layout) == 0 {
            let buf = Storage(byteCount: dnnl_memory_desc_get_size(&want), zeroed: true)
            DNNL.reorder(from: layout, values.base, to: want, buf.base)
            values = buf
            layout = want
        }
        return (values.base, values)
    }
}

/// Per-call activation quantisation parameters, one (scale, zero point) per row or image.
private struct ActivationQuant {
    var scales: [Float]
    var zeroPoints: [Int32]
}

/// x (..., in) @ w^T + bias with x quantised per row to u8 and the int8 matmul (see the scheme above). No gradient.
public func linearInt8(_ x: Tensor, _ w: Int8Weight, _ bias: Tensor?) -> Tensor {
    precondition(w.shape.count == 2 && x.shape.last == w.shape[1], "linearInt8: input \(x.shape) for weight \(w.shape)")
    return OpTimes.measure("linear int8 \(w.shape[1])->\(w.shape[0])") { linearInt8Op(x, w, bias) }
}

private func linearInt8Op(_ x: Tensor, _ w: Int8Weight, _ bias: Tensor?) -> Tensor {
    let inF = w.shape[1], outF = w.shape[0], rows = x.count / inF
    let x32 = x.contiguous().float32()
    let b32 = bias?.contiguous().float32()
    let qx = Storage(byteCount: rows * inF)
    var a = ActivationQuant(scales: .init(repeating: 0, count: rows), zeroPoints: .init(repeating: 0, count: rows))
    a.scales.withUnsafeMutableBufferPointer { s in
        a.zeroPoints.withUnsafeMutableBufferPointer { z in
            let sp = s.baseAddress!, zp = z.baseAddress!
            let q = qx.base.assumingMemoryBound(to: UInt8.self)
            Parallel.forRange(rows, costPerItem: inF) { r in
                ck_i8_quantize_rows(x32.data + r.lowerBound * inF, r.count, inF, sp + r.lowerBound, zp + r.lowerBound, q + r.lowerBound * inF)
            }
        }
    }
    let out = Tensor.empty(Array(x.shape.dropLast()) + [outF])
    let key = "matmul_u8s8s32:\(rows),\(inF),\(outF)"
    let prim = DNNL.primitive(key) {
        var d = dnnl_matmul_desc_t()
        var s = memoryDesc([rows, inF], dnnl_u8), wd = memoryDesc([inF, outF], dnnl_s8, tag: dnnl_format_tag_any)
        var ds = memoryDesc([rows, outF], dnnl_s32)
        dnnlCheck(dnnl_matmul_desc_init(&d, &s, &wd, nil, &ds), "int8 matmul desc \(key)")
        var pd: dnnl_primitive_desc_t?
        dnnlCheck(dnnl_primitive_desc_create(&pd, &d, DNNL.attr, DNNL.engine, nil), "int8 matmul pd \(key)")
        return Primitive(pd: pd!)
    }
    let (wp, wowner) = w.values(for: prim)
    // The int32 accumulators go into the output's own buffer and are dequantised in place.
    prim.run([
        .init(arg: DNNL_ARG_SRC, query: dnnl_query_src_md, plain: memoryDesc([rows, inF], dnnl_u8), ptr: qx.base),
        .init(arg: DNNL_ARG_WEIGHTS, query: dnnl_query_weights_md, plain: memoryDesc([inF, outF], dnnl_s8, tag: dnnl_ba), ptr: wp, cached: wp),
        .init(arg: DNNL_ARG_DST, query: dnnl_query_dst_md, plain: memoryDesc([rows, outF], dnnl_s32), ptr: UnsafeMutableRawPointer(out.data), isOutput: true),
    ])
    withExtendedLifetime((wowner, qx)) {}
    let acc = UnsafeRawPointer(out.data).assumingMemoryBound(to: Int32.self)
    w.scales.withUnsafeBufferPointer { sw in
        w.sums.withUnsafeBufferPointer { ws in
            a.scales.withUnsafeBufferPointer { sx in
                a.zeroPoints.withUnsafeBufferPointer { zx in
                    let (swp, wsp, sxp, zxp) = (sw.baseAddress!, ws.baseAddress!, sx.baseAddress!, zx.baseAddress!)
                    let bp = b32.map { UnsafePointer($0.data) }
                    Parallel.forRange(rows, costPerItem: outF) { r in
                        ck_i8_dequantize_rows(acc, out.data, r.lowerBound, r.upperBound, outF, sxp, zxp, swp, wsp, bp)
                    }
                }
            }
        }
    }
    withExtendedLifetime((x32, b32)) {}
    return out
}

/// conv2d(x, w, bias, options) (NCHW, groups 1, dilation 1) with each image quantised to u8 and oneDNN's int8
/// convolution (see the scheme above). No gradient.
public func conv2dInt8(_ x: Tensor, _ w: Int8Weight, _ bias: Tensor?, _ o: Conv2dOptions) -> Tensor {
    precondition(w.shape.count == 4 && x.rank == 4 && x.shape[1] == w.shape[1], "conv2dInt8: input \(x.shape) for weight \(w.shape)")
    precondition(o.groups == 1 && o.dilation == (1, 1), "conv2dInt8: groups and dilation must be 1")
    return OpTimes.measure("conv \(w.shape[2])x\(w.shape[3])/\(o.stride.0) \(x.shape[2])x\(x.shape[3]) int8") { conv2dInt8Op(x, w, bias, o) }
}

private func conv2dInt8Op(_ x: Tensor, _ w: Int8Weight, _ bias: Tensor?, _ o: Conv2dOptions) -> Tensor {
    let (n, c, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
    let (oc, kh, kw) = (w.shape[0], w.shape[2], w.shape[3])
    let p = o.padding
    let hp = h + p.top + p.bottom, wp = wd + p.left + p.right
    let oh = (hp - kh) / o.stride.0 + 1, ow = (wp - kw) / o.stride.1 + 1
    precondition(oh > 0 && ow > 0, "conv2dInt8: kernel \(kh)x\(kw) larger than the padded input \(hp)x\(wp)")
    let x32 = x.contiguous().float32()
    let b32 = bias?.contiguous().float32()
    // Per image: the range, then the padded channels-last u8 image.
    var a = ActivationQuant(scales: .init(repeating: 0, count: n), zeroPoints: .init(repeating: 0, count: n))
    let qx = Storage(byteCount: n * hp * wp * c)
    let plane = c * h * wd
    for i in 0..<n {
        let xi = x32.data + i * plane
        // Min and max over chunks in parallel, then combined.
        let chunks = max(1, min(Parallel.threadCount, plane / 65536))
        var lo = [Float](repeating: 0, count: chunks), hi = [Float](repeating: 0, count: chunks)
        lo.withUnsafeMutableBufferPointer { lb in
            hi.withUnsafeMutableBufferPointer { hb in
                let (lp, hpp) = (lb.baseAddress!, hb.baseAddress!)
                Parallel.forEach(chunks, costPerItem: 1 << 20) { k in
                    let s = plane * k / chunks, e = plane * (k + 1) / chunks
                    ck_i8_minmax(xi + s, e - s, lp + k, hpp + k)
                }
            }
        }
        var z: Int32 = 0
        let s = ck_i8_qparams(lo.min()!, hi.max()!, &z)
        a.scales[i] = s
        a.zeroPoints[i] = z
        let qi = qx.base.assumingMemoryBound(to: UInt8.self) + i * hp * wp * c
        Parallel.forRange(hp, costPerItem: wp * c) { r in
            ck_i8_quantize_image(xi, c, h, wd, p.top, p.left, p.bottom, p.right, s, z, qi, r.lowerBound, r.upperBound)
        }
    }
    let key = "conv_u8s8s32:\(n),\(c),\(hp),\(wp),\(oc),\(kh),\(kw),s\(o.stride.0),\(o.stride.1)"
    let prim = DNNL.primitive(key) {
        var d = dnnl_convolution_desc_t()
        var s = memoryDesc([n, c, hp, wp], dnnl_u8, tag: dnnl_acdb), wdsc = memoryDesc(w.shape, dnnl_s8, tag: dnnl_format_tag_any)
        var ds = memoryDesc([n, oc, oh, ow], dnnl_s32, tag: dnnl_acdb)
        var st = dims([o.stride.0, o.stride.1]), zero = dims([0, 0])
        dnnlCheck(dnnl_convolution_forward_desc_init(&d, dnnl_forward_inference, dnnl_convolution_direct, &s, &wdsc, nil, &ds,
                                                     &st.0, &zero.0, &zero.0), "int8 conv desc \(key)")
        var pd: dnnl_primitive_desc_t?
        dnnlCheck(dnnl_primitive_desc_create(&pd, &d, DNNL.attr, DNNL.engine, nil), "int8 conv pd \(key)")
        return Primitive(pd: pd!)
    }
    let (wptr, wowner) = w.values(for: prim)
    let acc = Storage(byteCount: n * oh * ow * oc * 4)
    prim.run([
        .init(arg: DNNL_ARG_SRC, query: dnnl_query_src_md, plain: memoryDesc([n, c, hp, wp], dnnl_u8, tag: dnnl_acdb), ptr: qx.base),
        .init(arg: DNNL_ARG_WEIGHTS, query: dnnl_query_weights_md, plain: memoryDesc(w.shape, dnnl_s8), ptr: wptr, cached: wptr),
        .init(arg: DNNL_ARG_DST, query: dnnl_query_dst_md, plain: memoryDesc([n, oc, oh, ow], dnnl_s32, tag: dnnl_acdb), ptr: acc.base, isOutput: true),
    ])
    withExtendedLifetime((wowner, qx)) {}
    let out = Tensor.empty([n, oc, oh, ow])
    let hw = oh * ow
    w.scales.withUnsafeBufferPointer { sw in
        w.sums.withUnsafeBufferPointer { ws in
            let (swp, wsp) = (sw.baseAddress!, ws.baseAddress!)
            let bp = b32.map { UnsafePointer($0.data) }
            for i in 0..<n {
                let ai = UnsafePointer(acc.base.assumingMemoryBound(to: Int32.self)) + i * hw * oc
                let yi = out.data + i * oc * hw
                let (s, z) = (a.scales[i], a.zeroPoints[i])
                Parallel.forRange(hw, costPerItem: oc) { r in
                    ck_i8_dequantize_image(ai, yi, oc, hw, r.lowerBound, r.upperBound, s, z, swp, wsp, bp)
                }
            }
        }
    }
    withExtendedLifetime((x32, b32, acc)) {}
    return out
}
