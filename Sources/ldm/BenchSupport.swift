import Foundation
import TensorCore

/// Timing and PyTorch-comparison helpers shared by the `ldm bench` commands.
enum BenchSupport {
    struct Row {
        var op: String
        var ours: Double?
        var torch: Double?
        var work: Double
        var unit: String
        var note = ""
    }

    /// How bf16 runs here, from the features detected at run time.
    static var bf16Note: String {
        CPUFeatures.nativeBF16 ? "native bf16 (\(CPUFeatures.active.name), oneDNN \(CPUFeatures.oneDNNISA))"
                               : "no native bf16 in use (\(CPUFeatures.active.name)): bf16 is emulated on the float32 kernels"
    }

    /// The header of every benchmark: CPU, features, ISA in use, threads.
    static func printHeader() {
        for line in CPUFeatures.summary { print(line) }
    }

    static func attentionScratchKB(heads: Int) -> Int { Parallel.threadCount * AttentionTiling.blockQ * AttentionTiling.blockK * 4 / 1024 }

    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }

    /// Median wall time of `reps` runs after one warm-up run.
    static func median(_ reps: Int, _ body: () -> Void) -> Double {
        body()
        OpTimes.reset() // LDM_OP_TIMES: the table covers the timed repetitions only
        var times: [Double] = []
        for _ in 0..<reps {
            let t = now()
            body()
            times.append(now() - t)
        }
        if OpTimes.enabled { FileHandle.standardError.write("repetitions: \(times.map { String(format: "%.3f s", $0) })\n".data(using: .utf8)!) }
        return times.sorted()[times.count / 2]
    }

    /// The package root this binary was built from: #filePath is <root>/Sources/ldm/BenchSupport.swift.
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Path of a PyTorch benchmark script `tools/bench/<name>`: found beside the package's sources (so `ldm bench`
    /// works from any directory), else relative to the working directory (a moved checkout run from its root).
    static func script(_ name: String) throws -> String {
        let relative = "tools/bench/" + name
        let candidates = [packageRoot.appendingPathComponent(relative).path,
                          URL(fileURLWithPath: FileManager.default.currentDirectoryPath).appendingPathComponent(relative).path]
        guard let found = candidates.first(where: { FileManager.default.fileExists(atPath: $0) }) else {
            throw BenchError("benchmark script \(relative) not found (looked in \(candidates.joined(separator: " and ")))")
        }
        return found
    }

    /// Runs the PyTorch side if LDM_TORCH_PYTHON is set; returns op -> seconds (empty without it).
    /// `script`: a file name under tools/bench/.
    static func torchFigures(script name: String, arguments: [String] = []) throws -> [String: Double] {
        guard let python = ProcessInfo.processInfo.environment["LDM_TORCH_PYTHON"], !python.isEmpty else {
            FileHandle.standardError.write("LDM_TORCH_PYTHON is not set: PyTorch figures and ratios are skipped.\n".data(using: .utf8)!)
            return [:]
        }
        let script = try Self.script(name)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: python)
        p.arguments = [script, "\(Parallel.threadCount)"] + arguments
        let pipe = Pipe()
        p.standardOutput = pipe
        do { try p.run() } catch { throw BenchError("cannot run LDM_TORCH_PYTHON=\(python): \(error.localizedDescription)") }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0,
              let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Double] else {
            throw BenchError("the PyTorch benchmark (\(script)) failed with status \(p.terminationStatus)")
        }
        return obj
    }

    static func printTable(_ rows: [Row], torchAvailable: Bool) {
        printHeader()
        print("| op | ours (ms) | ours rate | PyTorch (ms) | PyTorch rate | PyTorch time / ours | note |")
        print("|---|---|---|---|---|---|---|")
        for r in rows {
            func ms(_ t: Double?) -> String { t.map { String(format: "%.2f", $0 * 1e3) } ?? "n/a" }
            func rate(_ t: Double?) -> String { t.map { String(format: "%.1f %@", r.work / $0 / 1e9, r.unit) } ?? "n/a" }
            let ratio = (r.ours != nil && r.torch != nil) ? String(format: "%.2fx", r.torch! / r.ours!) : "n/a"
            print("| \(r.op) | \(ms(r.ours)) | \(rate(r.ours)) | \(ms(r.torch)) | \(rate(r.torch)) | \(ratio) | \(r.note) |")
        }
        if !torchAvailable { print("(PyTorch not measured: set LDM_TORCH_PYTHON)") }
    }
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}
