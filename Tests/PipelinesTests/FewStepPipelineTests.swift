// Few-step sampling end to end against diffusers 0.42 (tools/fixtures/few_step_pipelines.py): StableDiffusionPipeline
// with LCMScheduler / TCDScheduler swapped in and Turbo-style trailing Euler a at guidance 0 on the tiny SD folder, and
// a LatentConsistencyModelPipeline folder whose UNet has time_cond_proj_dim (guidance embedding w, no CFG batch), also
// run through StableDiffusionPipeline (w embedding plus CFG). Same seeds, PSNR >= 45 dB on the 8-bit images, as
// PipelineParityTests.
import Checkpoints
import Foundation
import Pipelines
import TensorCore
import UNetModels
import XCTest

final class FewStepPipelineTests: XCTestCase {
    struct Case: Decodable {
        let name: String, kind: String, model: String, shape: [Int]
        let sampler: String?, spacing: String?, prompt: String
        let steps: Int, cfg: Double, eta: Double, seed: UInt64, width: Int, height: Int, batch: Int
    }

    static let cases: [Case] = (try? JSONDecoder().decode([Case].self, from: Data(contentsOf: fixtures.appendingPathComponent("few_step_cases.json")))) ?? []
    static let outputs: [String: TensorRecord] = (try? CheckpointFile.open(fixtures.appendingPathComponent("few_step_outputs.safetensors")).tensors) ?? [:]

    func run(_ c: Case) throws {
        let bundle = c.model == "tiny-sd" ? try Shared.sd.get() : try ModelBundle.load(fixtures.appendingPathComponent(c.model))
        let pipe = try StableDiffusionPipeline(bundle: bundle)
        // StableDiffusionPipeline on the LCM folder: the same weights, but model_index.json's class not consulted
        if c.kind == "sd-on-lcm" { bundle.pipelineClass = "StableDiffusionPipeline" }
        XCTAssertEqual(pipe.isLatentConsistencyPipeline, c.kind == "lcm", c.name)
        let o = SamplingOptions(sampler: c.sampler, steps: c.steps, eta: c.eta, batchSize: c.batch, timestepSpacing: c.spacing)
        let p = PromptOptions(prompt: c.prompt, guidanceScale: c.cfg, width: c.width, height: c.height)
        let r = try pipe.textToImage(p, o, generator: TorchGenerator(seed: c.seed))
        let ref = try XCTUnwrap(Self.outputs[c.name]).floats().map { UInt8((min(max($0, 0), 1) * 255).rounded(.toNearestOrEven)) }
        let ours = r.images.flatMap(\.pixels)
        XCTAssertEqual(ours.count, ref.count, c.name)
        guard ours.count == ref.count else { return }
        let db = psnr(ours, ref)
        print("PSNR \(c.name): \(db) dB")
        XCTAssertGreaterThanOrEqual(db, 45, c.name)
    }

    func testFewStepSamplingMatchesDiffusers() throws {
        XCTAssertEqual(Self.cases.count, 8)
        for c in Self.cases { try run(c) }
    }

    func testLCMFolderLoadsWithGuidanceEmbedding() throws {
        let bundle = try ModelBundle.load(fixtures.appendingPathComponent("tiny-lcm"))
        XCTAssertEqual(bundle.unet.config.timeCondProjDim, 16)
        XCTAssertEqual(bundle.schedulerConfig.className, "LCMScheduler")
        XCTAssertTrue(bundle.unet.namedParameters.contains { $0.0 == "time_embedding.cond_proj.weight" })
        let summary = try ModelSummary.read(fixtures.appendingPathComponent("tiny-lcm"))
        XCTAssertEqual(summary.timeCondProjDim, 16)
        XCTAssertEqual(summary.pipelineClass, "LatentConsistencyModelPipeline")
        // a timestep condition of the wrong width, or for a UNet without cond_proj, is refused
        let x = Tensor(zeros: [1, 4, 2, 2]), ctx = Tensor(zeros: [1, 77, 32])
        XCTAssertThrowsError(try bundle.unet(sample: x, timestep: 1, encoderHiddenStates: ctx, timestepCond: Tensor(zeros: [1, 8])))
        XCTAssertThrowsError(try Shared.sd.get().unet(sample: x, timestep: 1, encoderHiddenStates: ctx, timestepCond: Tensor(zeros: [1, 16])))
    }

    func testSpacingOptionIsValidated() throws {
        XCTAssertThrowsError(try SamplingOptions(sampler: "euler", steps: 4, timestepSpacing: "sideways").validate())
        let pipe = try StableDiffusionPipeline(bundle: Shared.sd.get())
        // LCM/TCD sample their own grid: a spacing is an error, not silently ignored
        XCTAssertThrowsError(try pipe.textToImage(PromptOptions(prompt: "a", guidanceScale: 1), SamplingOptions(sampler: "lcm", steps: 2, timestepSpacing: "trailing"),
                                                  generator: TorchGenerator(seed: 0)))
        XCTAssertThrowsError(try pipe.textToImage(PromptOptions(prompt: "a", guidanceScale: 1), SamplingOptions(sampler: "lcm", steps: 51),
                                                  generator: TorchGenerator(seed: 0)))
    }
}
