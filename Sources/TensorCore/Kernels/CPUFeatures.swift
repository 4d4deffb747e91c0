import CDNNL
import CKernels

// What this CPU can do, detected at run time (CKernels' cpu_features.c: CPUID, XGETBV, Linux's AMX permission), and
// what the engine uses: the ISA level of our C kernels and of oneDNN, lowered by LDM_ISA. Every statement about the
// CPU that the program prints comes from here.

public enum CPUFeatures {
    /// Instruction-set levels, lowest first (LDM_ISA spells them as `rawValue`).
    public enum ISA: Int, Comparable, CaseIterable, Sendable {
        case baseline = 0, avx2, avx512, avx512BF16, amx
        public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
        public var name: String { String(cString: ck_isa_name(ck_isa(UInt32(rawValue)))) }
        init(_ c: ck_isa) { self = ISA(rawValue: Int(c.rawValue)) ?? .baseline }
        /// Whether this level computes bf16 products natively (AVX512_BF16 dot products or AMX tiles).
        public var hasNativeBF16: Bool { self >= .avx512BF16 }
    }

    public static var cpu: ck_cpu_features { ck_cpu().pointee }

    /// The highest level this CPU and OS support.
    public static var detected: ISA { ISA(ck_isa_detected()) }
    /// The level in use (detected, lowered by LDM_ISA).
    public static var active: ISA { ISA(ck_isa_active()) }
    /// The level our C kernels run now (their code exists for baseline, avx2 and avx512).
    public static var kernels: ISA { ISA(ck_kernels_level()) }
    /// LDM_ISA's value when it names no level (then ignored).
    public static var invalidOverride: String? { ck_isa_invalid_override().map { String(cString: $0) } }
    /// Whether LDM_ISA asked for more than the CPU has (then clamped to `detected`).
    public static var overrideClamped: Bool { ck_isa_clamped() != 0 }
    /// bf16 products computed natively (by the hardware), at the level in use.
    public static var nativeBF16: Bool { active.hasNativeBF16 }

    /// The ISA oneDNN dispatches to (its own name for it).
    public static var oneDNNISA: String {
        let isa = dnnl_get_effective_cpu_isa()
        switch isa {
        case dnnl_cpu_isa_sse41: return "sse41"
        case dnnl_cpu_isa_avx: return "avx"
        case dnnl_cpu_isa_avx2: return "avx2"
        case dnnl_cpu_isa_avx512_core: return "avx512_core"
        case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni"
        case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16"
        case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx"
        case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni"
        default: return "isa 0x" + String(isa.rawValue, radix: 16)
        }
    }

    /// The CPU's instruction-set extensions that matter here, as /proc/cpuinfo names them.
    public static var flags: [String] {
        let c = cpu
        let all: [(Int32, String)] = [(c.sse41, "sse4_1"), (c.avx, "avx"), (c.avx2, "avx2"), (c.fma, "fma"), (c.f16c, "f16c"),
                                      (c.avx512f, "avx512f"), (c.avx512bw, "avx512bw"), (c.avx512vl, "avx512vl"), (c.avx512dq, "avx512dq"),
                                      (c.avx512cd, "avx512cd"), (c.avx512_bf16, "avx512_bf16"), (c.avx512_vnni, "avx512_vnni"),
                                      (c.avx_vnni, "avx_vnni"), (c.amx_tile, "amx_tile"), (c.amx_bf16, "amx_bf16"), (c.amx_int8, "amx_int8")]
        return all.filter { $0.0 != 0 }.map(\.1)
    }

    public static var brand: String {
        var c = cpu
        let name = withUnsafeBytes(of: &c.brand) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        let vendor = withUnsafeBytes(of: &c.vendor) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        return name.isEmpty ? vendor : name
    }

    /// One-line summaries for `ldm system`, `ldm --version` and benchmark headers.
    public static var summary: [String] {
        var lines = ["cpu: \(brand), \(Parallel.threadCount) threads",
                     "cpu flags: \(flags.isEmpty ? "none of interest" : flags.joined(separator: " "))"]
        if cpu.amx_tile != 0 { lines.append("amx: tile data permission \(cpu.amx_permitted != 0 ? "granted" : "refused") by the kernel") }
        var isa = "isa: detected \(detected.name), in use \(active.name) (C kernels \(kernels.name), oneDNN \(oneDNNISA))"
        if let bad = invalidOverride { isa += "; LDM_ISA=\(bad) names no level (baseline, avx2, avx512, avx512_bf16, amx): ignored" }
        else if overrideClamped { isa += "; LDM_ISA asks for more than this CPU has: clamped" }
        lines.append(isa)
        lines.append("bf16 compute: " + (nativeBF16 ? "native (\(active == .amx ? "AMX tiles" : "AVX512_BF16 dot products"))"
                                                    : "emulated (bf16-rounded values through the float32 kernels): no AVX512_BF16/AMX in use"))
        return lines
    }

    /// Runs `body` with our C kernels at `isa` (at most `active`), restoring the previous level (tests).
    public static func withKernels<T>(_ isa: ISA, _ body: () throws -> T) rethrows -> T {
        let was = ck_kernels_force(ck_isa(UInt32(isa.rawValue)))
        defer { _ = ck_kernels_force(was) }
        return try body()
    }
}
