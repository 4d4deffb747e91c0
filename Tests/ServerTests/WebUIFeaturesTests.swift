// AUTOMATIC1111's img2img / inpainting / hires-fix / variation-seed fields over HTTP (modules/processing.py): img2img
// and inpainting images equal `ldm img2img` / `ldm inpaint` where the web UI adds nothing (with an ancestral sampler,
// so the order of random draws is checked too), resize modes 1 and 2 equal resize mode 0 of the image
// resize_image makes (itself checked against Pillow in WebUIProcessingTests), the overlay keeps the original outside
// the blurred mask, subseed_strength 1 gives the subseed's image, the hires fix makes the upscaled image in two
// passes, and bad values are 422s naming the field.
import Foundation
import Imaging
@testable import Server
import XCTest

final class WebUIFeaturesTests: XCTestCase {
    var ldm: URL { Bundle.main.bundleURL.appendingPathComponent("ldm") }

    func image(_ r: HTTPResult, _ i: Int = 0) throws -> LoadedImage {
        let s = try XCTUnwrap((r.object["images"] as? [String])?.dropFirst(i).first, r.text)
        return try ImageIO.decode([UInt8](try XCTUnwrap(Data(base64Encoded: s))))
    }
    func b64(_ img: RGBImage) throws -> String { Data(try PNGCodec.encode(img)).base64EncodedString() }
    func b64(_ img: GrayImage) throws -> String { Data(try PNGCodec.encode(img)).base64EncodedString() }

    /// A test picture: gradients and a bright square.
    func picture(_ w: Int, _ h: Int) throws -> RGBImage {
        var px = [UInt8](repeating: 0, count: w * h * 3)
        for y in 0..<h { for x in 0..<w {
            let i = 3 * (y * w + x)
            px[i] = UInt8(x * 255 / max(1, w - 1)); px[i + 1] = UInt8(y * 255 / max(1, h - 1)); px[i + 2] = (x / 8 + y / 8) % 2 == 0 ? 40 : 220
        } }
        return try RGBImage(width: w, height: h, pixels: px)
    }

    func runLDM(_ args: [String]) throws {
        let p = Process()
        p.executableURL = ldm
        // At --precision f32, the server's (default) precision: the images are compared with the server's.
        p.arguments = args + ["--quiet"] + (args.contains("--precision") ? [] : ["--precision", "f32"])
        try p.run(); p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, args.joined(separator: " "))
    }

    func testImg2ImgAndInpaintingMatchTheCLIWithAnAncestralSampler() throws {
        let srv = try startServer()
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ldm-webui-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let pic = try picture(32, 32)
        var mpx = [UInt8](repeating: 0, count: 32 * 32)
        for y in 8..<24 { for x in 16..<32 { mpx[y * 32 + x] = 255 } }
        let mask = try GrayImage(width: 32, height: 32, pixels: mpx)
        try Data(try PNGCodec.encode(pic)).write(to: dir.appendingPathComponent("init.png"))
        try Data(try PNGCodec.encode(mask)).write(to: dir.appendingPathComponent("mask.png"))
        let common = ["--model", RunningServer.shapes.path, "--prompt", "a red circle", "--init-image", dir.appendingPathComponent("init.png").path,
                      "--seed", "21", "--steps", "6", "--sampler", "Euler a", "--cfg-scale", "7", "--width", "32", "--height", "32"]
        try runLDM(["img2img"] + common + ["--strength", "0.5", "--output", dir.appendingPathComponent("i2i.png").path])
        try runLDM(["inpaint"] + common + ["--strength", "0.8", "--mask", dir.appendingPathComponent("mask.png").path,
                                           "--output", dir.appendingPathComponent("inp.png").path])
        let body: [String: Any] = ["prompt": "a red circle", "init_images": [try b64(pic)], "seed": 21, "steps": 6, "sampler_name": "Euler a",
                                   "width": 32, "height": 32]
        var b = body; b["denoising_strength"] = 0.5
        let i2i = srv.request("POST", "/sdapi/v1/img2img", json: b)
        XCTAssertEqual(i2i.status, 200, i2i.text)
        XCTAssertEqual(try image(i2i).image.pixels, try ImageIO.load(path: dir.appendingPathComponent("i2i.png").path).image.pixels,
                       "API img2img differs from ldm img2img")
        b = body; b["denoising_strength"] = 0.8; b["mask"] = try b64(mask); b["mask_blur"] = 0; b["inpainting_fill"] = 1
        let inp = srv.request("POST", "/sdapi/v1/img2img", json: b)
        XCTAssertEqual(inp.status, 200, inp.text)
        var expected = try ImageIO.load(path: dir.appendingPathComponent("inp.png").path).image
        for i in 0..<(32 * 32) where mpx[i] == 0 { for c in 0..<3 { expected.pixels[3 * i + c] = pic.pixels[3 * i + c] } }
        XCTAssertEqual(try image(inp).image.pixels, expected.pixels, "API inpainting differs from ldm inpaint + overlay")

        // mask_blur 4 (the default): the original stays wherever the doubled blurred mask is 0, and the infotext says so.
        b["mask_blur"] = nil
        let blurred = srv.request("POST", "/sdapi/v1/img2img", json: b)
        XCTAssertEqual(blurred.status, 200, blurred.text)
        let out = try image(blurred)
        let mfo = WebUIImageOps.overlayMask(WebUIImageOps.blurMask(mask, radius: 4))
        var kept = 0, soft = 0
        for i in 0..<(32 * 32) {
            if mfo.pixels[i] == 0 { kept += 1; XCTAssertEqual(Array(out.image.pixels[3 * i..<3 * i + 3]), Array(pic.pixels[3 * i..<3 * i + 3])) }
            if mfo.pixels[i] > 0, mfo.pixels[i] < 255 { soft += 1 }
        }
        XCTAssertGreaterThan(kept, 100); XCTAssertGreaterThan(soft, 50)
        XCTAssertNotEqual(out.image.pixels, try image(inp).image.pixels)
        XCTAssertTrue(out.text("parameters")?.contains("Mask blur: 4, Masked content: original") ?? false, out.text("parameters") ?? "")

        // inpainting_fill 2 (latent noise) and 3 (latent nothing) change the init latents under the mask only.
        var fills: [[UInt8]] = [try image(inp).image.pixels]
        for fill in [2, 3] {
            b["mask_blur"] = 0; b["inpainting_fill"] = fill
            let r = srv.request("POST", "/sdapi/v1/img2img", json: b)
            XCTAssertEqual(r.status, 200, r.text)
            let img = try image(r)
            XCTAssertTrue(img.text("parameters")?.contains(fill == 2 ? "Masked content: latent noise" : "Masked content: latent nothing") ?? false)
            for i in 0..<(32 * 32) where mpx[i] == 0 { XCTAssertEqual(img.image.pixels[3 * i], pic.pixels[3 * i]) }
            fills.append(img.image.pixels)
        }
        XCTAssertEqual(Set(fills).count, 3, "fills 1, 2 and 3 should give three different images")
    }

    func testResizeModesAndLatentUpscaleResize() throws {
        let srv = try startServer()
        let wide = try picture(48, 24)
        let base: [String: Any] = ["prompt": "a blue square", "seed": 4, "steps": 4, "denoising_strength": 0.5, "width": 32, "height": 32]
        for mode in [1, 2] {
            var b = base; b["init_images"] = [try b64(wide)]; b["resize_mode"] = mode
            let r = srv.request("POST", "/sdapi/v1/img2img", json: b)
            XCTAssertEqual(r.status, 200, r.text)
            // The same as resize mode 0 of the image resize_image(mode) makes (already 32x32, so Lanczos keeps it).
            var b0 = base; b0["init_images"] = [try b64(try WebUIImageOps.resize(wide, mode: mode, width: 32, height: 32))]
            let r0 = srv.request("POST", "/sdapi/v1/img2img", json: b0)
            XCTAssertEqual(try image(r).image.pixels, try image(r0).image.pixels, "resize_mode \(mode)")
            XCTAssertTrue(try image(r).text("parameters")?.contains(mode == 1 ? "Resize mode: Crop and resize" : "Resize mode: Resize and fill") ?? false)
        }
        // resize_mode 3: the 16x16 image is encoded at its size and its latents resized (bilinear) to 32x32.
        var b = base; b["init_images"] = [try b64(try picture(16, 16))]; b["resize_mode"] = 3
        let r3 = srv.request("POST", "/sdapi/v1/img2img", json: b)
        XCTAssertEqual(r3.status, 200, r3.text)
        let img3 = try image(r3)
        XCTAssertEqual([img3.image.width, img3.image.height], [32, 32])
        b["resize_mode"] = 0
        XCTAssertNotEqual(try image(srv.request("POST", "/sdapi/v1/img2img", json: b)).image.pixels, img3.image.pixels)
    }

    func testVariationSeedsSlerpTheSubseedNoise() throws {
        let srv = try startServer()
        let base: [String: Any] = ["prompt": "a green square", "steps": 3, "width": 32, "height": 32, "sampler_name": "Euler"]
        func gen(_ extra: [String: Any]) throws -> (LoadedImage, [String: Any]) {
            let r = srv.request("POST", "/sdapi/v1/txt2img", json: base.merging(extra) { $1 })
            XCTAssertEqual(r.status, 200, r.text)
            let info = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data((r.object["info"] as? String ?? "").utf8)) as? [String: Any])
            return (try image(r), info)
        }
        let (plain, _) = try gen(["seed": 10])
        let (zero, zinfo) = try gen(["seed": 10, "subseed": 77, "subseed_strength": 0])
        XCTAssertEqual(plain.image.pixels, zero.image.pixels)
        XCTAssertEqual(zinfo["subseed"] as? Int, 77)
        // Strength 1: slerp gives the subseed's noise exactly, and Euler draws nothing else: seed 77's image.
        let (full, _) = try gen(["seed": 10, "subseed": 77, "subseed_strength": 1])
        let (seed77, _) = try gen(["seed": 77])
        XCTAssertEqual(full.image.pixels, seed77.image.pixels)
        let (half, hinfo) = try gen(["seed": 10, "subseed": 77, "subseed_strength": 0.5, "batch_size": 2])
        XCTAssertNotEqual(half.image.pixels, plain.image.pixels); XCTAssertNotEqual(half.image.pixels, seed77.image.pixels)
        XCTAssertEqual(hinfo["all_subseeds"] as? [Int], [77, 78])
        XCTAssertEqual(hinfo["subseed_strength"] as? Double, 0.5)
        XCTAssertTrue(half.text("parameters")?.contains("Variation seed: 77, Variation seed strength: 0.5") ?? false, half.text("parameters") ?? "")
    }

    func testHiresFixRunsASecondPassAtTheUpscaledSize() throws {
        let srv = try startServer()
        let base: [String: Any] = ["prompt": "a red circle", "seed": 8, "steps": 4, "width": 32, "height": 24]
        let plain = srv.request("POST", "/sdapi/v1/txt2img", json: base)
        XCTAssertEqual(plain.status, 200, plain.text)
        var b = base; b["enable_hr"] = true; b["hr_scale"] = 2; b["denoising_strength"] = 0.5; b["hr_second_pass_steps"] = 4
        let hr = srv.request("POST", "/sdapi/v1/txt2img", json: b)
        XCTAssertEqual(hr.status, 200, hr.text)
        let img = try image(hr)
        XCTAssertEqual([img.image.width, img.image.height], [64, 48])
        let text = img.text("parameters") ?? ""
        XCTAssertTrue(text.contains("Size: 32x24") && text.contains("Denoising strength: 0.5, Hires upscale: 2.0, Hires steps: 4"), text)
        // The second pass starts from the upscaled first pass: its downscaled image stays close to the plain one.
        let small = try img.image.resized(width: 32, height: 24, filter: .box)
        let p = try image(plain).image
        let mean = zip(small.pixels, p.pixels).map { abs(Double($0) - Double($1)) }.reduce(0, +) / Double(p.pixels.count)
        XCTAssertLessThan(mean, 40, "hires result unrelated to the first pass")
        // Other upscalers and hr_resize: the image is resized, encoded again; the latents are cut to the asked size.
        b["hr_upscaler"] = "Lanczos"; b["hr_resize_x"] = 48; b["hr_resize_y"] = 48
        let r2 = srv.request("POST", "/sdapi/v1/txt2img", json: b)
        XCTAssertEqual(r2.status, 200, r2.text)
        let i2 = try image(r2)
        XCTAssertEqual([i2.image.width, i2.image.height], [48, 48])
        XCTAssertTrue(i2.text("parameters")?.contains("Hires resize: 48x48") ?? false)
        for up in ["Latent (bicubic antialiased)", "Latent (nearest-exact)"] {
            b["hr_upscaler"] = up; b["hr_resize_x"] = 0; b["hr_resize_y"] = 0; b["hr_scale"] = 1.5; b["height"] = 32
            let r = srv.request("POST", "/sdapi/v1/txt2img", json: b)
            XCTAssertEqual(r.status, 200, r.text)
            XCTAssertEqual([try image(r).image.width, try image(r).image.height], [48, 48], up)
            XCTAssertTrue(try image(r).text("parameters")?.contains("Hires upscaler: \(up)") ?? false)
        }
    }

    /// tools/fixtures/webui_hires.py: the same hires fix computed with diffusers (first pass, torch bilinear latent
    /// upscale, img2img on the latents with a fresh generator of the seed) on models/shapes.
    func testHiresFixMatchesTheDiffusersReference() throws {
        let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")
        let caseData = try Data(contentsOf: fixtures.appendingPathComponent("hires_reference.json"))
        var body = try XCTUnwrap(try JSONSerialization.jsonObject(with: caseData) as? [String: Any])
        body["enable_hr"] = true
        let reference = try ImageIO.load(path: fixtures.appendingPathComponent("hires_reference.png").path).image
        let srv = try startServer()
        let r = srv.request("POST", "/sdapi/v1/txt2img", json: body)
        XCTAssertEqual(r.status, 200, r.text)
        let out = try image(r).image
        XCTAssertEqual([out.width, out.height], [reference.width, reference.height])
        let diffs = zip(out.pixels, reference.pixels).map { abs(Int($0) - Int($1)) }
        let mean = Double(diffs.reduce(0, +)) / Double(max(1, diffs.count))
        print("hires vs diffusers: max \(diffs.max() ?? -1), mean \(mean)")
        // float32 kernels differ from torch's in summation order only (measured: max 1 level, mean 0.0003).
        XCTAssertLessThanOrEqual(diffs.max() ?? 255, 2)
        XCTAssertLessThan(mean, 0.05)
    }

    func testBadWebUIFieldsAre422sNamingTheField() throws {
        let srv = try startServer()
        let pic = try b64(try picture(32, 32))
        let mask = try b64(try GrayImage(width: 32, height: 32, pixels: [UInt8](repeating: 255, count: 1024)))
        let cases: [(String, [String: Any], String)] = [
            ("/sdapi/v1/txt2img", ["enable_hr": true, "hr_upscaler": "ESRGAN_4x"], "hr_upscaler"),
            ("/sdapi/v1/txt2img", ["enable_hr": true, "hr_scale": 100], "hr_scale"),
            ("/sdapi/v1/txt2img", ["enable_hr": true, "hr_scale": "two"], "hr_scale"),
            ("/sdapi/v1/txt2img", ["enable_hr": true, "hr_resize_x": 9000], "hr_resize_x"),
            ("/sdapi/v1/txt2img", ["enable_hr": true, "denoising_strength": 0.01, "steps": 5], "denoising_strength"),
            ("/sdapi/v1/txt2img", ["enable_hr": true, "hr_sampler_name": "Nope"], "hr_sampler_name"),
            ("/sdapi/v1/txt2img", ["subseed": -7, "subseed_strength": 0.5], "subseed"),
            ("/sdapi/v1/txt2img", ["subseed_strength": 1.5], "subseed_strength"),
            ("/sdapi/v1/img2img", ["init_images": [pic], "resize_mode": 4], "resize_mode"),
            ("/sdapi/v1/img2img", ["init_images": [pic], "resize_mode": 3, "mask": mask], "resize_mode"),
            ("/sdapi/v1/img2img", ["init_images": [pic], "mask": mask, "mask_blur": -1], "mask_blur"),
            ("/sdapi/v1/img2img", ["init_images": [pic], "mask": mask, "mask_blur": 4, "mask_blur_y": 2], "mask_blur_y"),
            ("/sdapi/v1/img2img", ["init_images": [pic], "mask": mask, "inpainting_fill": 7], "inpainting_fill"),
        ]
        for (path, body, field) in cases {
            let r = srv.request("POST", path, json: (["prompt": "x", "steps": 2, "width": 32, "height": 32] as [String: Any]).merging(body) { $1 })
            XCTAssertEqual(r.status, 422, "\(body): \(r.text)")
            XCTAssertEqual(r.object["error"] as? String, "invalid \(field)", "\(body): \(r.text)")
        }
        // Found when the job runs: a 2x2 image cannot be encoded at its own size (resize_mode 3).
        let tiny = try b64(try picture(2, 2))
        let r = srv.request("POST", "/sdapi/v1/img2img", json: ["prompt": "x", "steps": 2, "width": 32, "height": 32, "init_images": [tiny], "resize_mode": 3])
        XCTAssertEqual(r.status, 422, r.text)
        XCTAssertEqual(r.object["error"] as? String, "invalid init_images", r.text)
        XCTAssertEqual(srv.request("GET", "/sdapi/v1/options").status, 200)
    }
}
