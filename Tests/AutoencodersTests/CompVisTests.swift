// CompVis first-stage checkpoints: the key table (checked in tools/fixtures/autoencoders.py against diffusers'
// convert_ldm_vae_checkpoint) loads CompVis-named weights that reproduce the diffusers outputs, and the YAML
// first_stage_config translates into the diffusers configuration.
@testable import Autoencoders
import Checkpoints
import Foundation
import NeuralNetwork
import TensorCore
import XCTest
@testable import CompVis

final class CompVisTests: XCTestCase {
    func yaml() throws -> [String: Any] {
        let data = try Data(contentsOf: fixtures.appendingPathComponent("compvis_kl_f8.json"))
        return try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    func testCompVisCheckpointMatchesDiffusersOutputs() throws {
        let records = try CheckpointFile.open(fixtures.appendingPathComponent("compvis_kl_f8.safetensors")).tensors
        XCTAssertEqual(VAELayout.detectPrefix(records.keys), "first_stage_model.")
        XCTAssertNotNil(records["first_stage_model.decoder.up.1.upsample.conv.weight"])
        XCTAssertEqual(records["first_stage_model.encoder.mid.attn_1.q.weight"]?.shape, [16, 16, 1, 1])
        let (model, report) = try FirstStageModel.loadCompVis(records: records, yaml: try yaml(), normNumGroups: 4)
        guard case .kl(let m) = model else { return XCTFail("expected an AutoencoderKL") }
        XCTAssertEqual(report.loaded.count, m.namedParameters.count)
        XCTAssertEqual(report.unexpected, [], "other LatentDiffusion parts are not first-stage keys")
        XCTAssertEqual(m.config.scalingFactor, 0.18215)   // the checkpoint's scale_factor buffer
        let ref = try referenceTensors("kl_f8")
        let post = try m.encode(try ref.get("x"))
        assertParity(post.mean, try ref.get("mean"), "compvis kl_f8 mean")
        assertParity(post.logvar, try ref.get("logvar"), "compvis kl_f8 logvar")
        assertParity(try m.decode(try ref.get("z")), try ref.get("decoded"), "compvis kl_f8 decode")
        // Same tensors as the diffusers folder, name for name.
        let d = try AutoencoderKL.load(folder: fixtures.appendingPathComponent("kl_f8"))
        let ours = Dictionary(uniqueKeysWithValues: m.namedParameters)
        for (name, t) in d.namedParameters { XCTAssertEqual(ours[name]?.toArray(), t.toArray(), name) }
    }

    /// A bare first-stage checkpoint (the zoo's kl-f8/model.ckpt layout: no prefix, plus the training loss' weights).
    func testBareFirstStageCheckpoint() throws {
        var records = mapKeys(try CheckpointFile.open(fixtures.appendingPathComponent("compvis_kl_f8.safetensors")).tensors,
                              [.stripPrefix("first_stage_model.")])
        records["loss.logvar"] = records["quant_conv.bias"]
        XCTAssertEqual(VAELayout.detectPrefix(records.keys), "")
        let m = try AutoencoderKL(config: AutoencoderKLConfig.load(fixtures.appendingPathComponent("kl_f8/config.json")))
        let report = try m.loadCompVis(records)
        XCTAssertEqual(report.unexpected, ["loss.logvar"])
        XCTAssertEqual(m.loadReport?.loaded.count, m.namedParameters.count)
        let ref = try referenceTensors("kl_f8")
        assertParity(try m.decode(try ref.get("z")), try ref.get("decoded"), "compvis (bare) kl_f8 decode")
        records["decoder.up.1.upsample.conv.weight"] = nil
        XCTAssertThrowsError(try m.loadCompVis(records)) { XCTAssertTrue("\($0)".contains("decoder.up_blocks.2.upsamplers.0.conv.weight"), "\($0)") }
    }

    func testKeyRules() throws {
        // kl-f8's layout: four levels of two resnets (the decoder's three), mid-block attention only.
        let layout = VAELayout(levels: 4, layersPerBlock: 2)
        let sample = try XCTUnwrap(CheckpointFile.open(fixtures.appendingPathComponent("compvis_kl_f8.safetensors")).tensors.values.first)
        func map(_ k: String) -> String? { layout.map([k: sample], prefix: "first_stage_model.").keys.first }
        XCTAssertEqual(map("first_stage_model.decoder.up.0.block.2.nin_shortcut.weight"), "decoder.up_blocks.3.resnets.2.conv_shortcut.weight")
        XCTAssertEqual(map("first_stage_model.decoder.up.3.upsample.conv.bias"), "decoder.up_blocks.0.upsamplers.0.conv.bias")
        XCTAssertEqual(map("first_stage_model.encoder.down.1.downsample.conv.weight"), "encoder.down_blocks.1.downsamplers.0.conv.weight")
        XCTAssertEqual(map("first_stage_model.encoder.mid.attn_1.proj_out.weight"), "encoder.mid_block.attentions.0.to_out.0.weight")
        XCTAssertEqual(map("first_stage_model.decoder.mid.attn_1.norm.bias"), "decoder.mid_block.attentions.0.group_norm.bias")
        XCTAssertEqual(map("first_stage_model.decoder.norm_out.weight"), "decoder.conv_norm_out.weight")
        XCTAssertEqual(map("first_stage_model.quantize.embedding.weight"), "quantize.embedding.weight")
        XCTAssertNil(map("model.diffusion_model.out.0.weight"))
    }

    func testYAMLTranslation() throws {
        guard case .kl(let c) = try FirstStageConfig.fromCompVis(try yaml(), normNumGroups: 4) else { return XCTFail("expected KL") }
        let diffusers = try AutoencoderKLConfig.load(fixtures.appendingPathComponent("kl_f8/config.json"))
        XCTAssertEqual(c.blockOutChannels, diffusers.blockOutChannels)
        XCTAssertThrowsError(try FirstStageConfig.fromCompVis(try yaml())) { XCTAssertTrue("\($0)".contains("norm_num_groups 32"), "\($0)") }
        XCTAssertEqual(c.layersPerBlock, diffusers.layersPerBlock)
        XCTAssertEqual(c.latentChannels, diffusers.latentChannels)
        XCTAssertEqual(c.scalingFactor, 0.18215)
        XCTAssertTrue(c.midBlockAddAttention)
        // The model zoo's SD / kl-f8 ddconfig, as a YAML parser returns it (and CompVis' default scale_factor 1.0).
        let sd: [String: Any] = ["target": "ldm.models.autoencoder.AutoencoderKL", "params": [
            "embed_dim": 4, "ddconfig": ["double_z": true, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
                                         "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [Int](), "dropout": 0.0]] as [String: Any]]
        guard case .kl(let s) = try FirstStageConfig.fromCompVis(sd) else { return XCTFail("expected KL") }
        var expected = AutoencoderKLConfig.stableDiffusion
        expected.sampleSize = 256; expected.scalingFactor = 1.0
        XCTAssertEqual(s, expected)
        // VQ-f4 (LDM zoo vq-f4: n_embed 8192, embed_dim 3, attn_type default) and attn_type none.
        let vq: [String: Any] = ["model": ["params": ["scale_factor": 1.0, "first_stage_config": [
            "target": "ldm.models.autoencoder.VQModelInterface", "params": [
                "embed_dim": 3, "n_embed": 8192, "ddconfig": ["double_z": false, "z_channels": 3, "resolution": 256, "in_channels": 3,
                "out_ch": 3, "ch": 128, "ch_mult": [1, 2, 4], "num_res_blocks": 2, "attn_resolutions": [Int](), "attn_type": "none"]] as [String: Any]]]]]
        guard case .vq(let v) = try FirstStageConfig.fromCompVis(vq) else { return XCTFail("expected VQ") }
        XCTAssertEqual(v.numVqEmbeddings, 8192)
        XCTAssertEqual(v.embedDim, 3)
        XCTAssertEqual(v.blockOutChannels, [128, 256, 512])
        XCTAssertFalse(v.midBlockAddAttention)
        // Attention outside the mid-block (vq-f8's attn_resolutions [32]; resolution defaults to 256): AttentionLevelTests.
        var withAttn = sd
        withAttn["params"] = ["embed_dim": 4, "ddconfig": ["double_z": true, "z_channels": 4, "in_channels": 3, "out_ch": 3, "ch": 128,
                                                           "ch_mult": [1, 2], "num_res_blocks": 2, "attn_resolutions": [128]] as [String: Any]]
        guard case .kl(let a) = try FirstStageConfig.fromCompVis(withAttn) else { return XCTFail("expected KL") }
        XCTAssertEqual(a.downBlockTypes.map(\.rawValue), ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"])
        XCTAssertEqual(a.upBlockTypes.map(\.rawValue), ["AttnUpDecoderBlock2D", "UpDecoderBlock2D"])
        XCTAssertThrowsError(try FirstStageConfig.fromCompVis(["target": "ldm.models.autoencoder.AutoencoderKL"])) { _ in }
        XCTAssertThrowsError(try FirstStageConfig.fromCompVis(["target": "ldm.models.autoencoder.IdentityFirstStage", "params": ["ddconfig": sd]])) { _ in }
    }
}
