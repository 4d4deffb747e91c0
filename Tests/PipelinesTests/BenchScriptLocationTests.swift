// Issue 15 point 5: `ldm bench` finds tools/bench/*.py beside the package's sources, not in the working directory.
// The PyTorch side is a stand-in "python" (a shell script) that records the script path it was given and answers
// with an empty JSON object, so the test needs neither torch nor the repository root as working directory.
import Foundation
import XCTest

final class BenchScriptLocationTests: XCTestCase {
    func testBenchFindsItsPyTorchScriptFromAnyDirectory() throws {
        let ldm = LDMExecutable.url
        guard FileManager.default.isExecutableFile(atPath: ldm.path) else { return XCTFail("the ldm executable is not built at \(ldm.path)") }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ldm-bench-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let seen = dir.appendingPathComponent("script-path.txt")
        let python = dir.appendingPathComponent("python")
        try "#!/bin/sh\n[ -f \"$1\" ] || exit 3\nprintf '%s' \"$1\" > '\(seen.path)'\necho '{}'\n".write(to: python, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: python.path)

        let p = Process()
        p.executableURL = ldm
        p.arguments = ["bench", "core", "--ops", "norm", "--reps", "1"]
        p.currentDirectoryURL = dir
        p.environment = ProcessInfo.processInfo.environment.merging(["LDM_TORCH_PYTHON": python.path]) { _, new in new }
        let err = Pipe()
        p.standardError = err
        p.standardOutput = Pipe()
        try p.run()
        let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, stderr)
        let path = try String(contentsOf: seen, encoding: .utf8)
        XCTAssertTrue(path.hasSuffix("tools/bench/torch_core.py"), path)
        XCTAssertTrue(FileManager.default.fileExists(atPath: path), path)
    }
}
