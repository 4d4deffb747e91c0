// The /sdapi/v1 routes over real HTTP against a server started in the test: AUTOMATIC1111's response shapes, images
// bit-identical to `ldm txt2img` with the same model, prompt, seed and sampler, seeds seed + i, img2img/inpainting,
// options, png-info, and a 4xx JSON error naming the field for every kind of bad input.
import Foundation
import Imaging
import Server
import XCTest

final class A1111APITests: XCTestCase {
    var ldm: URL { Bundle.main.bundleURL.appendingPathComponent("ldm") }

    func decodePNG(_ b64: Any?) throws -> LoadedImage {
        let s = try XCTUnwrap(b64 as? String)
        return try ImageIO.decode([UInt8](try XCTUnwrap(Data(base64Encoded: s))))
    }

    func testTxt2ImgIsBitIdenticalToTheCLIWithA1111Shape() throws {
        let srv = try startServer()
        let body: [String: Any] = ["prompt": "a large red circle", "negative_prompt": "blue", "seed": 1234, "steps": 3,
                                   "sampler_name": "Euler a", "cfg_scale": 4, "width": 32, "height": 32, "batch_size": 2]
        let r = srv.request("POST", "/sdapi/v1/txt2img", json: body)
        XCTAssertEqual(r.status, 200, r.text)
        let images = try XCTUnwrap(r.object["images"] as? [String])
        XCTAssertEqual(images.count, 2)
        let params = try XCTUnwrap(r.object["parameters"] as? [String: Any])
        XCTAssertEqual(params["prompt"] as? String, "a large red circle")
        let info = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(try XCTUnwrap(r.object["info"] as? String).utf8)) as? [String: Any])
        XCTAssertEqual(info["seed"] as? Int, 1234)
        XCTAssertEqual(info["all_seeds"] as? [Int], [1234, 1235])
        XCTAssertEqual(info["sampler_name"] as? String, "Euler a")
        XCTAssertEqual(info["sd_model_name"] as? String, "shapes")
        XCTAssertEqual(info["width"] as? Int, 32)
        let infotexts = try XCTUnwrap(info["infotexts"] as? [String])
        XCTAssertEqual(infotexts.count, 2)
        XCTAssertTrue(infotexts[1].contains("Seed: 1235"), infotexts[1])

        let second = try decodePNG(images[1])
        let chunk = try XCTUnwrap(second.text("parameters"))
        XCTAssertEqual(chunk, infotexts[1])
        let g = GenerationParameters(parsing: chunk)
        XCTAssertEqual(g.seed, 1235); XCTAssertEqual(g.steps, 3); XCTAssertEqual(g.sampler, "Euler a"); XCTAssertEqual(g.negativePrompt, "blue")

        // The same image from the command line: seed + 1 for the second image of the batch.
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ldm-serve-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let out = dir.appendingPathComponent("cli.png")
        XCTAssertTrue(FileManager.default.isExecutableFile(atPath: ldm.path), "the ldm executable is not built at \(ldm.path)")
        let p = Process()
        p.executableURL = ldm
        p.arguments = ["txt2img", "--model", RunningServer.shapes.path, "--prompt", "a large red circle", "--negative-prompt", "blue",
                       "--seed", "1235", "--steps", "3", "--sampler", "Euler a", "--cfg-scale", "4", "--width", "32", "--height", "32",
                       "--output", out.path, "--quiet"]
        p.arguments! += ["--precision", "f32"] // the server's precision (the CLI default, auto, is bf16 on native-bf16 CPUs)
        try p.run(); p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)
        let cli = try ImageIO.load(path: out.path)
        XCTAssertEqual(cli.image.width, 32)
        XCTAssertEqual(second.image.pixels, cli.image.pixels, "API image differs from ldm txt2img with the same seed")
        // The CLI's infotext differs only by the batch fields.
        XCTAssertEqual(cli.text("parameters"), chunk.replacingOccurrences(of: ", Batch size: 2, Batch pos: 1", with: ""))

        // send_images false: no images, same info shape.
        let r2 = srv.request("POST", "/sdapi/v1/txt2img", json: ["prompt": "x", "seed": 5, "steps": 1, "width": 32, "height": 32, "send_images": false])
        XCTAssertEqual(r2.status, 200, r2.text)
        XCTAssertEqual((r2.object["images"] as? [Any])?.count, 0)
        XCTAssertNotNil(r2.object["info"] as? String)
    }

    func testRandomSeedNVSourceClipSkipAndImg2ImgInpainting() throws {
        let srv = try startServer()
        let r = srv.request("POST", "/sdapi/v1/txt2img", json: ["prompt": "a green square", "seed": -1, "steps": 2, "width": 32, "height": 32,
                                                                 "override_settings": ["randn_source": "NV", "CLIP_stop_at_last_layers": 2]])
        XCTAssertEqual(r.status, 200, r.text)
        let info = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data((r.object["info"] as? String ?? "").utf8)) as? [String: Any])
        let seed = try XCTUnwrap(info["seed"] as? Int)
        XCTAssertTrue((0..<4_294_967_294).contains(seed))
        let text = try XCTUnwrap((info["infotexts"] as? [String])?.first)
        XCTAssertTrue(text.contains("RNG: NV"), text)
        XCTAssertTrue(text.contains("Clip skip: 2"), text)
        let initB64 = try XCTUnwrap((r.object["images"] as? [String])?.first)

        // img2img from the generated image; the mask must match its size.
        let i2i = srv.request("POST", "/sdapi/v1/img2img", json: ["prompt": "a green square", "init_images": [initB64], "seed": 3, "steps": 4,
                                                                   "denoising_strength": 0.5, "width": 32, "height": 32])
        XCTAssertEqual(i2i.status, 200, i2i.text)
        XCTAssertTrue(try decodePNG((i2i.object["images"] as? [String])?.first).text("parameters")?.contains("Denoising strength: 0.5") ?? false)
        let small = try GrayImage(width: 16, height: 16, pixels: [UInt8](repeating: 255, count: 256))
        let bad = srv.request("POST", "/sdapi/v1/img2img", json: ["prompt": "x", "init_images": [initB64],
                                                                   "mask": Data(try PNGCodec.encode(small)).base64EncodedString()])
        XCTAssertEqual(bad.status, 422)
        XCTAssertEqual(bad.object["error"] as? String, "invalid mask")
        var px = [UInt8](repeating: 0, count: 32 * 32)
        for y in 8..<24 { for x in 8..<24 { px[y * 32 + x] = 255 } }
        let mask = try GrayImage(width: 32, height: 32, pixels: px)
        let inpaint = srv.request("POST", "/sdapi/v1/img2img", json: ["prompt": "a red circle", "init_images": [initB64], "seed": 9, "steps": 4,
                                                                       "denoising_strength": 1, "width": 32, "height": 32,
                                                                       "mask": "data:image/png;base64," + Data(try PNGCodec.encode(mask)).base64EncodedString(),
                                                                       "inpainting_fill": 1, "mask_blur": 0])
        XCTAssertEqual(inpaint.status, 200, inpaint.text)
        let out = try decodePNG((inpaint.object["images"] as? [String])?.first)
        // The same inpainting from `ldm inpaint` (inpainting_fill 1 = the original image under the mask, as the CLI).
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ldm-serve-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let initURL = dir.appendingPathComponent("init.png"), maskURL = dir.appendingPathComponent("mask.png"), outURL = dir.appendingPathComponent("out.png")
        try Data(base64Encoded: initB64)!.write(to: initURL)
        try Data(try PNGCodec.encode(mask)).write(to: maskURL)
        let p = Process()
        p.executableURL = ldm
        p.arguments = ["inpaint", "--model", RunningServer.shapes.path, "--prompt", "a red circle", "--init-image", initURL.path, "--mask", maskURL.path,
                       "--strength", "1", "--seed", "9", "--steps", "4", "--sampler", "Euler", "--cfg-scale", "7", "--width", "32", "--height", "32",
                       "--output", outURL.path, "--quiet"]
        p.arguments! += ["--precision", "f32"] // the server's precision (the CLI default, auto, is bf16 on native-bf16 CPUs)
        try p.run(); p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)
        // A1111's apply_overlay: outside the (unblurred) mask the original pixels, inside it the sampler's image.
        let cli = try ImageIO.load(path: outURL.path).image, original = try decodePNG(initB64).image
        var expected = cli
        for i in 0..<(32 * 32) where px[i] == 0 { for c in 0..<3 { expected.pixels[3 * i + c] = original.pixels[3 * i + c] } }
        XCTAssertEqual(expected.pixels, out.image.pixels, "API inpainting differs from ldm inpaint + the A1111 overlay")
        XCTAssertNotEqual(cli.pixels, original.pixels)
    }

    func testOptionsModelsSamplersPNGInfoMemory() throws {
        let srv = try startServer()
        let o = srv.request("GET", "/sdapi/v1/options")
        XCTAssertEqual(o.status, 200)
        XCTAssertEqual(o.object["sd_model_checkpoint"] as? String, "shapes")
        XCTAssertEqual(srv.request("POST", "/sdapi/v1/options", json: ["CLIP_stop_at_last_layers": 2, "my_key": "kept"]).status, 200)
        let o2 = srv.request("GET", "/sdapi/v1/options").object
        XCTAssertEqual(o2["CLIP_stop_at_last_layers"] as? Int, 2)
        XCTAssertEqual(o2["my_key"] as? String, "kept")
        let badModel = srv.request("POST", "/sdapi/v1/options", json: ["sd_model_checkpoint": "nope", "CLIP_stop_at_last_layers": 1])
        XCTAssertEqual(badModel.status, 422)
        XCTAssertEqual(srv.request("GET", "/sdapi/v1/options").object["CLIP_stop_at_last_layers"] as? Int, 2, "a rejected update changes nothing")

        let models = try XCTUnwrap(srv.request("GET", "/sdapi/v1/sd-models").json as? [[String: Any]])
        XCTAssertEqual(models.map { $0["model_name"] as? String }, ["shapes"])
        XCTAssertFalse(models.description.contains(RunningServer.repoRoot.path), "no server paths in sd-models")
        let samplers = try XCTUnwrap(srv.request("GET", "/sdapi/v1/samplers").json as? [[String: Any]])
        XCTAssertTrue(samplers.contains { $0["name"] as? String == "DPM++ 2M" })
        XCTAssertTrue(samplers.contains { $0["name"] as? String == "Euler a" })
        let schedulers = try XCTUnwrap(srv.request("GET", "/sdapi/v1/schedulers").json as? [[String: Any]])
        XCTAssertTrue(schedulers.contains { $0["label"] as? String == "Karras" })
        XCTAssertEqual(srv.request("POST", "/sdapi/v1/refresh-checkpoints").status, 200)
        let mem = srv.request("GET", "/sdapi/v1/memory").object
        XCTAssertGreaterThan(((mem["ram"] as? [String: Any])?["total"] as? Int) ?? 0, 0)

        let params = GenerationParameters(prompt: "a cat", negativePrompt: "dog", steps: 20, sampler: "DPM++ 2M", cfgScale: 7, seed: 42,
                                          width: 64, height: 64, model: "shapes")
        let png = try PNGCodec.encode(try RGBImage(width: 4, height: 4), text: [params.pngTextChunk])
        let info = srv.request("POST", "/sdapi/v1/png-info", json: ["image": Data(png).base64EncodedString()])
        XCTAssertEqual(info.status, 200, info.text)
        XCTAssertEqual(info.object["info"] as? String, params.text)
        let parsed = try XCTUnwrap(info.object["parameters"] as? [String: Any])
        XCTAssertEqual(parsed["Seed"] as? String, "42")
        XCTAssertEqual(parsed["Prompt"] as? String, "a cat")
    }

    func testBadInputIsA4xxNamingTheFieldAndTheServerKeepsServing() throws {
        let srv = try startServer { $0.maxBodyBytes = 1 << 20 }
        func expect(_ path: String, _ body: Any?, raw: Data? = nil, status: Int, field: String, file: StaticString = #filePath, line: UInt = #line) {
            let r = srv.request("POST", path, json: body, raw: raw)
            XCTAssertEqual(r.status, status, r.text, file: file, line: line)
            XCTAssertNotNil(r.object["error"] as? String, r.text, file: file, line: line)
            let detail = (r.object["detail"] as? String) ?? ""
            XCTAssertTrue(((r.object["error"] as? String) ?? "").contains(field) || detail.contains(field), "\(field): \(r.text)", file: file, line: line)
            XCTAssertFalse(r.text.contains(RunningServer.repoRoot.path), "server path in \(r.text)", file: file, line: line)
        }
        let t = "/sdapi/v1/txt2img"
        expect(t, nil, raw: Data("{\"prompt\": ".utf8), status: 400, field: "JSON")
        expect(t, nil, raw: Data("[1, 2]".utf8), status: 422, field: "body")
        expect(t, ["prompt": 5], status: 422, field: "prompt")
        expect(t, ["steps": "ten"], status: 422, field: "steps")
        expect(t, ["steps": 0], status: 422, field: "steps")
        expect(t, ["steps": 10000], status: 422, field: "steps")
        expect(t, ["width": 100], status: 422, field: "width")
        expect(t, ["height": -8], status: 422, field: "height")
        expect(t, ["cfg_scale": "high"], status: 422, field: "cfg_scale")
        expect(t, ["sampler_name": "Magic"], status: 422, field: "sampler_name")
        expect(t, ["scheduler": "Karras", "sampler_name": "Euler"], status: 422, field: "scheduler")
        expect(t, ["seed": -5], status: 422, field: "seed")
        expect(t, ["send_images": "yes"], status: 422, field: "send_images")
        expect(t, ["override_settings": ["sd_model_checkpoint": "missing-model"]], status: 422, field: "sd_model_checkpoint")
        expect(t, ["override_settings": ["sd_model_checkpoint": "../../etc/passwd"]], status: 403, field: "sd_model_checkpoint")
        expect(t, ["override_settings": ["randn_source": "GPU"]], status: 422, field: "randn_source")
        expect(t, ["override_settings": "CPU"], status: 422, field: "override_settings")
        let i = "/sdapi/v1/img2img"
        expect(i, ["prompt": "x"], status: 422, field: "init_images")
        expect(i, ["init_images": ["not base64 !!"]], status: 422, field: "init_images")
        expect(i, ["init_images": [Data("GIF89a....".utf8).base64EncodedString()]], status: 422, field: "init_images")
        // A PNG header claiming 100000 x 100000 pixels is refused before decoding.
        var huge: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13] + Array("IHDR".utf8)
        huge += [0, 1, 0x86, 0xA0, 0, 1, 0x86, 0xA0, 8, 2, 0, 0, 0, 0, 0, 0, 0]
        expect(i, ["init_images": [Data(huge).base64EncodedString()]], status: 422, field: "init_images")
        expect(i, ["init_images": [Data(try PNGCodec.encode(try RGBImage(width: 8, height: 8))).base64EncodedString()], "denoising_strength": 2],
               status: 422, field: "denoising_strength")
        // Body above the limit: 413.
        let big = Data(("{\"prompt\": \"" + String(repeating: "a", count: 2 << 20) + "\"}").utf8)
        expect(t, nil, raw: big, status: 413, field: "request")
        expect("/sdapi/v1/png-info", ["image": "%%%"], status: 422, field: "image")
        expect("/sdapi/v1/options", ["CLIP_stop_at_last_layers": 99], status: 422, field: "CLIP_stop_at_last_layers")
        let nf = srv.request("GET", "/sdapi/v1/nothing-here")
        XCTAssertEqual(nf.status, 404)
        XCTAssertNotNil(nf.object["detail"])
        // Still serving.
        XCTAssertEqual(srv.request("GET", "/sdapi/v1/options").status, 200)
        let ok = srv.request("POST", t, json: ["prompt": "a circle", "seed": 1, "steps": 1, "width": 32, "height": 32])
        XCTAssertEqual(ok.status, 200, ok.text)
    }

    func testBasicAuthProtectsEveryRoute() throws {
        let srv = try startServer { $0.credentials = [("alice", "s3cret"), ("bob", "hunter2")] }
        for path in ["/", "/sdapi/v1/options", "/openapi.json", "/ldm/v1/jobs/x"] {
            let r = srv.request("GET", path)
            XCTAssertEqual(r.status, 401, path)
            XCTAssertTrue(r.headers["www-authenticate"]?.hasPrefix("Basic") ?? false, path)
            XCTAssertEqual(srv.request("GET", path, auth: ("alice", "wrong")).status, 401, path)
            XCTAssertEqual(srv.request("GET", path, auth: ("alice", "s3cret!")).status, 401, path)
        }
        XCTAssertEqual(srv.request("POST", "/sdapi/v1/txt2img", json: ["prompt": "x"]).status, 401)
        XCTAssertEqual(srv.request("GET", "/", auth: ("alice", "s3cret")).status, 200)
        XCTAssertEqual(srv.request("GET", "/sdapi/v1/options", auth: ("bob", "hunter2")).status, 200)
        XCTAssertEqual(srv.request("GET", "/sdapi/v1/options", auth: ("bob", "s3cret")).status, 401)
        XCTAssertThrowsError(try ServerConfig.parseAuth("nocolon"))
        XCTAssertEqual(try ServerConfig.parseAuth("a:b:c,d:e").map { "\($0.0)=\($0.1)" }, ["a=b:c", "d=e"])
    }
}
