// LoRAs in the server: `<lora:NAME:WEIGHT>` prompt tags resolved in --lora-dir give the image `ldm txt2img --lora-dir`
// gives (the LoRA fixtures of tools/fixtures/lora.py on the tiny SD pipeline), are unmerged after the job (the next
// plain request is the plain image again), /sdapi/v1/loras lists the folder, and bad tags are 422s naming the prompt.
import Foundation
import Imaging
import Server
import XCTest

final class LoRAServerTests: XCTestCase {
    var ldm: URL { Bundle.main.bundleURL.appendingPathComponent("ldm") }
    var fixtures: URL { RunningServer.repoRoot.appendingPathComponent("Tests/PipelinesTests/Fixtures") }

    func image(_ r: HTTPResult) throws -> LoadedImage {
        let s = try XCTUnwrap((r.object["images"] as? [String])?.first, r.text)
        return try ImageIO.decode([UInt8](try XCTUnwrap(Data(base64Encoded: s))))
    }

    func testPromptTagsMatchTheCLIAndAreUnmerged() throws {
        let sd = fixtures.appendingPathComponent("tiny-sd"), loras = fixtures.appendingPathComponent("lora")
        let srv = try startServer { $0.model = sd; $0.loraDir = loras }

        let listed = try XCTUnwrap(srv.request("GET", "/sdapi/v1/loras").json as? [[String: Any]])
        XCTAssertTrue(listed.contains { $0["name"] as? String == "kohya" && $0["path"] as? String == "kohya.safetensors" }, "\(listed)")
        XCTAssertFalse(listed.contains { ($0["path"] as? String ?? "/").hasPrefix("/") }, "server paths are not shown")

        let body: [String: Any] = ["prompt": "a cat<lora:kohya:0.7>", "seed": 70, "steps": 3, "sampler_name": "Euler a", "cfg_scale": 7.5,
                                   "width": 16, "height": 16]
        let plainBody = body.merging(["prompt": "a cat"]) { $1 }
        let plain = try image(srv.request("POST", "/sdapi/v1/txt2img", json: plainBody))
        let withLoRA = try image(srv.request("POST", "/sdapi/v1/txt2img", json: body))
        XCTAssertNotEqual(plain.image.pixels, withLoRA.image.pixels, "the LoRA changed nothing")
        let infotext = try XCTUnwrap(withLoRA.text("parameters"))
        XCTAssertTrue(infotext.hasPrefix("a cat<lora:kohya:0.7>"), infotext)
        XCTAssertTrue(infotext.contains("Lora hashes: \"kohya: f7ba08452bf9\"") || infotext.contains("Lora hashes: kohya: f7ba08452bf9"), infotext)
        let again = try image(srv.request("POST", "/sdapi/v1/txt2img", json: plainBody))
        XCTAssertEqual(again.image.pixels, plain.image.pixels, "the LoRA was not unmerged after its job")

        // The same image from the command line.
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ldm-serve-lora-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let out = dir.appendingPathComponent("cli.png")
        let p = Process()
        p.executableURL = ldm
        p.arguments = ["txt2img", "--model", sd.path, "--prompt", "a cat<lora:kohya:0.7>", "--lora-dir", loras.path, "--seed", "70",
                       "--steps", "3", "--sampler", "Euler a", "--cfg-scale", "7.5", "--width", "16", "--height", "16",
                       "--output", out.path, "--quiet"]
        p.arguments! += ["--precision", "f32"] // the server's precision (the CLI default, auto, is bf16 on native-bf16 CPUs)
        try p.run(); p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)
        XCTAssertEqual(try ImageIO.load(path: out.path).image.pixels, withLoRA.image.pixels, "API LoRA image differs from ldm txt2img --lora-dir")

        // Bad tags: 422 naming the prompt, no server path in the body, and the server keeps serving.
        for (prompt, words) in [("a <lora:../lora/kohya:1>", "plain name"), ("a <lora:absent:1>", "not found"),
                                ("a <lora:kohya:much>", "expected")] {
            let r = srv.request("POST", "/sdapi/v1/txt2img", json: body.merging(["prompt": prompt]) { $1 })
            XCTAssertEqual(r.status, 422, "\(prompt): \(r.text)")
            XCTAssertTrue(r.text.contains("prompt") && r.text.contains(words), "\(prompt): \(r.text)")
            XCTAssertFalse(r.text.contains(loras.path), r.text)
        }
        let after = try image(srv.request("POST", "/sdapi/v1/txt2img", json: plainBody))
        XCTAssertEqual(after.image.pixels, plain.image.pixels)
    }

    func testTagsWithoutLoRADirAreRefused() throws {
        let srv = try startServer { $0.model = self.fixtures.appendingPathComponent("tiny-sd") }
        let r = srv.request("POST", "/sdapi/v1/txt2img", json: ["prompt": "a cat <lora:kohya:1>", "steps": 1, "width": 16, "height": 16])
        XCTAssertEqual(r.status, 422, r.text)
        XCTAssertTrue(r.text.contains("--lora-dir"), r.text)
        XCTAssertEqual((srv.request("GET", "/sdapi/v1/loras").json as? [Any])?.count, 0)
    }
}
