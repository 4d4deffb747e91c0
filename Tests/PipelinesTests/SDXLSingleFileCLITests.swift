// `ldm txt2img` with an SDXL single file: with `--config FOLDER` (the diffusers folder of the same model) it writes the
// folder's image; without it the tiny file (4 norm groups) cannot take SDXL's defaults and the command fails with a
// message; a --config folder that is not SDXL's is refused. `ldm convert` writes the sgm single file.
import Foundation
import Imaging
import XCTest

final class SDXLSingleFileCLITests: LDMCommandTestCase {
    typealias F = SDXLSingleFileFixtures

    func txt2img(_ model: URL, _ out: URL, _ extra: [String] = []) throws -> (Int32, String) {
        try run(["txt2img", "--model", model.path, "--prompt", "a cat", "--steps", "3", "--seed", "0", "--sampler", "euler",
                 "--cfg-scale", "5", "--width", "16", "--height", "16", "--output", out.path, "--quiet"] + extra)
    }

    func testSingleFileWithConfigFolderGivesTheFolderImage() throws {
        let dir = try tempDir()
        let a = dir.appendingPathComponent("file.png"), b = dir.appendingPathComponent("folder.png")
        let (s1, e1) = try txt2img(F.file, a, ["--config", F.folder.path])
        XCTAssertEqual(s1, 0, e1)
        let (s2, e2) = try txt2img(F.folder, b)
        XCTAssertEqual(s2, 0, e2)
        XCTAssertEqual(try ImageIO.loadRGB(path: a.path).pixels, try ImageIO.loadRGB(path: b.path).pixels)

        let (s3, e3) = try txt2img(F.file, dir.appendingPathComponent("c.png"))
        XCTAssertNotEqual(s3, 0)
        XCTAssertTrue(e3.contains("groups"), e3)
        let (s4, e4) = try txt2img(F.file, dir.appendingPathComponent("d.png"), ["--config", fixtures.appendingPathComponent("tiny-sd").path])
        XCTAssertNotEqual(s4, 0)
        XCTAssertTrue(e4.contains("SDXL"), e4)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("c.png").path))

        let single = dir.appendingPathComponent("converted.safetensors")
        let (s5, e5) = try run(["convert", F.folder.path, single.path])
        XCTAssertEqual(s5, 0, e5)
        let (s6, e6) = try txt2img(single, dir.appendingPathComponent("e.png"), ["--config", F.folder.path])
        XCTAssertEqual(s6, 0, e6)
        XCTAssertEqual(try ImageIO.loadRGB(path: dir.appendingPathComponent("e.png").path).pixels, try ImageIO.loadRGB(path: b.path).pixels)
    }
}
