import CDNNL
import Foundation

// bf16 compute on the CPU's own bf16 instructions (AVX512_BF16's vdpbf16ps, AMX tiles), through oneDNN's bf16
// convolution and matmul kernels (avx512_core_bf16 / avx512_core_amx in oneDNN 2.6): inputs and weights converted to
// bfloat16 with round-to-nearest-even, products accumulated in float32, float32 results, as mkldnn's bf16 kernels
// compute under torch.autocast("cpu", torch.bfloat16). Weights stored in bfloat16 are reordered from their bf16 bytes
// (never expanded to float32). Inference only: inside a scope, ops that record gradients keep the float32 kernels.
// Available only where `CPUFeatures.nativeBF16` (the level in use has AVX512_BF16 or AMX); NeuralNetwork's Autocast
// uses it for its lower-precision ops there and emulates bf16 on the float32 kernels elsewhere.

public enum NativeBF16 {
    /// Whether the current scope computes convolutions and linear layers in native bf16. Global, like GradMode.
    public nonisolated(unsafe) static private(set) var active = false
    /// Whether this process can (the ISA level in use has native bf16).
    public static var available: Bool { CPUFeatures.nativeBF16 }
    /// Why it cannot (nil where `available`): the ISA level in use and the one detected.
    public static var unavailableReason: String? {
        available ? nil : "no native bf16 at ISA level \(CPUFeatures.active.name) (detected \(CPUFeatures.detected.name))"
    }
    /// Under native bf16, 3x3 stride-1 convolutions that Winograd takes still run as float32 Winograd (2.25 float32
    /// multiply-adds per output against 9 bf16 ones of the direct kernel: faster here, and more accurate) unless
    /// `LDM_BF16_WINOGRAD=0`, which sends them to oneDNN's bf16 direct convolution.
    public nonisolated(unsafe) static var keepsWinograd = ProcessInfo.processInfo.environment["LDM_BF16_WINOGRAD"] != "0"
    /// Fewest 4x4 output tiles (over the batch) for which float32 Winograd beats oneDNN's bf16 direct kernel under
    /// native bf16 (`ldm bench core --ops convs` on a Zen 4: 128 tiles of 2x640x32x32 run 30 ms Winograd against 36 ms
    /// bf16 direct, 32 tiles of 2x1280x16x16 47 ms against 36 ms). `LDM_BF16_WINOGRAD_MIN_TILES` overrides it.
    public nonisolated(unsafe) static var winogradMinTiles = ProcessInfo.processInfo.environment["LDM_BF16_WINOGRAD_MIN_TILES"].flatMap { Int($0) } ?? 64

    /// Runs `body` with native bf16 compute on (`enabled` and available) or off.
    public static func scope<T>(_ enabled: Bool = true, _ body: () throws -> T) rethrows -> T {
        let saved = active
        active = enabled && available
        defer { active = saved }
        return try body()
    }

    /// Whether the current scope is bf16 autocast (set by NeuralNetwork's Autocast around its whole body, not only
    /// around the lower-precision ops): attention then runs its two products in native bf16 where available, as
    /// torch's CPU flash attention does on the bf16 q, k, v that autocast's linear layers return.
    public nonisolated(unsafe) static private(set) var autocast = false
    /// Runs `body` with `autocast` set to `on`.
    public static func autocastScope<T>(_ on: Bool, _ body: () throws -> T) rethrows -> T {
        let saved = autocast
        autocast = on
        defer { autocast = saved }
        return try body()
    }
    /// `LDM_BF16_ATTENTION=0` keeps attention in float32 under bf16 autocast.
    public nonisolated(unsafe) static var attentionEnabled = ProcessInfo.processInfo.environment["LDM_BF16_ATTENTION"] != "0"

    /// Whether an op with these operands runs in native bf16 now.
    static func applies(_ inputs: [Tensor]) -> Bool { active && !GradMode.shouldRecord(inputs) }
    /// Whether attention with these operands runs its products in native bf16 now.
    static func attentionApplies(_ inputs: [Tensor]) -> Bool {
        autocast && attentionEnabled && available && !GradMode.shouldRecord(inputs)
    }
    /// Whether an op with these operands would run in native bf16 inside a scope (available, no gradient recorded).
    public static func couldApply(_ inputs: [Tensor]) -> Bool { available && !GradMode.shouldRecord(inputs) }
}

/// x (rows, in) @ weight(out, in)^T + bias (+ residual) as a oneDNN bf16 matmul (bf16 operands, float32 accumulation
/// and result). A residual (float32, the output's shape) is added to the float32 product in the kernel (a binary-add
/// post-op on the accumulator: no pass over the output after the GEMM), before any rounding. A bf16 `x` is read as
/// stored; a float32 one is converted (rounded to nearest even) by a reorder.
func linearBF16(_ x: Tensor, _ weight: Tensor, _ bias: Tensor?, adding residual: Tensor? = nil) -> Tensor {
    let inF = weight.shape[1], outF = weight.shape[0], rows = x.count / inF
    let x2 = x.dtype == .bfloat16 ? x.contiguous() : x.float32().contiguous()
    let xbase = x2.storage.base + x2.offset * x2.dtype.byteSize
    let out = Tensor.empty(Array(x.shape.dropLast()) + [outF])
    let b32 = bias?.float32().contiguous(), r32 = residual?.float32().contiguous()
    let key = "matmul_bf16:\(rows),\(inF),\(outF)b\(bias != nil)r\(residual != nil)"
    let prim = DNNL.primitive(key) {
        var d = dnnl_matmul_desc_t()
        var s = memoryDesc([rows, inF], dnnl_bf16), w = memoryDesc([inF, outF], dnnl_bf16, tag: dnnl_ba)
        var b = memoryDesc([1, outF]), ds = memoryDesc([rows, outF])
        withUnsafePointer(to: &b) { bp in
            dnnlCheck(dnnl_matmul_desc_init(&d, &s, &w, bias != nil ? bp : nil, &ds), "bf16 matmul desc \(key)")
        }
        return DNNL.withAttr(adding: residual != nil ? ds : nil) { attr in
            var pd: dnnl_primitive_desc_t?
            dnnlCheck(dnnl_primitive_desc_create(&pd, &d, attr, DNNL.engine, nil), "bf16 matmul pd \(key)")
            return Primitive(pd: pd!)
        }
    }
    // The weight (out, in) row-major in bf16 is the (in, out) bf16 matrix the primitive takes ("ba"): a bf16 weight
    // is read as stored; a float32 one is converted (kept on the tensor when small, see ConvWeightCache).
    let (wptr, wowner) = weight.bf16Rows(key: "matmul_bf16")
    var args: [Primitive.Arg] = [
        .init(arg: DNNL_ARG_SRC, query: dnnl_query_src_md, plain: memoryDesc([rows, inF], x2.dtype == .bfloat16 ? dnnl_bf16 : dnnl_f32), ptr: xbase),
        .init(arg: DNNL_ARG_WEIGHTS, query: dnnl_query_weights_md, plain: memoryDesc([inF, outF], dnnl_bf16, tag: dnnl_ba), ptr: wptr, cached: wptr),
        .init(arg: DNNL_ARG_DST, query: dnnl_query_dst_md, plain: memoryDesc([rows, outF]), ptr: UnsafeMutableRawPointer(out.data), isOutput: true),
    ]
    if let b32 {
        args.append(.init(arg: DNNL_ARG_BIAS, query: dnnl_query_weights_md, plain: memoryDesc([1, outF]), ptr: UnsafeMutableRawPointer(b32.data), index: 1))
    }
    if let r32 { args.append(.postOpAddend(memoryDesc([rows, outF]), UnsafeMutableRawPointer(r32.data))) }
    withExtendedLifetime((x2, b32, r32, weight, wowner)) { prim.run(args) }
    return out
}

extension Tensor {
    /// This tensor's elements as contiguous bf16 (round to nearest even): its own storage when it is a contiguous bf16
    /// tensor, else a converted copy, cached under `key` when at most `ConvWeightCache.maxCachedBytes`.
    func bf16Rows(key: String) -> (UnsafeMutableRawPointer, AnyObject) {
        if dtype == .bfloat16 && isContiguous { return (storage.base + offset * 2, storage) }
        if let c = layoutCache, c.key == key, c.version == version { return (c.storage.base, c.storage) }
        let t = to(.bfloat16)
        if count * 2 <= ConvWeightCache.maxCachedBytes { layoutCache = (key, version, t.storage) }
        return (t.storage.base, t)
    }

    /// This weight's bytes at `base` (plain layout `plain`) in the layout `prim` wants: cached on the tensor when
    /// small (`ConvWeightCache.maxCachedBytes`), else reordered into a temporary the caller keeps alive.
    func reordered(_ base: UnsafeMutableRawPointer, plain: dnnl_memory_desc_t, for prim: Primitive, key: String) -> (UnsafeMutableRawPointer, Storage) {
        if let c = layoutCache, c.key == key, c.version == version { return (c.storage.base, c.storage) }
        var want = prim.md(dnnl_query_weights_md), p = plain
        if dnnl_memory_desc_equal(&want, &p) != 0 { return (base, storage) }
        let bytes = dnnl_memory_desc_get_size(&want)
        let buf = Storage(byteCount: bytes)
        DNNL.reorder(from: plain, base, to: want, buf.base)
        if bytes <= ConvWeightCache.maxCachedBytes { layoutCache = (key, version, buf) }
        return (buf.base, buf)
    }
}
