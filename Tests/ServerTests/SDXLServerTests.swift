// SDXL models through the A1111 API: /sdapi/v1/img2img (the SDXL img2img conditioning, equal to the library's
// StableDiffusionPipeline.imageToImage for the same seed, strength and sampler), inpainting via mask, and the txt2img
// hires fix, on the tiny SDXL pipeline of tools/fixtures/sdxl.py.
import Foundation
import Imaging
import Pipelines
import TensorCore
import XCTest

final class SDXLServerTests: XCTestCase {
    static let sdxl = RunningServer.repoRoot.appendingPathComponent("Tests/PipelinesTests/Fixtures/sdxl/tiny-sdxl")
    static let initPNG = RunningServer.repoRoot.appendingPathComponent("Tests/PipelinesTests/Fixtures/init.png")

    func decodePNG(_ b64: Any?) throws -> LoadedImage {
        let s = try XCTUnwrap(b64 as? String)
        return try ImageIO.decode([UInt8](try XCTUnwrap(Data(base64Encoded: s))))
    }

    func testImg2ImgInpaintAndHiresFixRunSDXL() throws {
        let srv = try startServer { $0.model = Self.sdxl }
        let initB64 = try Data(contentsOf: Self.initPNG).base64EncodedString()
        let i2i = srv.request("POST", "/sdapi/v1/img2img", json: ["prompt": "a cat", "init_images": [initB64], "seed": 3, "steps": 4,
                                                                   "sampler_name": "Euler", "cfg_scale": 5, "denoising_strength": 0.6,
                                                                   "width": 16, "height": 16])
        XCTAssertEqual(i2i.status, 200, i2i.text)
        let got = try decodePNG((i2i.object["images"] as? [String])?.first)
        let pipe = try StableDiffusionPipeline(bundle: ModelBundle.load(Self.sdxl))
        let lib = try pipe.imageToImage(PromptOptions(prompt: "a cat", guidanceScale: 5, width: 16, height: 16), SamplingOptions(sampler: "euler", steps: 4),
                                        image: ImageIO.loadRGB(path: Self.initPNG.path), strength: 0.6, generator: TorchGenerator(seed: 3))
        XCTAssertEqual(got.image.pixels, lib.images.first?.pixels)

        var px = [UInt8](repeating: 0, count: 16 * 16)
        for y in 4..<12 { for x in 4..<12 { px[y * 16 + x] = 255 } }
        let mask = try GrayImage(width: 16, height: 16, pixels: px)
        let inpaint = srv.request("POST", "/sdapi/v1/img2img", json: ["prompt": "a dog", "init_images": [initB64], "seed": 9, "steps": 3,
                                                                       "denoising_strength": 1, "width": 16, "height": 16, "mask_blur": 0,
                                                                       "mask": Data(try PNGCodec.encode(mask)).base64EncodedString()])
        XCTAssertEqual(inpaint.status, 200, inpaint.text)
        let hires = srv.request("POST", "/sdapi/v1/txt2img", json: ["prompt": "a cat", "seed": 1, "steps": 2, "width": 16, "height": 16,
                                                                     "enable_hr": true, "hr_scale": 2, "denoising_strength": 0.5])
        XCTAssertEqual(hires.status, 200, hires.text)
        XCTAssertEqual(try decodePNG((hires.object["images"] as? [String])?.first).image.width, 32)
    }
}
