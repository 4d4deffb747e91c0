// SDXL pipelines beyond txt2img against diffusers 0.42 (tools/fixtures/sdxl_pipelines.py): StableDiffusionXLImg2ImgPipeline
// on the tiny base and on a tiny refiner (aesthetic-score time ids, text_encoder_2 only), StableDiffusionXLInpaintPipeline
// with the base's 4-channel UNet and with a 9-channel UNet, the base -> refiner handoff (denoising_end / denoising_start,
// one generator) for first-order, ancestral, second-order and DDIM schedulers, and SDXL-Turbo use (trailing timesteps,
// Euler ancestral, 1 and 4 steps, guidance 0). Images must match at PSNR >= 45 dB on the 8-bit images.
import Checkpoints
import Foundation
import Imaging
import Pipelines
import TensorCore
import XCTest

enum SDXLPipelineFixtures {
    static let dir = fixtures.appendingPathComponent("sdxl-pipelines")
    static let outputs: [String: TensorRecord] = (try? CheckpointFile.open(dir.appendingPathComponent("outputs.safetensors")).tensors) ?? [:]
    static let cases: [SDXLPipelineCase] = (try? JSONDecoder().decode([SDXLPipelineCase].self,
                                                 from: Data(contentsOf: dir.appendingPathComponent("cases.json")))) ?? []
    static let base: Result<ModelBundle, Error> = Result { try ModelBundle.load(fixtures.appendingPathComponent("sdxl/tiny-sdxl")) }
    static let refiner: Result<ModelBundle, Error> = Result { try ModelBundle.load(dir.appendingPathComponent("tiny-sdxl-refiner")) }
    static let inpaint: Result<ModelBundle, Error> = Result { try ModelBundle.load(dir.appendingPathComponent("tiny-sdxl-inpaint")) }
}

struct SDXLPipelineCase: Decodable {
    let name: String, kind: String, model: String, shape: [Int]
    let sampler: String, seed: UInt64, prompt: String, negative_prompt: String
    let steps: Int, cfg: Double, batch: Int
    let strength: Double?, `switch`: Double?, timestep_spacing: String?
    let original_size: [Int]?, crops_coords_top_left: [Int]?, target_size: [Int]?
    let negative_original_size: [Int]?, negative_crops_coords_top_left: [Int]?, negative_target_size: [Int]?
    let aesthetic_score: Double?, negative_aesthetic_score: Double?

    var prompt_: PromptOptions {
        var p = PromptOptions(prompt: prompt, negativePrompt: negative_prompt, guidanceScale: cfg)
        p.sizeConditioning.originalSize = original_size
        p.sizeConditioning.cropsCoordsTopLeft = crops_coords_top_left
        p.sizeConditioning.targetSize = target_size
        p.sizeConditioning.negativeOriginalSize = negative_original_size
        p.sizeConditioning.negativeCropsCoordsTopLeft = negative_crops_coords_top_left
        p.sizeConditioning.negativeTargetSize = negative_target_size
        if let a = aesthetic_score { p.sizeConditioning.aestheticScore = a }
        if let a = negative_aesthetic_score { p.sizeConditioning.negativeAestheticScore = a }
        return p
    }

    var sampling: SamplingOptions { SamplingOptions(sampler: sampler, steps: steps, batchSize: batch, timestepSpacing: timestep_spacing) }
}

final class SDXLPipelinesTests: XCTestCase {
    func cases(_ kind: String) -> [SDXLPipelineCase] { SDXLPipelineFixtures.cases.filter { $0.kind == kind } }

    func pipeline(_ model: String) throws -> StableDiffusionPipeline {
        switch model {
        case "refiner": return try StableDiffusionPipeline(bundle: SDXLPipelineFixtures.refiner.get())
        case "inpaint": return try StableDiffusionPipeline(bundle: SDXLPipelineFixtures.inpaint.get())
        default: return try StableDiffusionPipeline(bundle: SDXLPipelineFixtures.base.get())
        }
    }

    func check(_ c: SDXLPipelineCase, _ r: GenerationResult, file: StaticString = #filePath, line: UInt = #line) throws {
        XCTAssertEqual(r.images.count, c.batch, c.name, file: file, line: line)
        XCTAssertEqual(r.images.first?.height, c.shape[1], c.name, file: file, line: line)
        XCTAssertEqual(r.images.first?.width, c.shape[2], c.name, file: file, line: line)
        let ref = try XCTUnwrap(SDXLPipelineFixtures.outputs[c.name], "fixture \(c.name) missing").floats()
            .map { UInt8((min(max($0, 0), 1) * 255).rounded(.toNearestOrEven)) }
        let ours = r.images.flatMap(\.pixels)
        XCTAssertEqual(ours.count, ref.count, c.name, file: file, line: line)
        guard ours.count == ref.count else { return }
        let db = psnr(ours, ref)
        print("PSNR \(c.name): \(db) dB")
        XCTAssertGreaterThanOrEqual(db, 45, c.name, file: file, line: line)
    }

    func initImage() throws -> RGBImage { try ImageIO.loadRGB(path: fixtures.appendingPathComponent("init.png").path) }

    func testImageToImageMatchesStableDiffusionXLImg2ImgPipeline() throws {
        let all = cases("img2img")
        XCTAssertEqual(all.count, 4)
        XCTAssertEqual(try SDXLPipelineFixtures.refiner.get().kind, .text(.sdxlRefiner))
        XCTAssertTrue(try SDXLPipelineFixtures.refiner.get().requiresAestheticsScore)
        for c in all {
            let r = try pipeline(c.model).imageToImage(c.prompt_, c.sampling, image: initImage(), strength: try XCTUnwrap(c.strength),
                                                       generator: TorchGenerator(seed: c.seed))
            try check(c, r)
        }
    }

    func testInpaintMatchesStableDiffusionXLInpaintPipeline() throws {
        let all = cases("inpaint")
        XCTAssertEqual(all.count, 4)
        XCTAssertEqual(try SDXLPipelineFixtures.inpaint.get().kind, .inpainting(.sdxl))
        let mask = try ImageIO.loadMask(path: fixtures.appendingPathComponent("mask.png").path)
        for c in all {
            var p = c.prompt_
            p.width = 16
            p.height = 16
            let r = try pipeline(c.model).inpaint(p, c.sampling, image: initImage(), mask: mask, strength: try XCTUnwrap(c.strength),
                                                  generator: TorchGenerator(seed: c.seed))
            try check(c, r)
        }
    }

    func testBaseToRefinerHandoffMatchesDiffusers() throws {
        let all = cases("handoff")
        XCTAssertEqual(all.count, 4)
        let base = try pipeline("base"), refiner = try pipeline("refiner")
        for c in all {
            let switchAt = try XCTUnwrap(c.`switch`)
            // the base's output_type="latent" result with denoising_end
            let latents = try base.textToLatents(c.prompt_, c.sampling, denoisingEnd: switchAt, generator: TorchGenerator(seed: c.seed))
            let ref = try XCTUnwrap(SDXLPipelineFixtures.outputs[c.name + "_base_latents"])
            XCTAssertEqual(latents.shape, ref.shape)
            let diff = zip(latents.contiguous().toArray(), try ref.floats()).map { abs($0 - $1) }.max() ?? .infinity
            print("\(c.name) base latents: max |diff| \(diff)")
            XCTAssertLessThan(diff, 1e-3, c.name)
            var steps: [(Int, Int)] = []
            let r = try base.textToImage(c.prompt_, c.sampling, refiner: refiner, switchAt: switchAt, generator: TorchGenerator(seed: c.seed),
                                         progress: { steps.append(($0, $1)); return true })
            try check(c, r)
            // one progress run over both models' steps
            XCTAssertEqual(steps.map(\.0), Array(1...steps.count), c.name)
            XCTAssertEqual(Set(steps.map(\.1)), [steps.count], c.name)
        }
    }

    func testTurboFewStepsTrailingWithoutGuidance() throws {
        let all = cases("turbo")
        XCTAssertEqual(all.count, 2)
        for c in all {
            var p = c.prompt_
            p.width = 16
            p.height = 16
            let r = try pipeline(c.model).textToImage(p, c.sampling, generator: TorchGenerator(seed: c.seed))
            try check(c, r)
        }
    }

    func testDenoisingStartAndEndMatchDiffusersCutoffs() throws {
        let base = try SDXLPipelineFixtures.base.get()
        // leading spacing, steps_offset 1, 8 steps: 876 751 626 501 376 251 126 1; cutoff 200 at 0.8
        let run = try GenerationRun(SamplingOptions(sampler: "euler", steps: 8), schedulerConfig: base.schedulerConfig, denoisingEnd: 0.8,
                                    generator: TorchGenerator(seed: 0))
        XCTAssertEqual(run.scheduler.timesteps, [876, 751, 626, 501, 376, 251, 126, 1])
        XCTAssertEqual(run.endIndex, 6)
        let refine = try GenerationRun(SamplingOptions(sampler: "euler", steps: 8), schedulerConfig: base.schedulerConfig,
                                       denoisingStart: 0.8, generator: TorchGenerator(seed: 0))
        XCTAssertEqual(refine.startIndex, 6)
        XCTAssertEqual(refine.endIndex, 8)
        // Heun (order 2): an even count below the cutoff gets one more step
        let heun = try GenerationRun(SamplingOptions(sampler: "heun", steps: 5), schedulerConfig: base.schedulerConfig,
                                     denoisingStart: 0.6, generator: TorchGenerator(seed: 0))
        XCTAssertEqual((heun.scheduler.timesteps.count - heun.startIndex) % 2, 1)
        for bad in [0.0, 1.0, -0.5, .nan] {
            XCTAssertThrowsError(try GenerationRun(SamplingOptions(steps: 4), schedulerConfig: base.schedulerConfig, denoisingEnd: bad,
                                                   generator: TorchGenerator(seed: 0)))
        }
        XCTAssertThrowsError(try GenerationRun(SamplingOptions(steps: 4), schedulerConfig: base.schedulerConfig, denoisingStart: 0.8,
                                               denoisingEnd: 0.5, generator: TorchGenerator(seed: 0)))
    }

    func testWebUIEmphasisAndLongPromptsMatchA1111Rules() throws {
        let pipe = try pipeline("base")
        let prompt = try String(contentsOf: SDXLPipelineFixtures.dir.appendingPathComponent("weighted_prompt.txt"), encoding: .utf8)
        for (name, mode) in [("weighted_original", PromptEmphasis.original), ("weighted_nonorm", .noNorm)] {
            let (z, pooled) = try pipe.encodeSDXLPrompt(prompt, emphasis: mode)
            for (ours, key) in [(z, name + "_embeds"), (pooled, name + "_pooled")] {
                let ref = try XCTUnwrap(SDXLPipelineFixtures.outputs[key])
                XCTAssertEqual(ours.shape, ref.shape, key)
                let diff = zip(ours.contiguous().toArray(), try ref.floats()).map { abs($0 - $1) }.max() ?? .infinity
                print("\(key): max |diff| \(diff)")
                XCTAssertLessThan(diff, 1e-4, key)
            }
        }
        // two chunks of 77 tokens; a txt2img with it (cond 154 tokens, zeroed uncond 77: two UNet passes) runs
        XCTAssertEqual(try pipe.encodeSDXLPrompt(prompt, emphasis: .original).0.shape[1], 154)
        var p = PromptOptions(prompt: prompt, guidanceScale: 5, width: 16, height: 16, emphasis: .original)
        let r = try pipe.textToImage(p, SamplingOptions(sampler: "euler", steps: 2), generator: TorchGenerator(seed: 0))
        XCTAssertEqual(r.images.count, 1)
        p.negativePrompt = "blurry"
        XCTAssertNoThrow(try pipe.textToImage(p, SamplingOptions(sampler: "euler", steps: 1), generator: TorchGenerator(seed: 0)))
    }

    func testRefusals() throws {
        let base = try pipeline("base"), refiner = try pipeline("refiner")
        let p = PromptOptions(prompt: "a cat", width: 16, height: 16)
        let o = SamplingOptions(sampler: "euler", steps: 4)
        // the refiner alone has no txt2img (5 time ids), and cannot be the base of a handoff
        XCTAssertThrowsError(try refiner.textToImage(p, o, generator: TorchGenerator(seed: 0))) { e in
            guard case .wrongModelKind? = e as? PipelineError else { return XCTFail("\(e)") }
        }
        XCTAssertThrowsError(try refiner.textToImage(p, o, refiner: base, switchAt: 0.8, generator: TorchGenerator(seed: 0)))
        for bad in [0.0, 1.0, 1.5, .nan] {
            XCTAssertThrowsError(try base.textToImage(p, o, refiner: refiner, switchAt: bad, generator: TorchGenerator(seed: 0)))
        }
        // latents of the wrong shape
        XCTAssertThrowsError(try refiner.refine(latents: Tensor(zeros: [1, 3, 2, 2]), p, o, denoisingStart: 0.5, generator: TorchGenerator(seed: 0)))
        XCTAssertThrowsError(try refiner.refine(latents: Tensor(zeros: [3, 4, 2, 2]), p, o, denoisingStart: 0.5, generator: TorchGenerator(seed: 0)))
        // an SD 1.x model takes no denoising start / end
        let sd = try StableDiffusionPipeline(bundle: Shared.sd.get())
        XCTAssertThrowsError(try sd.textToLatents(p, o, denoisingEnd: 0.5, generator: TorchGenerator(seed: 0)))
        XCTAssertThrowsError(try base.textToImage(p, o, refiner: sd, switchAt: 0.5, generator: TorchGenerator(seed: 0)))
        // non-finite aesthetic score
        var q = p
        q.sizeConditioning.aestheticScore = .infinity
        XCTAssertThrowsError(try refiner.imageToImage(q, o, image: initImage(), strength: 0.5, generator: TorchGenerator(seed: 0)))
    }
}
