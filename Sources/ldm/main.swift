import ArgumentParser
import Foundation
import TensorCore

// Line-buffered stdout, so progress lines reach a log file (or a pipe) as they are printed.
setvbuf(stdout, nil, _IOLBF, 0)
// An LDM_ISA that names no level is bad input: refuse it rather than run at a level the user did not ask for.
if let bad = CPUFeatures.invalidOverride {
    FileHandle.standardError.write("error: LDM_ISA=\(bad) names no instruction-set level (baseline, avx2, avx512, avx512_bf16, amx)\n".data(using: .utf8)!)
    exit(2)
}
LDM.main()
