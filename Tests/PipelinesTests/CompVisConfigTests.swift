// CompVis YAML -> diffusers UNet config (UNetModels.CompVisUNetConfig) against diffusers
// loaders/single_file_utils.py create_unet_diffusers_config_from_ldm for the real SD 1.x / 2.x and LDM zoo configs,
// and the model-level checks of CompVis.CompVisModelConfig. Fixtures: tools/fixtures/compvis_configs.py.
import Checkpoints
import Diffusion
import DiffusersBlocks
import Foundation
import Pipelines
import TensorCore
import UNetModels
import XCTest
@testable import CompVis

final class CompVisConfigTests: XCTestCase {
    static let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/compvis_configs")

    func json(_ name: String) throws -> [String: Any] {
        let data = try Data(contentsOf: Self.dir.appendingPathComponent(name))
        return try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    func parsed(_ name: String) throws -> [String: Any] { try XCTUnwrap(json("parsed_yaml.json")[name] as? [String: Any]) }

    func testUNetConfigsMatchDiffusers() throws {
        let expected = try json("expected_unet_configs.json")
        XCTAssertEqual(Set(expected.keys), ["v1-inference", "v2-inference", "v2-inference-v", "cin256-v2", "txt2img-1p4B-eval"])
        for (name, value) in expected {
            var reference = try XCTUnwrap(value as? [String: Any])
            reference["_class_name"] = "UNet2DConditionModel"
            let want = try UNetConfig.decode(JSONSerialization.data(withJSONObject: reference))
            let got = try CompVisUNetConfig.unetConfig(parsed(name))
            XCTAssertEqual(got, want, name)
            _ = try CompVisUNetKeyMap(config: got)
        }
    }

    func testHeadCountSemantics() throws {
        // SD 1.x: num_heads 8 everywhere; SD 2.x: num_head_channels 64 -> channels / 64 heads per block.
        let sd1 = try CompVisUNetConfig.unetConfig(parsed("v1-inference"))
        let sd2 = try CompVisUNetConfig.unetConfig(parsed("v2-inference-v"))
        let p2 = try XCTUnwrap(((parsed("v2-inference-v")["model"] as? [String: Any])?["params"] as? [String: Any])?["unet_config"] as? [String: Any])
        let headChannels = try XCTUnwrap((p2["params"] as? [String: Any])?["num_head_channels"] as? Int)
        for i in 0..<4 {
            XCTAssertEqual(sd2.transformerHeads(i) * headChannels, sd2.blockOutChannels[i])
            XCTAssertEqual(sd1.transformerHeads(i), 8)
        }
        XCTAssertTrue(sd2.useLinearProjection); XCTAssertFalse(sd1.useLinearProjection)
    }

    func testLegacyAttentionLDMs() throws {
        // Unconditional zoo models (no spatial transformer): diffusers UNet2DModel with legacy attention blocks.
        for name in ["ffhq-ldm-vq-4"] {
            let cfg = try CompVisUNetConfig.unetConfig(parsed(name))
            XCTAssertEqual(cfg.className, "UNet2DModel", name)
            XCTAssertNil(cfg.crossAttentionDim, name)
            XCTAssertTrue(cfg.downBlockTypes.contains(.attnDownBlock2D), name)
            _ = try CompVisUNetKeyMap(config: cfg)
            let summary = try ModelSummary.read(yaml: parsed(name))
            XCTAssertFalse(summary.hasTextEncoder); XCTAssertNil(summary.numClassEmbeds)
        }
        // LSUN churches down/upsamples inside ResBlocks (resblock_updown, scale-shift norm; attention at 1, 2, 4, 8 of
        // five levels): diffusers' resnet resampling blocks (parity: UNetModelsTests.ResblockUpdownTests).
        let churches = try CompVisUNetConfig.unetConfig(parsed("lsun_churches-ldm-kl-8"))
        XCTAssertEqual(churches.className, "UNet2DModel")
        XCTAssertEqual(churches.downBlockTypes.map(\.rawValue), ["AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D"])
        XCTAssertEqual(churches.upBlockTypes.map(\.rawValue), ["ResnetUpsampleBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D"])
        XCTAssertEqual([churches.downsampleType.rawValue, churches.upsampleType.rawValue, churches.resnetTimeScaleShift.rawValue], ["resnet", "resnet", "scale_shift"])
        XCTAssertEqual((0..<5).map(churches.resnetDownsample), [true, true, true, true, false])
        let churchMap = try CompVisUNetKeyMap(config: churches)
        XCTAssertEqual(churchMap.diffusersName("input_blocks.3.0.in_layers.2.weight"), "down_blocks.0.downsamplers.0.conv1.weight")
        XCTAssertEqual(churchMap.diffusersName("output_blocks.2.1.emb_layers.1.weight"), "up_blocks.0.upsamplers.0.time_emb_proj.weight")
    }

    func testModelConfigs() throws {
        let v = try CompVisModelConfig(yaml: parsed("v2-inference-v"))
        XCTAssertEqual(v.condName, "FrozenOpenCLIPEmbedder")
        XCTAssertEqual(try v.schedulerConfig().predictionType, "v_prediction")
        XCTAssertEqual(try CompVisModelConfig(yaml: parsed("v2-inference")).schedulerConfig().predictionType, "epsilon")
        let cin = try CompVisModelConfig(yaml: parsed("cin256-v2"))
        let s = try cin.schedulerConfig()
        XCTAssertEqual(s.betaStart, cin.params["linear_start"] as? Double)
        XCTAssertEqual(s.betaEnd, cin.params["linear_end"] as? Double)
        XCTAssertEqual(s.numTrainTimesteps, cin.params["timesteps"] as? Int)
        XCTAssertEqual(s.betaSchedule, "scaled_linear")
        let summary = try ModelSummary.read(yaml: parsed("cin256-v2"))
        XCTAssertEqual(summary.numClassEmbeds, (cin.condParams["n_classes"] as? Int))
        XCTAssertEqual(summary.firstStage, .vqModel)
        XCTAssertTrue(try ModelSummary.read(yaml: parsed("v1-inference")).hasTextEncoder)
    }

    func testRefusals() throws {
        func message(_ yaml: [String: Any]) -> String {
            do { _ = try CompVisModelConfig(yaml: yaml); return "" } catch { return "\(error)" }
        }
        // txt2img-1p4B-eval (BERTEmbedder) is accepted: diffusers' create_ldm_bert_config values (d_model = n_embed,
        // encoder_layers = n_layer, ffn 4 n_embed) with x-transformers' 8 heads of 64, vocab 30522, 77 positions.
        XCTAssertEqual(message(try parsed("txt2img-1p4B-eval")), "")
        let bert = try CompVisModelConfig(yaml: parsed("txt2img-1p4B-eval")).bertConfig()
        XCTAssertEqual([bert.dModel, bert.encoderLayers, bert.encoderFFNDim, bert.encoderAttentionHeads, bert.headDim, bert.vocabSize,
                        bert.maxPositionEmbeddings], [1280, 32, 5120, 8, 64, 30522, 77])
        let summary = try ModelSummary.read(yaml: parsed("txt2img-1p4B-eval"))
        XCTAssertTrue(summary.hasLDMBert); XCTAssertTrue(summary.hasTextEncoder); XCTAssertEqual(summary.firstStage, .autoencoderKL)
        XCTAssertTrue(message(["model": ["params": ["linear_start": 0.1]]]).contains("unet_config"))
        XCTAssertTrue(message(["data": 1]).contains("model.params"))
        var sd1 = try parsed("v1-inference")
        var model = try XCTUnwrap(sd1["model"] as? [String: Any]), params = try XCTUnwrap(model["params"] as? [String: Any])
        var unet = try XCTUnwrap(params["unet_config"] as? [String: Any]), up = try XCTUnwrap(unet["params"] as? [String: Any])
        up["resblock_updown"] = true
        unet["params"] = up; params["unet_config"] = unet; model["params"] = params; sd1["model"] = model
        XCTAssertTrue(message(sd1).contains("resblock_updown"))
        up["resblock_updown"] = false; up["channel_mult"] = "wide"
        unet["params"] = up; params["unet_config"] = unet; model["params"] = params; sd1["model"] = model
        XCTAssertTrue(message(sd1).contains("channel_mult"))
    }

    func testTinyClassConditionalCheckpointMatchesDiffusers() throws {
        // tiny-cin.safetensors (CompVis names, float16) + its YAML -> the UNet output of diffusers' conversion.
        let bundle = try ModelBundle.load(checkpoint: Self.dir.appendingPathComponent("tiny-cin.safetensors"), yaml: parsed("tiny-cin"))
        let io = try CheckpointFile.open(Self.dir.appendingPathComponent("tiny-cin-io.safetensors")).tensors
        let x = try XCTUnwrap(io["x"]).tensor(), want = try XCTUnwrap(io["out"]).floats()
        let label = try XCTUnwrap(io["label"]).floats().map { Int($0) }, t = try XCTUnwrap(io["timestep"]).floats()
        let embedder = try XCTUnwrap(bundle.classEmbedder)
        let context = try embedder(label)
        let wantContext = try XCTUnwrap(io["context"]).floats()
        XCTAssertEqual(context.shape, [1, 1, 16])
        XCTAssertEqual(context.toArray(), wantContext)
        let out = try bundle.unet(sample: x, timestep: t, encoderHiddenStates: context).toArray()
        XCTAssertEqual(out.count, want.count)
        let err = zip(out, want).map { abs($0 - $1) }.max() ?? .infinity
        XCTAssertLessThan(err, 1e-4)
        XCTAssertEqual(bundle.sampleSize, 8)
        XCTAssertEqual(bundle.schedulerConfig.betaStart, 0.0015)

        // The class-conditional sampler runs on the embedding context, with null-class guidance.
        let pipe = LatentDiffusionPipeline(bundle: bundle)
        let o = SamplingOptions(sampler: "ddim", steps: 2, eta: 0, batchSize: 1)
        let result = try pipe.sample(o, classLabel: 1, guidanceScale: 3, generator: TorchGenerator(seed: 0))
        XCTAssertEqual(result.images.count, 1)
        XCTAssertThrowsError(try pipe.sample(o, classLabel: 5, generator: TorchGenerator(seed: 0)))
    }
}
