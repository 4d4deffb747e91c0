// End-to-end parity with diffusers 0.42 (tools/fixtures/pipelines.py): tiny random-weight StableDiffusion / Img2Img /
// Inpaint (4-channel) and LDMPipeline models saved with save_pretrained; diffusers' output_type="np" images for fixed
// seeds, quantised as numpy_to_pil does, must match ours at PSNR >= 45 dB on the 8-bit images.
import Checkpoints
import Foundation
import Imaging
import Pipelines
import Autoencoders
import TensorCore
import UNetModels
import XCTest

let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")

struct PipelineCase: Decodable {
    let name: String, kind: String, shape: [Int]
    let sampler: String?, prompt: String?, negative_prompt: String?
    let steps: Int, seed: UInt64, width: Int, height: Int, batch: Int
    let cfg: Double?, strength: Double?, eta: Double?
}

enum Shared {
    static let sd: Result<ModelBundle, Error> = Result { try ModelBundle.load(fixtures.appendingPathComponent("tiny-sd")) }
    static let ldm: Result<ModelBundle, Error> = Result { try ModelBundle.load(fixtures.appendingPathComponent("tiny-ldm")) }
    static let cases: [PipelineCase] = (try? JSONDecoder().decode([PipelineCase].self,
                                         from: Data(contentsOf: fixtures.appendingPathComponent("cases.json")))) ?? []
    static let outputs: [String: TensorRecord] = (try? CheckpointFile.open(fixtures.appendingPathComponent("outputs.safetensors")).tensors) ?? [:]
}

/// PSNR in dB between two 8-bit images (inf when equal).
func psnr(_ a: [UInt8], _ b: [UInt8]) -> Double {
    precondition(a.count == b.count)
    var se = 0.0
    for (x, y) in zip(a, b) { let d = Double(x) - Double(y); se += d * d }
    let mse = se / Double(a.count)
    return mse == 0 ? .infinity : 10 * log10(255 * 255 / mse)
}

final class PipelineParityTests: XCTestCase {
    func sdPipe() throws -> StableDiffusionPipeline { try StableDiffusionPipeline(bundle: Shared.sd.get()) }

    /// diffusers' float images (B, H, W, 3) in [0, 1] -> the uint8 pixels numpy_to_pil makes.
    func reference(_ name: String) throws -> [UInt8] {
        let r = try XCTUnwrap(Shared.outputs[name], "fixture \(name) missing")
        return try r.floats().map { UInt8((min(max($0, 0), 1) * 255).rounded(.toNearestOrEven)) }
    }

    func check(_ c: PipelineCase, _ result: GenerationResult, file: StaticString = #filePath, line: UInt = #line) throws {
        XCTAssertEqual(result.images.count, c.batch, file: file, line: line)
        XCTAssertEqual(result.images.first?.width, c.width, file: file, line: line)
        XCTAssertEqual(result.images.first?.height, c.height, file: file, line: line)
        let ours = result.images.flatMap(\.pixels)
        let ref = try reference(c.name)
        XCTAssertEqual(ours.count, ref.count, file: file, line: line)
        guard ours.count == ref.count else { return }
        let p = psnr(ours, ref)
        print("PSNR \(c.name): \(p) dB")
        XCTAssertGreaterThanOrEqual(p, 45, "\(c.name)", file: file, line: line)
    }

    func cases(_ kind: String) -> [PipelineCase] { Shared.cases.filter { $0.kind == kind } }

    func sampling(_ c: PipelineCase) -> SamplingOptions { SamplingOptions(sampler: c.sampler, steps: c.steps, eta: c.eta ?? 0, batchSize: c.batch) }

    func prompt(_ c: PipelineCase) -> PromptOptions {
        PromptOptions(prompt: c.prompt ?? "", negativePrompt: c.negative_prompt ?? "", guidanceScale: c.cfg ?? 7.5,
                      width: c.width, height: c.height)
    }

    func testTokenizerMatchesTransformers() throws {
        let tokens = try JSONDecoder().decode([String: [Int]].self, from: Data(contentsOf: fixtures.appendingPathComponent("tokens.json")))
        let tok = try XCTUnwrap(try Shared.sd.get().tokenizer)
        for (text, ids) in tokens { XCTAssertEqual(tok(text, maxLength: 77), ids, text) }
    }

    func testTextToImage() throws {
        let pipe = try sdPipe()
        XCTAssertEqual(pipe.bundle.defaultImageSize, 16)
        let all = cases("txt2img")
        XCTAssertEqual(all.count, 11)
        for c in all {
            let r = try pipe.textToImage(prompt(c), sampling(c), generator: TorchGenerator(seed: c.seed))
            try check(c, r)
        }
    }

    func testImageToImage() throws {
        let pipe = try sdPipe()
        let image = try ImageIO.loadRGB(path: fixtures.appendingPathComponent("init.png").path)
        let all = cases("img2img")
        XCTAssertEqual(all.count, 2)
        for c in all {
            var p = prompt(c); p.width = nil; p.height = nil
            let r = try pipe.imageToImage(p, sampling(c), image: image, strength: c.strength ?? 0.8, generator: TorchGenerator(seed: c.seed))
            try check(c, r)
        }
    }

    func testInpaintFourChannelUNet() throws {
        let pipe = try sdPipe()
        let image = try ImageIO.loadRGB(path: fixtures.appendingPathComponent("init.png").path)
        let mask = try ImageIO.loadMask(path: fixtures.appendingPathComponent("mask.png").path)
        let all = cases("inpaint")
        XCTAssertEqual(all.count, 2)
        for c in all {
            var p = prompt(c); p.width = nil; p.height = nil
            let r = try pipe.inpaint(p, sampling(c), image: image, mask: mask, strength: c.strength ?? 1,
                                     generator: TorchGenerator(seed: c.seed))
            try check(c, r)
        }
    }

    func testUnconditionalLDM() throws {
        let pipe = LatentDiffusionPipeline(bundle: try Shared.ldm.get())
        let all = cases("sample")
        XCTAssertEqual(all.count, 1)
        for c in all {
            let r = try pipe.sample(sampling(c), generator: TorchGenerator(seed: c.seed))
            try check(c, r)
        }
    }

    func testInpaintNineChannelUNet() throws {
        let sd = try Shared.sd.get()
        let unet = try UNet2DConditionModel(pretrainedFolder: fixtures.appendingPathComponent("tiny-sd-inpaint-unet"))
        let bundle = ModelBundle(url: sd.url, unet: unet, firstStage: sd.firstStage, textEncoder: sd.textEncoder,
                                 tokenizer: sd.tokenizer, schedulerConfig: sd.schedulerConfig, sampleSize: 8)
        let pipe = try StableDiffusionPipeline(bundle: bundle)
        let image = try ImageIO.loadRGB(path: fixtures.appendingPathComponent("init.png").path)
        let mask = try ImageIO.loadMask(path: fixtures.appendingPathComponent("mask.png").path)
        let all = cases("inpaint9")
        XCTAssertEqual(all.count, 2)
        for c in all {
            var p = prompt(c); p.width = nil; p.height = nil
            let r = try pipe.inpaint(p, sampling(c), image: image, mask: mask, strength: c.strength ?? 1,
                                     generator: TorchGenerator(seed: c.seed))
            try check(c, r)
        }
        XCTAssertThrowsError(try pipe.textToImage(PromptOptions(prompt: "a"), SamplingOptions(steps: 1), generator: TorchGenerator(seed: 0)))
    }

    func testSuperResolution() throws {
        let pipe = LatentDiffusionPipeline(bundle: try ModelBundle.load(fixtures.appendingPathComponent("tiny-superres")))
        let low = try ImageIO.loadRGB(path: fixtures.appendingPathComponent("lowres.png").path)
        let c = try XCTUnwrap(cases("upscale").first)
        try check(c, try pipe.upscale(low, sampling(c), generator: TorchGenerator(seed: c.seed)))
    }

    func testProgressReportsStepsAndCancels() throws {
        let pipe = try sdPipe()
        var seen: [(Int, Int)] = []
        _ = try pipe.textToImage(PromptOptions(prompt: "a cat"), SamplingOptions(sampler: "euler", steps: 3),
                                 generator: TorchGenerator(seed: 0)) { s, t in seen.append((s, t)); return true }
        XCTAssertEqual(seen.map(\.0), [1, 2, 3]); XCTAssertEqual(seen.map(\.1), [3, 3, 3])
        XCTAssertThrowsError(try pipe.textToImage(PromptOptions(prompt: "a cat"), SamplingOptions(sampler: "ddim", steps: 3),
                                                  generator: TorchGenerator(seed: 0)) { s, _ in s < 2 }) { e in
            XCTAssertEqual(e as? PipelineError, .cancelled)
        }
    }
}
