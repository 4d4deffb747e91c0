import Checkpoints
import Foundation
import NeuralNetwork
import TensorCore
import XCTest
@testable import UNetModels

// Parity with diffusers UNet2DConditionModel / UNet2DModel on tiny random models (tools/fixtures/unet.py).

final class UNet2DConditionModelTests: XCTestCase {
    func loadFixtureModel(_ name: String) throws -> UNet2DConditionModel {
        let dir = fixturesURL.appendingPathComponent(name)
        let model = try UNet2DConditionModel(configData: Data(contentsOf: dir.appendingPathComponent("config.json")))
        let weights = try CheckpointFile.open(dir.appendingPathComponent("diffusion_pytorch_model.safetensors"))
        let report = try model.load(weights.tensors, component: name)
        XCTAssertEqual(report.unexpected, [], "unexpected keys in \(name)")
        return model
    }

    func checkParity(_ name: String) throws {
        let model = try loadFixtureModel(name)
        let io = try fixtureTensors("\(name)/io.safetensors")
        let sample = try XCTUnwrap(io["sample"]), ref = try XCTUnwrap(io["out"]), t = try XCTUnwrap(io["timestep"])
        let labels = io["class_labels"].map { $0.toArray().map { Int($0) } }
        let out = try GradMode.noGrad {
            try model(sample: sample, timestep: t.toArray(), encoderHiddenStates: io["encoder_hidden_states"], classLabels: labels)
        }
        let err = parity(out, ref)
        print("UNet parity \(name): max abs err \(err)")
    }

    func testSD1Parity() throws { try checkParity("sd1") }
    func testSD2LinearProjectionParity() throws { try checkParity("sd2") }
    func testInpaintClassScaleShiftOddSizeParity() throws { try checkParity("inpaint_classes") }
    func testUnconditionalLegacyAttentionParity() throws { try checkParity("uncond") }
    func testUnconditionalClassScaleShiftParity() throws { try checkParity("uncond_classes") }

    func testConfigDecodingFollowsDiffusersNaming() throws {
        let config = try UNetConfig.decode(Data(contentsOf: fixturesURL.appendingPathComponent("sd2/config.json")))
        XCTAssertTrue(config.isConditional)
        XCTAssertEqual(config.attentionHeadDim, [2, 4])
        XCTAssertEqual(config.transformerHeads(0), 2) // SD naming: attention_head_dim is the head count
        XCTAssertTrue(config.useLinearProjection)
        let roundTrip = try UNetConfig.decode(JSONEncoder().encode(config))
        XCTAssertEqual(roundTrip, config)
        let uncond = try UNetConfig.decode(Data(contentsOf: fixturesURL.appendingPathComponent("uncond/config.json")))
        XCTAssertFalse(uncond.isConditional)
        XCTAssertEqual(uncond.legacyHeadDim(1, channels: 32), 8)
    }

    func testRejectsUnsupportedAndMalformedConfigs() {
        let bad = [
            #"{"_class_name": "UNet2DConditionModel", "addition_embed_type": "text_time"}"#,
            #"{"_class_name": "UNet2DConditionModel", "down_block_types": ["SimpleCrossAttnDownBlock2D"], "up_block_types": ["UpBlock2D"], "block_out_channels": [32]}"#,
            #"{"_class_name": "UNet2DConditionModel", "layers_per_block": [1, 2]}"#,
            #"{"_class_name": "UNet2DConditionModel", "block_out_channels": [30, 60, 90, 120]}"#,
            #"{"_class_name": "UNet2DModel", "time_embedding_type": "fourier"}"#,
            #"{"in_channels": "four"}"#,
            #"[1, 2]"#,
        ]
        for json in bad {
            XCTAssertThrowsError(try UNetConfig.decode(Data(json.utf8)), json)
        }
    }

    func testFromPretrainedFolderMatchesManualLoad() throws {
        let model = try UNet2DConditionModel(pretrainedFolder: fixturesURL.appendingPathComponent("uncond"))
        let manual = try loadFixtureModel("uncond")
        XCTAssertEqual(model.namedParameters.map { $0.1.toArray() }, manual.namedParameters.map { $0.1.toArray() })
        XCTAssertThrowsError(try UNet2DConditionModel(pretrainedFolder: fixturesURL.appendingPathComponent("missing")))
    }

    func testRejectsBadInputs() throws {
        let model = try loadFixtureModel("sd1")
        let x = Tensor(zeros: [1, 4, 8, 8]), ctx = Tensor(zeros: [1, 5, 32])
        XCTAssertThrowsError(try model(sample: x, timestep: 1, encoderHiddenStates: nil))
        XCTAssertThrowsError(try model(sample: x, timestep: 1, encoderHiddenStates: Tensor(zeros: [1, 5, 16])))
        XCTAssertThrowsError(try model(sample: Tensor(zeros: [1, 3, 8, 8]), timestep: 1, encoderHiddenStates: ctx))
        XCTAssertThrowsError(try model(sample: x, timestep: [1, 2, 3], encoderHiddenStates: ctx))
        XCTAssertThrowsError(try model(sample: x, timestep: 1, encoderHiddenStates: ctx, classLabels: [0]))
        let classes = try loadFixtureModel("uncond_classes")
        let y = Tensor(zeros: [1, 3, 8, 8])
        XCTAssertThrowsError(try classes(sample: y, timestep: 1))
        XCTAssertThrowsError(try classes(sample: y, timestep: 1, classLabels: [4]))
    }

    /// Training: gradients of mean(out^2) match torch for the input and one parameter of every kind, and every
    /// parameter receives a gradient.
    func checkGradients(_ name: String) throws {
        let model = try loadFixtureModel(name)
        let io = try fixtureTensors("\(name)/io.safetensors")
        let sample = try XCTUnwrap(io["sample"]).contiguous().requiringGrad()
        let labels = io["class_labels"].map { $0.toArray().map { Int($0) } }
        let out = try model(sample: sample, timestep: try XCTUnwrap(io["timestep"]).toArray(),
                            encoderHiddenStates: io["encoder_hidden_states"], classLabels: labels)
        out.square().mean().backward()
        let params = Dictionary(uniqueKeysWithValues: model.namedParameters)
        let refs = io.filter { $0.key.hasPrefix("grad.") }
        XCTAssertGreaterThan(refs.count, 8)
        var worst: Float = 0
        for (key, ref) in refs {
            let param = key == "grad.sample" ? sample : try XCTUnwrap(params[String(key.dropFirst(5))], key)
            let g = try XCTUnwrap(param.grad, key).toArray(), r = ref.toArray()
            let scale = r.map(abs).max() ?? 0
            let err = zip(g, r).map { abs($0 - $1) }.max() ?? 0
            XCTAssertLessThanOrEqual(err, 1e-4 * scale + 1e-9, key)
            worst = max(worst, err / max(scale, 1e-12))
        }
        print("UNet gradient parity \(name): max relative err \(worst)")
        for (pname, p) in model.namedParameters { XCTAssertEqual(p.grad?.shape, p.shape, "no gradient for \(pname)") }
    }

    func testGradientParitySD1() throws { try checkGradients("sd1") }
    func testGradientParityLegacyAttentionClasses() throws { try checkGradients("uncond_classes") }
}
