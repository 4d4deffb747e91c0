// `--precision` of the generation commands, end to end through the built `ldm` on the tiny SD folder: auto (the
// default) is bf16 exactly where the ISA level in use computes bf16 natively (chosen at run time from CPUFeatures;
// LDM_ISA=avx512 on an AVX512_BF16 CPU gives float32), and its image is the one of the precision it picked.
import Foundation
import Imaging
import TensorCore
import XCTest

final class PrecisionCLITests: LDMCommandTestCase {
    var model: String { fixtures.appendingPathComponent("tiny-sd").path }

    func txt2img(_ out: URL, _ extra: [String], environment: [String: String] = [:]) throws -> (pixels: [UInt8], log: String) {
        let (status, err) = try run(["txt2img", "--model", model, "--prompt", "a red cube", "--steps", "2", "--seed", "7",
                                     "--sampler", "ddim", "--output", out.path] + extra, environment: environment, defaultPrecision: true)
        XCTAssertEqual(status, 0, err)
        return (try ImageIO.loadRGB(path: out.path).pixels, err)
    }

    func testAutoPicksBF16OnlyWithNativeBF16() throws {
        let dir = try tempDir()
        let f32 = try txt2img(dir.appendingPathComponent("f32.png"), ["--precision", "f32"])
        let bf16 = try txt2img(dir.appendingPathComponent("bf16.png"), ["--precision", "bf16"])
        XCTAssertNotEqual(f32.pixels, bf16.pixels, "bf16 compute should change the image")
        // Without native bf16 in use (LDM_ISA=avx512): float32, the f32 image.
        let noNative = try txt2img(dir.appendingPathComponent("avx512.png"), ["--precision", "auto"], environment: ["LDM_ISA": "avx512"])
        XCTAssertTrue(noNative.log.contains("precision: float32"), noNative.log)
        XCTAssertEqual(noNative.pixels, f32.pixels)
        let auto = try txt2img(dir.appendingPathComponent("auto.png"), ["--precision", "auto"])
        // auto is the default.
        XCTAssertEqual(try txt2img(dir.appendingPathComponent("default.png"), []).pixels, auto.pixels)
        if CPUFeatures.active.hasNativeBF16 {
            XCTAssertTrue(auto.log.contains("precision: bf16 (native)"), auto.log)
            XCTAssertEqual(auto.pixels, bf16.pixels)
        } else {
            print("PrecisionCLITests: no native bf16 at \(CPUFeatures.active.name); auto checked as float32 only")
            XCTAssertTrue(auto.log.contains("precision: float32"), auto.log)
            XCTAssertEqual(auto.pixels, f32.pixels)
        }
    }
}
