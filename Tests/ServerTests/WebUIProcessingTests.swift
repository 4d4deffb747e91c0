// AUTOMATIC1111's image and latent operations around the sampler (mask blur, resize modes, inpainting overlay,
// latent mask, variation-seed slerp, latent upscale modes) against tools/fixtures/webui_processing.py, which computes
// them with OpenCV, Pillow and torch, the libraries the web UI calls.
import Foundation
import Imaging
@testable import Server
import TensorCore
import XCTest

final class WebUIProcessingTests: XCTestCase {
    static let fixture: [String: Any] = {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/webui_processing.json")
        guard let data = try? Data(contentsOf: url), let o = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return [:] }
        return o
    }()

    func bytes(_ a: Any?) -> [UInt8] { (a as? [Int] ?? []).map { UInt8($0) } }
    func floats(_ a: Any?) -> [Float] { (a as? [Double] ?? []).map { Float($0) } }
    func sourceMask() throws -> GrayImage {
        let m = try XCTUnwrap(Self.fixture["mask"] as? [String: Any])
        return try GrayImage(width: m["width"] as! Int, height: m["height"] as! Int, pixels: bytes(m["pixels"]))
    }
    func sourceImage() throws -> RGBImage {
        let m = try XCTUnwrap(Self.fixture["image"] as? [String: Any])
        return try RGBImage(width: m["width"] as! Int, height: m["height"] as! Int, pixels: bytes(m["pixels"]))
    }

    func testMaskBlurMatchesOpenCVGaussianBlur() throws {
        let mask = try sourceMask()
        let cases = try XCTUnwrap(Self.fixture["blur"] as? [[String: Any]])
        XCTAssertEqual(cases.count, 4)
        for c in cases {
            let r = c["radius"] as! Int
            XCTAssertEqual(WebUIImageOps.blurMask(mask, radius: r).pixels, bytes(c["pixels"]), "mask_blur \(r)")
        }
    }

    func testResizeModesMatchResizeImage() throws {
        let (img, mask) = (try sourceImage(), try sourceMask())
        let cases = try XCTUnwrap(Self.fixture["resize"] as? [[String: Any]])
        XCTAssertEqual(cases.count, 8)
        for c in cases {
            let (mode, w, h) = (c["mode"] as! Int, c["width"] as! Int, c["height"] as! Int)
            XCTAssertEqual(try WebUIImageOps.resize(img, mode: mode, width: w, height: h).pixels, bytes(c["rgb"]), "resize_mode \(mode) \(w)x\(h)")
            XCTAssertEqual(try WebUIImageOps.resize(mask, mode: mode, width: w, height: h).pixels, bytes(c["mask"]), "mask resize_mode \(mode) \(w)x\(h)")
        }
    }

    func testOverlayAndLatentMaskMatchPillow() throws {
        let (img, mask) = (try sourceImage(), try sourceMask())
        let o = try XCTUnwrap(Self.fixture["overlay"] as? [String: Any])
        let gen = try RGBImage(width: img.width, height: img.height, pixels: bytes(o["generated"]))
        let mfo = WebUIImageOps.overlayMask(WebUIImageOps.blurMask(mask, radius: 2))
        XCTAssertEqual(mfo.pixels, bytes(o["mask_for_overlay"]))
        XCTAssertEqual(WebUIImageOps.composite(original: img, generated: gen, overlayMask: mfo).pixels, bytes(o["expected"]))
        for c in try XCTUnwrap(Self.fixture["latent_mask"] as? [[String: Any]]) {
            let m = WebUIImageOps.blurMask(mask, radius: c["radius"] as! Int)
            XCTAssertEqual(try WebUIImageOps.latentMask(m, width: c["width"] as! Int, height: c["height"] as! Int), floats(c["mask"]))
        }
    }

    func testSubseedSlerpMatchesA1111() throws {
        for c in try XCTUnwrap(Self.fixture["slerp"] as? [[String: Any]]) {
            let shape = c["shape"] as! [Int], n = shape.reduce(1, *)
            let noise = TorchGenerator(seed: UInt64(c["seed"] as! Int), normalKernel: .avx2).normal(count: n)
            let sub = TorchGenerator(seed: UInt64(c["subseed"] as! Int), normalKernel: .avx2).normal(count: n)
            let got = WebUIImageOps.slerp(Float(c["strength"] as! Double), noise, sub, shape: shape)
            let want = floats(c["expected"])
            XCTAssertEqual(got.count, want.count)
            let err = zip(got, want).map { abs($0 - $1) }.max() ?? 1
            XCTAssertLessThan(err, 1e-5, "slerp seed \(c["seed"]!) subseed \(c["subseed"]!)")
        }
    }

    func testLatentUpscaleModesMatchTorchInterpolate() throws {
        let l = try XCTUnwrap(Self.fixture["latent"] as? [String: Any])
        let shape = l["shape"] as! [Int], x = floats(l["values"])
        let cases = try XCTUnwrap(l["cases"] as? [[String: Any]])
        XCTAssertEqual(cases.count, 24)
        for c in cases {
            let name = c["upscaler"] as! String
            let (mode, aa) = try XCTUnwrap(WebUIImageOps.latentUpscaleModes[name])
            let got = WebUIImageOps.interpolate(x, shape: shape, height: c["height"] as! Int, width: c["width"] as! Int, mode: mode, antialias: aa)
            let want = floats(c["expected"])
            XCTAssertEqual(got.count, want.count, name)
            let err = zip(got, want).map { abs($0 - $1) }.max() ?? 1
            XCTAssertLessThan(err, 1e-5, "\(name) to \(c["height"]!)x\(c["width"]!)")
        }
    }
}
