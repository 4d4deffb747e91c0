// Attention outside the mid-block: CompVis ddconfig.attn_resolutions (ldm/modules/diffusionmodules/model.py
// Encoder/Decoder `down[i].attn`, `up[i].attn`) and diffusers AttnDownEncoderBlock2D / AttnUpDecoderBlock2D, against
// both reference implementations run by tools/fixtures/autoencoder_attn.py (tiny KL with attention at the middle of
// three levels, tiny VQ with attention at the first level, weights stored as float16).
@testable import Autoencoders
import Checkpoints
import DiffusersBlocks
import Foundation
import NeuralNetwork
import TensorCore
import XCTest
@testable import CompVis

final class AttentionLevelTests: XCTestCase {
    func yaml(_ name: String) throws -> [String: Any] {
        let data = try Data(contentsOf: fixtures.appendingPathComponent("compvis_\(name).json"))
        return try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    func compvisRecords(_ name: String) throws -> [String: TensorRecord] {
        try CheckpointFile.open(fixtures.appendingPathComponent("compvis_\(name).safetensors")).tensors
    }

    /// The diffusers folder (AttnDownEncoderBlock2D / AttnUpDecoderBlock2D) reproduces diffusers and CompVis.
    func testKLDiffusersFolder() throws {
        let m = try AutoencoderKL.load(folder: fixtures.appendingPathComponent("attn_kl"))
        XCTAssertEqual(m.config.downBlockTypes.map(\.rawValue), ["DownEncoderBlock2D", "AttnDownEncoderBlock2D", "DownEncoderBlock2D"])
        XCTAssertEqual(m.encoder.downBlocks.map(\.attentions.count), [0, 1, 0])
        XCTAssertEqual(m.decoder.upBlocks.map(\.attentions.count), [0, 2, 0])
        XCTAssertEqual(m.loadReport?.unexpected, [])
        XCTAssertTrue(m.namedParameters.contains { $0.0 == "encoder.down_blocks.1.attentions.0.to_out.0.weight" })
        XCTAssertTrue(m.namedParameters.contains { $0.0 == "decoder.up_blocks.1.attentions.1.group_norm.bias" })
        try checkKL(m, "diffusers folder")
    }

    /// The CompVis checkpoint with its YAML: attn_resolutions [8] at resolution 16 -> attention at the 8 px level.
    func testKLCompVisCheckpoint() throws {
        let records = try compvisRecords("attn_kl")
        XCTAssertEqual(records["first_stage_model.encoder.down.1.attn.0.q.weight"]?.shape, [8, 8, 1, 1])
        XCTAssertNotNil(records["first_stage_model.decoder.up.1.attn.1.proj_out.bias"])
        let (model, report) = try FirstStageModel.loadCompVis(records: records, yaml: try yaml("attn_kl"), normNumGroups: 2)
        guard case .kl(let m) = model else { return XCTFail("expected an AutoencoderKL") }
        XCTAssertEqual(report.loaded.count, m.namedParameters.count)
        XCTAssertEqual(report.unexpected, [])
        XCTAssertEqual(m.config.scalingFactor, 0.5)
        let d = try AutoencoderKLConfig.load(fixtures.appendingPathComponent("attn_kl/config.json"))
        XCTAssertEqual(m.config.downBlockTypes, d.downBlockTypes)
        XCTAssertEqual(m.config.upBlockTypes, d.upBlockTypes)
        try checkKL(m, "CompVis checkpoint")
        // Dropping one level attention weight is a load error naming it.
        var broken = records
        broken["first_stage_model.decoder.up.1.attn.0.k.weight"] = nil
        XCTAssertThrowsError(try FirstStageModel.loadCompVis(records: broken, yaml: try yaml("attn_kl"), normNumGroups: 2)) {
            XCTAssertTrue("\($0)".contains("decoder.up_blocks.1.attentions.0.to_k.weight"), "\($0)")
        }
    }

    func checkKL(_ m: AutoencoderKL, _ what: String) throws {
        let ref = try referenceTensors("attn_kl")
        let moments = GradMode.noGrad { m.encodeMoments(try! ref.get("x")) }
        assertParity(moments, try ref.get("moments_compvis"), "attn kl \(what) moments vs CompVis", tolerance: 1e-5)
        assertParity(moments, try ref.get("moments_diffusers"), "attn kl \(what) moments vs diffusers", tolerance: 1e-5)
        let decoded = try m.decode(try ref.get("z"), tiled: .never)
        assertParity(decoded, try ref.get("decoded_compvis"), "attn kl \(what) decoded vs CompVis", tolerance: 1e-5)
        assertParity(decoded, try ref.get("decoded_diffusers"), "attn kl \(what) decoded vs diffusers", tolerance: 1e-5)
    }

    /// The VQ diffusers folder stores its attentions under diffusers' old names (query/key/value/proj_attn).
    func testVQDiffusersFolderWithLegacyAttentionNames() throws {
        let raw = try FirstStageModel.weights(fixtures.appendingPathComponent("attn_vq"), variant: nil)
        XCTAssertNotNil(raw["encoder.down_blocks.0.attentions.0.query.weight"])
        XCTAssertNotNil(raw["decoder.mid_block.attentions.0.proj_attn.bias"])
        XCTAssertNil(raw["encoder.down_blocks.0.attentions.0.to_q.weight"])
        let m = try VQModel.load(folder: fixtures.appendingPathComponent("attn_vq"))
        XCTAssertEqual(m.loadReport?.unexpected, [])
        XCTAssertEqual(m.encoder.downBlocks.map(\.attentions.count), [1, 0])
        XCTAssertEqual(m.decoder.upBlocks.map(\.attentions.count), [0, 2])
        try checkVQ(m, "diffusers folder")
        let ref = try referenceTensors("attn_vq")
        assertParity(try m.decode(try ref.get("moments_diffusers")), try ref.get("decoded_quantized_diffusers"),
                     "attn vq decode (quantized) vs diffusers", tolerance: 1e-5)
    }

    /// vq-f8 style: attention at the first level (attn_resolutions [resolution]).
    func testVQCompVisCheckpoint() throws {
        let (model, report) = try FirstStageModel.loadCompVis(records: try compvisRecords("attn_vq"), yaml: try yaml("attn_vq"), normNumGroups: 2)
        guard case .vq(let m) = model else { return XCTFail("expected a VQModel") }
        XCTAssertEqual(report.unexpected, [])
        XCTAssertEqual(m.config.downBlockTypes.map(\.rawValue), ["AttnDownEncoderBlock2D", "DownEncoderBlock2D"])
        XCTAssertEqual(m.config.upBlockTypes.map(\.rawValue), ["UpDecoderBlock2D", "AttnUpDecoderBlock2D"])
        try checkVQ(m, "CompVis checkpoint")
    }

    func checkVQ(_ m: VQModel, _ what: String) throws {
        let ref = try referenceTensors("attn_vq")
        let h = try m.encode(try ref.get("x"))
        assertParity(h, try ref.get("moments_compvis"), "attn vq \(what) h vs CompVis", tolerance: 1e-5)
        assertParity(h, try ref.get("moments_diffusers"), "attn vq \(what) h vs diffusers", tolerance: 1e-5)
        let decoded = try m.decode(try ref.get("z"), forceNotQuantize: true)
        assertParity(decoded, try ref.get("decoded_compvis"), "attn vq \(what) decoded vs CompVis", tolerance: 1e-5)
        assertParity(decoded, try ref.get("decoded_diffusers"), "attn vq \(what) decoded vs diffusers", tolerance: 1e-5)
    }

    /// attn_resolutions -> block types, following the resolution as CompVis Encoder / Decoder do.
    func testAttentionResolutionsToBlockTypes() throws {
        func kl(_ mult: [Int], _ res: Int, _ attn: [Int], attnType: String = "vanilla") throws -> AutoencoderKLConfig {
            let y: [String: Any] = ["target": "ldm.models.autoencoder.AutoencoderKL", "params": ["embed_dim": 4, "ddconfig": [
                "double_z": true, "z_channels": 4, "resolution": res, "in_channels": 3, "out_ch": 3, "ch": 32, "ch_mult": mult,
                "num_res_blocks": 1, "attn_resolutions": attn, "attn_type": attnType] as [String: Any]] as [String: Any]]
            guard case .kl(let c) = try FirstStageConfig.fromCompVis(y) else { throw AutoencoderError("not KL") }
            return c
        }
        // The zoo's vq-f8 geometry (256 px, ch_mult [1,2,2,4], attn_resolutions [32]): the last level only.
        let f8 = try kl([1, 2, 2, 4], 256, [32])
        XCTAssertEqual(f8.downBlockTypes.map(\.rawValue), ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "AttnDownEncoderBlock2D"])
        XCTAssertEqual(f8.upBlockTypes.map(\.rawValue), ["AttnUpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"])
        // vq-f16 (ch_mult [1,1,2,2,4], attn_resolutions [16]).
        let f16 = try kl([1, 1, 2, 2, 4], 256, [16])
        XCTAssertEqual(f16.downBlockTypes.map { $0.rawValue.hasPrefix("Attn") }, [false, false, false, false, true])
        // Two levels, resolution not a power of two: encoder 20 -> 10, decoder 20 // 2 = 10 -> 20.
        let odd = try kl([1, 1], 20, [20])
        XCTAssertEqual(odd.downBlockTypes.map(\.rawValue), ["AttnDownEncoderBlock2D", "DownEncoderBlock2D"])
        XCTAssertEqual(odd.upBlockTypes.map(\.rawValue), ["UpDecoderBlock2D", "AttnUpDecoderBlock2D"])
        // Encoder and decoder disagree when resolution is odd at a level: 10 -> 5 -> 2 vs 2 -> 4 -> 8.
        let uneven = try kl([1, 1, 1], 10, [5, 4])
        XCTAssertEqual(uneven.downBlockTypes.map { $0.rawValue.hasPrefix("Attn") }, [false, true, false])
        XCTAssertEqual(uneven.upBlockTypes.map { $0.rawValue.hasPrefix("Attn") }, [false, true, false])
        let uneven2 = try kl([1, 1, 1], 10, [8])
        XCTAssertEqual(uneven2.downBlockTypes.map { $0.rawValue.hasPrefix("Attn") }, [false, false, false])
        XCTAssertEqual(uneven2.upBlockTypes.map { $0.rawValue.hasPrefix("Attn") }, [false, false, true])
        // attn_type none: every AttnBlock is an Identity.
        let none = try kl([1, 2], 64, [64])
        XCTAssertEqual(none.downBlockTypes.first?.rawValue, "AttnDownEncoderBlock2D")
        let noneAttn = try kl([1, 2], 64, [64], attnType: "none")
        XCTAssertEqual(noneAttn.downBlockTypes.map(\.rawValue), ["DownEncoderBlock2D", "DownEncoderBlock2D"])
        XCTAssertFalse(noneAttn.midBlockAddAttention)
        // Unknown block types are still refused.
        var bad = f8
        bad.downBlockTypes[0] = .other("AttnSkipDownBlock2D")
        XCTAssertThrowsError(try bad.validate()) { XCTAssertTrue("\($0)".contains("AttnSkipDownBlock2D"), "\($0)") }
    }

    func testKeyRulesForLevelAttention() throws {
        let all = [true, true, true]
        let layout = VAELayout(levels: 3, layersPerBlock: 2, encoderAttention: all, decoderAttention: all)
        let sample = try XCTUnwrap(compvisRecords("attn_kl").values.first)
        func map(_ k: String) -> String? { layout.map([k: sample], prefix: "first_stage_model.").keys.first }
        XCTAssertEqual(map("first_stage_model.encoder.down.1.attn.0.norm.weight"), "encoder.down_blocks.1.attentions.0.group_norm.weight")
        XCTAssertEqual(map("first_stage_model.encoder.down.2.attn.1.q.bias"), "encoder.down_blocks.2.attentions.1.to_q.bias")
        XCTAssertEqual(map("first_stage_model.decoder.up.0.attn.2.proj_out.weight"), "decoder.up_blocks.2.attentions.2.to_out.0.weight")
        XCTAssertEqual(map("first_stage_model.decoder.up.2.attn.0.v.weight"), "decoder.up_blocks.0.attentions.0.to_v.weight")
        XCTAssertEqual(map("first_stage_model.decoder.mid.attn_1.k.weight"), "decoder.mid_block.attentions.0.to_k.weight")
        XCTAssertEqual(map("first_stage_model.decoder.up.1.block.0.nin_shortcut.bias"), "decoder.up_blocks.1.resnets.0.conv_shortcut.bias")
        func legacy(_ k: String) -> String? { mapKeys([k: sample], FirstStageModel.legacyAttentionRules).keys.first }
        XCTAssertEqual(legacy("encoder.down_blocks.0.attentions.1.key.bias"), "encoder.down_blocks.0.attentions.1.to_k.bias")
        XCTAssertEqual(legacy("decoder.mid_block.attentions.0.proj_attn.weight"), "decoder.mid_block.attentions.0.to_out.0.weight")
        XCTAssertEqual(legacy("decoder.mid_block.attentions.0.group_norm.weight"), "decoder.mid_block.attentions.0.group_norm.weight")
        XCTAssertEqual(legacy("encoder.down_blocks.0.resnets.0.conv1.weight"), "encoder.down_blocks.0.resnets.0.conv1.weight")
    }
}
