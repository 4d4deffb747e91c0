// SDXL parity with diffusers 0.42 / transformers 5.25 (tools/fixtures/sdxl.py): a tiny random SDXL UNet (text_time
// added conditioning, levels without attention, per-level transformer depth, linear projections) and a refiner-style
// UNet (5 time ids), both text encoders' penultimate hidden states and pooled / projected outputs, and
// StableDiffusionXLPipeline images for fixed seeds.
import Checkpoints
import CompVis
import Conditioning
import DiffusersBlocks
import Foundation
import Pipelines
import TensorCore
import UNetModels
import XCTest

enum SDXLFixtures {
    static let dir = fixtures.appendingPathComponent("sdxl")
    static let outputs: [String: TensorRecord] = (try? CheckpointFile.open(dir.appendingPathComponent("outputs.safetensors")).tensors) ?? [:]
    static let cases: [SDXLCase] = (try? JSONDecoder().decode([SDXLCase].self,
                                         from: Data(contentsOf: dir.appendingPathComponent("cases.json")))) ?? []
}

struct SDXLCase: Decodable {
    let name: String, sampler: String, prompt: String, negative_prompt: String?
    let steps: Int, seed: UInt64, width: Int, height: Int, batch: Int, cfg: Double
    let original_size: [Int]?, crops_coords_top_left: [Int]?, target_size: [Int]?
    let negative_original_size: [Int]?, negative_target_size: [Int]?
}

final class SDXLParityTests: XCTestCase {
    func tensor(_ name: String) throws -> Tensor {
        let r = try XCTUnwrap(SDXLFixtures.outputs[name], "fixture \(name) missing")
        return Tensor(try r.floats(), shape: r.shape)
    }

    func assertClose(_ a: Tensor, _ b: Tensor, tol: Float, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.shape, b.shape, what, file: file, line: line)
        let x = a.contiguous().toArray(), y = b.contiguous().toArray()
        let scale = max(y.map(abs).max() ?? 1, 1e-6)
        let diff = zip(x, y).map { abs($0 - $1) }.max() ?? .infinity
        print("\(what): max |diff| \(diff) (max |ref| \(scale))")
        XCTAssertLessThanOrEqual(diff, tol * scale, what, file: file, line: line)
    }

    func unetOutput(_ folder: String, timesteps: [Float], timeIds: String) throws -> Tensor {
        let unet = try UNet2DConditionModel(pretrainedFolder: SDXLFixtures.dir.appendingPathComponent(folder))
        XCTAssertTrue(unet.config.usesTextTimeEmbedding)
        return try GradMode.noGrad {
            try unet(sample: tensor("unet_sample"), timestep: timesteps, encoderHiddenStates: tensor("unet_context"),
                     addedCond: AddedConditions(textEmbeds: tensor("unet_text_embeds"), timeIds: tensor(timeIds)))
        }
    }

    func testBaseUNetMatchesDiffusers() throws {
        let unet = try UNet2DConditionModel(pretrainedFolder: SDXLFixtures.dir.appendingPathComponent("tiny-sdxl/unet"))
        XCTAssertEqual(unet.config.transformerLayersPerBlock, [1, 1, 2])
        XCTAssertEqual(unet.midBlock?.attentions.count, 1)
        XCTAssertEqual((unet.midBlock?.attentions.first as? Transformer2DModel)?.transformerBlocks.count, 2)
        XCTAssertTrue(unet.downBlocks[0].attentions.isEmpty)
        let out = try unetOutput("tiny-sdxl/unet", timesteps: [500, 21], timeIds: "unet_time_ids")
        assertClose(out, try tensor("unet_base_out"), tol: 1e-4, "SDXL base UNet")
    }

    func testRefinerUNetWithAestheticScoreMatchesDiffusers() throws {
        let out = try unetOutput("tiny-refiner-unet", timesteps: [999, 1], timeIds: "unet_refiner_time_ids")
        assertClose(out, try tensor("unet_refiner_out"), tol: 1e-4, "SDXL refiner UNet")
    }

    func testTextTimeUNetRejectsMissingOrMisshapedConditions() throws {
        let unet = try UNet2DConditionModel(pretrainedFolder: SDXLFixtures.dir.appendingPathComponent("tiny-sdxl/unet"))
        let sample = try tensor("unet_sample"), ctx = try tensor("unet_context")
        XCTAssertThrowsError(try unet(sample: sample, timestep: 1, encoderHiddenStates: ctx))
        // refiner time ids (5) on the base UNet (6)
        XCTAssertThrowsError(try unet(sample: sample, timestep: 1, encoderHiddenStates: ctx,
                                      addedCond: AddedConditions(textEmbeds: tensor("unet_text_embeds"), timeIds: tensor("unet_refiner_time_ids"))))
    }

    func ids(_ name: String) throws -> [[Int]] {
        let t = try tensor(name)
        let flat = t.toArray().map { Int($0) }
        return (0..<t.shape[0]).map { Array(flat[($0 * t.shape[1])..<(($0 + 1) * t.shape[1])]) }
    }

    func testTextEncodersMatchTransformers() throws {
        let folder = try DiffusersFolder(url: SDXLFixtures.dir.appendingPathComponent("tiny-sdxl"))
        let te1 = try CLIPTextModel(pretrained: XCTUnwrap(folder.component("text_encoder")))
        let te2 = try CLIPTextModelWithProjection(pretrained: XCTUnwrap(folder.component("text_encoder_2")))
        XCTAssertEqual(te2.projectionDim, 16)
        let (h1, p1) = try GradMode.noGrad { try te1.hiddenStateAndPooled(ids("te1_ids"), fromEnd: 1) }
        let (h2, e2) = try GradMode.noGrad { try te2.hiddenStateAndTextEmbeds(ids("te2_ids"), fromEnd: 1) }
        assertClose(h1, try tensor("te1_penultimate"), tol: 1e-4, "CLIPTextModel hidden_states[-2]")
        assertClose(p1, try tensor("te1_pooled"), tol: 1e-4, "CLIPTextModel pooler_output")
        assertClose(h2, try tensor("te2_penultimate"), tol: 1e-4, "CLIPTextModelWithProjection hidden_states[-2]")
        assertClose(e2, try tensor("te2_text_embeds"), tol: 1e-4, "CLIPTextModelWithProjection text_embeds")
    }

    func testEncodePromptMatchesDiffusers() throws {
        let pipe = try StableDiffusionPipeline(bundle: ModelBundle.load(SDXLFixtures.dir.appendingPathComponent("tiny-sdxl")))
        let (embeds, pooled) = try pipe.encodeSDXLPrompt("a cat")
        assertClose(embeds, try tensor("encode_prompt_embeds"), tol: 1e-4, "encode_prompt prompt_embeds")
        assertClose(pooled, try tensor("encode_pooled"), tol: 1e-4, "encode_prompt pooled_prompt_embeds")
    }

    func testTextToImageMatchesStableDiffusionXLPipeline() throws {
        let bundle = try ModelBundle.load(SDXLFixtures.dir.appendingPathComponent("tiny-sdxl"))
        XCTAssertTrue(bundle.isSDXL)
        XCTAssertTrue(bundle.forceZerosForEmptyPrompt)
        guard case .kl(let vae) = bundle.firstStage else { return XCTFail("no AutoencoderKL") }
        XCTAssertEqual(vae.config.scalingFactor, 0.13025)
        let pipe = try StableDiffusionPipeline(bundle: bundle)
        XCTAssertEqual(SDXLFixtures.cases.count, 3)
        for c in SDXLFixtures.cases {
            var p = PromptOptions(prompt: c.prompt, negativePrompt: c.negative_prompt ?? "", guidanceScale: c.cfg,
                                  width: c.width, height: c.height)
            p.sizeConditioning.originalSize = c.original_size
            p.sizeConditioning.cropsCoordsTopLeft = c.crops_coords_top_left
            p.sizeConditioning.targetSize = c.target_size
            p.sizeConditioning.negativeOriginalSize = c.negative_original_size
            p.sizeConditioning.negativeTargetSize = c.negative_target_size
            let r = try pipe.textToImage(p, SamplingOptions(sampler: c.sampler, steps: c.steps, batchSize: c.batch),
                                         generator: TorchGenerator(seed: c.seed))
            XCTAssertEqual(r.images.count, c.batch)
            XCTAssertEqual(r.images.first?.width, c.width)
            XCTAssertEqual(r.images.first?.height, c.height)
            let ref = try XCTUnwrap(SDXLFixtures.outputs[c.name]).floats().map { UInt8((min(max($0, 0), 1) * 255).rounded(.toNearestOrEven)) }
            let ours = r.images.flatMap(\.pixels)
            XCTAssertEqual(ours.count, ref.count)
            guard ours.count == ref.count else { continue }
            let db = psnr(ours, ref)
            print("PSNR \(c.name): \(db) dB")
            XCTAssertGreaterThanOrEqual(db, 45, c.name)
        }
    }

    func testSDXLRejectsWhatIsNotImplemented() throws {
        let pipe = try StableDiffusionPipeline(bundle: ModelBundle.load(SDXLFixtures.dir.appendingPathComponent("tiny-sdxl")))
        var p = PromptOptions(prompt: "a cat", width: 16, height: 16)
        p.sizeConditioning.originalSize = [0, 16]
        XCTAssertThrowsError(try pipe.textToImage(p, SamplingOptions(sampler: "euler", steps: 1), generator: TorchGenerator(seed: 0)))
    }

    func testFamilyDetection() throws {
        let folder = try DiffusersFolder(url: SDXLFixtures.dir.appendingPathComponent("tiny-sdxl"))
        XCTAssertEqual(ModelFamily.detect(folder).kind, .sdxl)
        // sgm single-file names (shapes as in sd_xl_base_1.0 / sd_xl_refiner_1.0)
        var base: [String: [Int]] = ["model.diffusion_model.label_emb.0.0.weight": [1280, 2816],
                                     "model.diffusion_model.input_blocks.0.0.weight": [320, 4, 3, 3],
                                     "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": [49408, 768],
                                     "conditioner.embedders.1.model.token_embedding.weight": [49408, 1280]]
        XCTAssertEqual(ModelFamily.detect(shapes: base).kind, .sdxl)
        base.removeValue(forKey: "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight")
        base.removeValue(forKey: "conditioner.embedders.1.model.token_embedding.weight")
        base["conditioner.embedders.0.model.token_embedding.weight"] = [49408, 1280]
        XCTAssertEqual(ModelFamily.detect(shapes: base).kind, .sdxlRefiner)
    }
}
