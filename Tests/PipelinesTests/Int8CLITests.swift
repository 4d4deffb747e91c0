// `--precision int8` of the generation commands, through the built `ldm` on the tiny SD folder: where the level in use
// has AVX512_VNNI the UNet runs on int8 weights (the log says how many layers and bytes) and the image stays close to
// the float32 one of the same seed; where it has not (this CPU, or LDM_ISA=avx2 on any CPU) the command fails before
// loading anything, naming AVX512_VNNI, and writes no image; `ldm serve` refuses int8.
import Foundation
import Imaging
import TensorCore
import XCTest

final class Int8CLITests: LDMCommandTestCase {
    var model: String { fixtures.appendingPathComponent("tiny-sd").path }

    func txt2img(_ out: URL, _ precision: String, environment: [String: String] = [:]) throws -> (status: Int32, log: String) {
        try run(["txt2img", "--model", model, "--prompt", "a red cube", "--steps", "2", "--seed", "7", "--sampler", "ddim",
                 "--output", out.path, "--precision", precision], environment: environment)
    }

    func testInt8ImageIsCloseToFloat32() throws {
        if let why = Int8Compute.unavailableReason {
            print("Int8CLITests skipped: \(why)")
            throw XCTSkip(why)
        }
        let dir = try tempDir()
        let f32URL = dir.appendingPathComponent("f32.png"), int8URL = dir.appendingPathComponent("int8.png")
        let f32 = try txt2img(f32URL, "f32")
        XCTAssertEqual(f32.status, 0, f32.log)
        let int8 = try txt2img(int8URL, "int8")
        XCTAssertEqual(int8.status, 0, int8.log)
        XCTAssertTrue(int8.log.contains("precision: int8 UNet ("), int8.log)
        let a = try ImageIO.loadRGB(path: f32URL.path).pixels, b = try ImageIO.loadRGB(path: int8URL.path).pixels
        XCTAssertNotEqual(a, b, "int8 should change the image")
        var sq = 0.0
        for (p, q) in zip(a, b) {
            let d = Double(Int(p) - Int(q))
            sq += d * d
        }
        let mse = sq / Double(a.count)
        let psnr = 10 * log10(255 * 255 / mse)
        print("Int8CLITests: tiny-sd 2-step PSNR int8 vs f32 \(psnr) dB")
        XCTAssertGreaterThan(psnr, 30, "int8 image too far from float32")
    }

    func testInt8WithoutVNNIFailsNamingIt() throws {
        let dir = try tempDir()
        let out = dir.appendingPathComponent("avx2.png")
        let r = try txt2img(out, "int8", environment: ["LDM_ISA": "avx2"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.log.contains("--precision int8") && r.log.contains("AVX512_VNNI"), r.log)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out.path))
        let bad = try txt2img(dir.appendingPathComponent("x.png"), "int4")
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.log.contains("auto, f32, bf16 or int8"), bad.log)
        let serve = try run(["serve", "--model", model, "--precision", "int8"])
        XCTAssertNotEqual(serve.0, 0)
        XCTAssertTrue(serve.1.contains("int8 is for the generation commands"), serve.1)
    }
}
