// Running the built `ldm` executable from tests: where it is, a scratch folder per test, one run returning the exit
// status and stderr, and the web-UI parameters of a PNG it wrote. Shared by the command-line test classes.
import Foundation
import Imaging
import XCTest

enum LDMExecutable {
    /// The `ldm` that `swift build --build-tests` put beside the test bundle.
    static var url: URL {
        #if os(macOS)
        for b in Bundle.allBundles where b.bundlePath.hasSuffix(".xctest") { return b.bundleURL.deletingLastPathComponent().appendingPathComponent("ldm") }
        #endif
        return Bundle.main.bundleURL.appendingPathComponent("ldm")
    }
}

/// A test case that runs `ldm` commands.
class LDMCommandTestCase: XCTestCase {
    var ldm: URL { LDMExecutable.url }

    /// A fresh folder, removed after the test.
    func tempDir() throws -> URL {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("ldm-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: d) }
        return d
    }

    /// Runs ldm (with `environment` added to this process's; generation commands at --precision f32 unless `args`
    /// name one or `defaultPrecision`); returns (exit status, stderr).
    func run(_ args: [String], environment: [String: String] = [:], defaultPrecision: Bool = false) throws -> (Int32, String) {
        guard FileManager.default.isExecutableFile(atPath: ldm.path) else {
            XCTFail("the ldm executable is not built at \(ldm.path)")
            return (-1, "")
        }
        let p = Process()
        p.executableURL = ldm
        p.arguments = defaultPrecision ? args : float32Precision(args)
        if !environment.isEmpty { p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
        let err = Pipe()
        p.standardError = err
        p.standardOutput = Pipe()
        try p.run()
        let data = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    /// The web UI's `parameters` text chunk of a PNG, parsed.
    func parameters(_ url: URL) throws -> GenerationParameters {
        GenerationParameters(parsing: try XCTUnwrap(try ImageIO.load(path: url.path).text("parameters")))
    }
}

/// The generation commands run at `--precision f32` unless a test names a precision: their images are compared with
/// diffusers' float32 ones, and the default (auto) computes in bf16 on CPUs with native bf16.
func float32Precision(_ args: [String]) -> [String] {
    let generation: Set = ["txt2img", "img2img", "inpaint", "upscale", "sample", "semantic", "layout"]
    guard let command = args.first, generation.contains(command), !args.contains("--precision") else { return args }
    return args + ["--precision", "f32"]
}
