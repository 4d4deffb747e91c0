// SDXL parity with diffusers 0.42 / transformers 5.25 (tools/fixtures/sdxl.py): a tiny random SDXL UNet (text_time
// added conditioning, levels without attention, per-level transformer depth, linear projections) and a refiner-style
// UNet (5 time ids), both text encoders' penultimate hidden states and pooled / projected outputs, and
// StableDiffusionXLPipeline images for fixed seeds.
import Checkpoints
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
    static let cases: [PipelineCase] = (try? JSONDecoder().decode([PipelineCase].self,
                                         from: Data(contentsOf: dir.appendingPathComponent("cases.json")))) ?? []
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
}
