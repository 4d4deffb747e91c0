import Foundation
import XCTest
@testable import TensorCore

// Run-time CPU detection (CKernels' cpu_features.c) against the kernel's own view (/proc/cpuinfo), and the ISA
// dispatch of the C kernels: every code level this CPU can run (baseline, avx2, avx512) gives the same results within
// float32 rounding. Run the suite under LDM_ISA=avx2 (or baseline) as well: the levels above are then not used.
final class CPUFeaturesTests: XCTestCase {
    func testDetectionAgreesWithProcCpuinfo() throws {
        guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
              let line = info.split(separator: "\n").first(where: { $0.hasPrefix("flags") }) else {
            throw XCTSkip("no /proc/cpuinfo flags line on this system")
        }
        let linux = Set(line.split(separator: ":").last!.split(separator: " ").map(String.init))
        let ours = Set(CPUFeatures.flags)
        print("CPUFeatures: \(CPUFeatures.summary.joined(separator: "; "))")
        // Linux lists a feature only when it enabled its state, as our XGETBV check requires.
        for flag in ["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd", "avx512_bf16",
                     "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8"] {
            XCTAssertEqual(ours.contains(flag), linux.contains(flag), "\(flag): CPUID says \(ours.contains(flag)), /proc/cpuinfo \(linux.contains(flag))")
        }
        XCTAssertLessThanOrEqual(CPUFeatures.active, CPUFeatures.detected)
        XCTAssertLessThanOrEqual(CPUFeatures.kernels, CPUFeatures.active)
        if linux.contains("avx512_bf16") && ProcessInfo.processInfo.environment["LDM_ISA"] == nil {
            XCTAssertTrue(CPUFeatures.nativeBF16)
        }
    }

    /// The code levels of the C kernels this process may run, lowest first.
    private var levels: [CPUFeatures.ISA] { [.baseline, .avx2, .avx512].filter { $0 <= CPUFeatures.kernels } }

    func testKernelLevelsAgree() {
        print("C kernel levels compared: \(levels.map(\.name))")
        let g = TorchGenerator(seed: 11)
        let x = Tensor.randn([2, 17, 13, 11], generator: g), w = Tensor.randn([33, 17, 3, 3], generator: g) * 0.1
        let b = Tensor.randn([33], generator: g)
        func run() -> [[Float]] {
            let xs = Tensor(x.toArray(), shape: x.shape).requiringGrad(), ws = Tensor(w.toArray(), shape: w.shape).requiringGrad()
            let y = Winograd.withMinTiles(1) { conv2d(xs, ws, b, Conv2dOptions(padding: 1)) }
            let act = y.groupNorm(groups: 3, weight: nil, bias: nil, silu: true).gelu() * y.silu()
            let soft = y.reshaped([-1, 143]).softmax()
            let q = y.reshaped([2, 1, 33, 143]), att = scaledDotProductAttention(q, q, q, causal: true)
            (act.sum() + (soft * y.reshaped([-1, 143])).sum() + att.sum()).backward()
            return [y.toArray(), act.toArray(), soft.toArray(), att.toArray(), xs.grad!.toArray(), ws.grad!.toArray()]
        }
        let reference = CPUFeatures.withKernels(.baseline) { run() }
        for level in levels.dropFirst() {
            let got = CPUFeatures.withKernels(level) { run() }
            for (i, (a, r)) in zip(got, reference).enumerated() {
                let scale = max(r.map(abs).max() ?? 1, 1e-6)
                let err = zip(a, r).map { abs($0 - $1) }.max() ?? 0
                XCTAssertLessThan(err / scale, 1e-5, "\(level.name) vs baseline, output \(i)")
            }
        }
    }
}
