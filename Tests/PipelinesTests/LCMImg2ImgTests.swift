// img2img with the LCM scheduler against diffusers 0.42 (tools/fixtures/lcm_img2img.py): on the LCM folder our img2img
// is LatentConsistencyModelImg2ImgPipeline (strength cuts the distillation grid in set_timesteps; every step runs), on
// an SD folder with `--sampler lcm` (the LCM-LoRA recipe) StableDiffusionImg2ImgPipeline (get_timesteps cuts the
// 4-step schedule). Same timesteps exactly, same seeds, PSNR >= 45 dB on the 8-bit images, as the other parity tests.
import Checkpoints
import Diffusion
import Foundation
import Imaging
import Pipelines
import TensorCore
import XCTest

final class LCMImg2ImgTests: XCTestCase {
    struct Case: Decodable {
        let name: String, kind: String, model: String, shape: [Int], timesteps: [Int]
        let prompt: String, steps: Int, strength: Double, cfg: Double, seed: UInt64, batch: Int
        let begin_index: Int?
    }

    static let cases: [Case] = (try? JSONDecoder().decode([Case].self, from: Data(contentsOf: fixtures.appendingPathComponent("lcm_img2img_cases.json")))) ?? []
    static let outputs: [String: TensorRecord] = (try? CheckpointFile.open(fixtures.appendingPathComponent("lcm_img2img_outputs.safetensors")).tensors) ?? [:]

    func testImg2ImgOnLCMMatchesDiffusers() throws {
        XCTAssertEqual(Self.cases.count, 4)
        let image = try ImageIO.loadRGB(path: fixtures.appendingPathComponent("init.png").path)
        for c in Self.cases {
            let bundle = c.model == "tiny-sd" ? try Shared.sd.get() : try ModelBundle.load(fixtures.appendingPathComponent(c.model))
            let pipe = try StableDiffusionPipeline(bundle: bundle)
            XCTAssertEqual(pipe.isLatentConsistencyPipeline, c.kind == "lcm", c.name)
            let o = SamplingOptions(sampler: c.kind == "sd" ? "lcm" : nil, steps: c.steps, batchSize: c.batch)
            // The schedule the run takes: diffusers' timesteps (from begin_index where get_timesteps cut them).
            let run = try GenerationRun(o, schedulerConfig: bundle.schedulerConfig, strength: c.strength,
                                        consistencyGrid: pipe.isLatentConsistencyPipeline, generator: TorchGenerator(seed: 0))
            XCTAssertEqual(run.scheduler.timesteps.map { Int($0) }, c.timesteps, c.name)
            XCTAssertEqual(run.startIndex, c.begin_index ?? 0, c.name)
            XCTAssertEqual(run.strengthInGrid, c.kind == "lcm", c.name)
            let r = try pipe.imageToImage(PromptOptions(prompt: c.prompt, guidanceScale: c.cfg), o, image: image,
                                          strength: c.strength, generator: TorchGenerator(seed: c.seed))
            let ref = try XCTUnwrap(Self.outputs[c.name]).floats().map { UInt8((min(max($0, 0), 1) * 255).rounded(.toNearestOrEven)) }
            let ours = r.images.flatMap(\.pixels)
            XCTAssertEqual(ours.count, ref.count, c.name)
            guard ours.count == ref.count else { continue }
            let db = psnr(ours, ref)
            print("PSNR \(c.name): \(db) dB")
            XCTAssertGreaterThanOrEqual(db, 45, c.name)
        }
    }

    /// diffusers raises when int(original_inference_steps x strength) < steps; so do we, before any step, and a
    /// strength that leaves enough grid points runs even where steps x strength < 1 (which the SD pipeline refuses).
    func testGridLimitIsChecked() throws {
        let bundle = try ModelBundle.load(fixtures.appendingPathComponent("tiny-lcm"))
        let pipe = try StableDiffusionPipeline(bundle: bundle)
        let image = try ImageIO.loadRGB(path: fixtures.appendingPathComponent("init.png").path)
        XCTAssertThrowsError(try pipe.imageToImage(PromptOptions(prompt: "a", guidanceScale: 8.5), SamplingOptions(steps: 4), image: image,
                                                   strength: 0.05, generator: TorchGenerator(seed: 0))) { e in
            XCTAssertTrue("\(e)".contains("= 2 points of the distillation grid for 4 steps"), "\(e)")
        }
        let lcm = try LCMScheduler(config: bundle.schedulerConfig)
        try lcm.setTimesteps(2, strength: 0.2)   // 10 grid points: 199, 179, ..., 19; indices 0 and 5
        XCTAssertEqual(lcm.timesteps, [199, 99])
        let r = try pipe.imageToImage(PromptOptions(prompt: "a", guidanceScale: 8.5), SamplingOptions(steps: 2), image: image,
                                      strength: 0.2, generator: TorchGenerator(seed: 0))
        XCTAssertEqual(r.images.count, 1)
        // The SD pipeline's own rule stays for other folders.
        XCTAssertThrowsError(try StableDiffusionPipeline(bundle: Shared.sd.get()).imageToImage(
            PromptOptions(prompt: "a", guidanceScale: 1), SamplingOptions(sampler: "lcm", steps: 2), image: image, strength: 0.2,
            generator: TorchGenerator(seed: 0)))
    }
}
