// The SDXL flags of the generation commands through the built `ldm` (txt2img --refiner / --refiner-switch, the size
// and aesthetic-score conditioning flags of txt2img, img2img and inpaint, --emphasis), on the tiny SDXL fixtures of
// tools/fixtures/sdxl.py and sdxl_pipelines.py: the images equal the library's for the same seed and options (whose
// parity with diffusers SDXLPipelinesTests checks), the infotext records the flags, bad values fail with a message.
import Foundation
import Imaging
import Pipelines
import TensorCore
import XCTest

final class SDXLCLITests: LDMCommandTestCase {
    let base = fixtures.appendingPathComponent("sdxl/tiny-sdxl").path
    let refiner = fixtures.appendingPathComponent("sdxl-pipelines/tiny-sdxl-refiner").path
    let inpainting = fixtures.appendingPathComponent("sdxl-pipelines/tiny-sdxl-inpaint").path
    let initImage = fixtures.appendingPathComponent("init.png").path
    let mask = fixtures.appendingPathComponent("mask.png").path

    func pixels(_ url: URL) throws -> [UInt8] { try ImageIO.loadRGB(path: url.path).pixels }

    func testTxt2ImgWithRefinerEqualsTheLibraryHandoff() throws {
        let out = try tempDir().appendingPathComponent("r.png")
        let (status, err) = try run(["txt2img", "--model", base, "--refiner", refiner, "--refiner-switch", "0.7", "--prompt", "a cat",
                                     "--steps", "6", "--sampler", "euler-a", "--cfg-scale", "6", "--seed", "31", "--width", "16",
                                     "--height", "16", "--original-size", "24x32", "--crop-top", "2", "--aesthetic-score", "7",
                                     "--output", out.path, "--quiet"])
        XCTAssertEqual(status, 0, err)
        var p = PromptOptions(prompt: "a cat", guidanceScale: 6, width: 16, height: 16)
        p.sizeConditioning.originalSize = [32, 24]
        p.sizeConditioning.cropsCoordsTopLeft = [2, 0]
        p.sizeConditioning.aestheticScore = 7
        let basePipe = try StableDiffusionPipeline(bundle: ModelBundle.load(URL(fileURLWithPath: base)))
        let refinerPipe = try StableDiffusionPipeline(bundle: ModelBundle.load(URL(fileURLWithPath: refiner)))
        let r = try basePipe.textToImage(p, SamplingOptions(sampler: "euler-a", steps: 6), refiner: refinerPipe, switchAt: 0.7,
                                         generator: TorchGenerator(seed: 31))
        XCTAssertEqual(try pixels(out), r.images.first?.pixels)
        let params = try parameters(out)
        XCTAssertEqual(params.extraValue("Refiner"), "tiny-sdxl-refiner")
        XCTAssertEqual(params.extraValue("Refiner switch at"), "0.7")
        XCTAssertEqual(params.extraValue("Original size"), "24x32")
        XCTAssertEqual(params.extraValue("Crop top-left"), "2,0")
        // without the size flags the image differs (the conditioning reaches the UNet)
        let plain = try tempDir().appendingPathComponent("p.png")
        let (s2, e2) = try run(["txt2img", "--model", base, "--refiner", refiner, "--refiner-switch", "0.7", "--prompt", "a cat",
                                "--steps", "6", "--sampler", "euler-a", "--cfg-scale", "6", "--seed", "31", "--width", "16",
                                "--height", "16", "--output", plain.path, "--quiet"])
        XCTAssertEqual(s2, 0, e2)
        XCTAssertNotEqual(try pixels(plain), try pixels(out))
    }

    func testImg2ImgOnTheRefinerAndInpaintOnTheNineChannelModel() throws {
        let dir = try tempDir()
        let a = dir.appendingPathComponent("a.png"), b = dir.appendingPathComponent("b.png")
        let (s1, e1) = try run(["img2img", "--model", refiner, "--init-image", initImage, "--strength", "0.8", "--prompt", "the dog",
                                "--negative-prompt", "a cat", "--steps", "5", "--sampler", "ddim", "--cfg-scale", "7", "--seed", "13",
                                "--aesthetic-score", "7.5", "--negative-aesthetic-score", "1.5", "--original-size", "64x64",
                                "--negative-original-size", "24x24", "--output", a.path, "--quiet"])
        XCTAssertEqual(s1, 0, e1)
        var p = PromptOptions(prompt: "the dog", negativePrompt: "a cat", guidanceScale: 7)
        p.sizeConditioning.aestheticScore = 7.5
        p.sizeConditioning.negativeAestheticScore = 1.5
        p.sizeConditioning.originalSize = [64, 64]
        p.sizeConditioning.negativeOriginalSize = [24, 24]
        let image = try ImageIO.loadRGB(path: initImage)
        let r = try StableDiffusionPipeline(bundle: ModelBundle.load(URL(fileURLWithPath: refiner)))
            .imageToImage(p, SamplingOptions(sampler: "ddim", steps: 5), image: image, strength: 0.8, generator: TorchGenerator(seed: 13))
        XCTAssertEqual(try pixels(a), r.images.first?.pixels)
        XCTAssertEqual(try parameters(a).extraValue("Aesthetic score"), "7.5")

        let (s2, e2) = try run(["inpaint", "--model", inpainting, "--init-image", initImage, "--mask", mask, "--prompt", "the dog",
                                "--steps", "3", "--sampler", "ddim", "--cfg-scale", "5", "--seed", "23", "--target-size", "32x32",
                                "--output", b.path, "--quiet"])
        XCTAssertEqual(s2, 0, e2)
        var q = PromptOptions(prompt: "the dog", guidanceScale: 5)
        q.sizeConditioning.targetSize = [32, 32]
        let r2 = try StableDiffusionPipeline(bundle: ModelBundle.load(URL(fileURLWithPath: inpainting)))
            .inpaint(q, SamplingOptions(sampler: "ddim", steps: 3), image: image, mask: ImageIO.loadMask(path: mask), strength: 1,
                     generator: TorchGenerator(seed: 23))
        XCTAssertEqual(try pixels(b), r2.images.first?.pixels)
    }

    func testEmphasisRunsOnSDXL() throws {
        let out = try tempDir().appendingPathComponent("e.png")
        let (status, err) = try run(["txt2img", "--model", base, "--prompt", "a (red:1.3) cat", "--emphasis", "original", "--steps", "2",
                                     "--seed", "1", "--width", "16", "--height", "16", "--output", out.path, "--quiet"])
        XCTAssertEqual(status, 0, err)
    }

    func testBadSDXLFlagsFailWithAMessage() throws {
        let dir = try tempDir()
        let out = dir.appendingPathComponent("x.png")
        let common = ["--prompt", "a cat", "--steps", "2", "--seed", "1", "--output", out.path, "--quiet"]
        let sd = fixtures.appendingPathComponent("tiny-sd").path
        let cases: [([String], String)] = [
            (["txt2img", "--model", base, "--refiner", refiner, "--refiner-switch", "1.5"], "--refiner-switch must be in (0, 1)"),
            (["txt2img", "--model", base, "--refiner-switch", "0.5"], "--refiner-switch needs --refiner"),
            (["txt2img", "--model", sd, "--refiner", refiner], "--refiner needs an SDXL base --model"),
            (["txt2img", "--model", base, "--refiner", sd], "not an SDXL refiner"),
            (["txt2img", "--model", base, "--refiner", dir.appendingPathComponent("missing").path], "missing"),
            (["txt2img", "--model", base, "--original-size", "0x16"], "--original-size must be WIDTHxHEIGHT"),
            (["txt2img", "--model", base, "--target-size", "16"], "--target-size must be WIDTHxHEIGHT"),
            (["txt2img", "--model", base, "--crop-top=-1"], "--crop-top / --crop-left"),
            (["txt2img", "--model", base, "--aesthetic-score", "nan"], "--aesthetic-score must be a finite number"),
            (["txt2img", "--model", sd, "--original-size", "16x16"], "is not an SDXL model"),
            (["txt2img", "--model", refiner], "refiner"),
        ]
        for (args, message) in cases {
            let (status, err) = try run(args + common)
            XCTAssertNotEqual(status, 0, args.joined(separator: " "))
            XCTAssertTrue(err.contains(message), "\(args.joined(separator: " ")): \(err)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: out.path))
        }
    }
}
