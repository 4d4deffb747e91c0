// The VAE rows of the CompVis <-> diffusers layout table for first stages with attention at resolution levels
// (ddconfig.attn_resolutions; diffusers AttnDownEncoderBlock2D / AttnUpDecoderBlock2D). The name pairs come from
// tools/fixtures/autoencoder_attn.py, whose mapping loads strictly into diffusers and reproduces the CompVis modules.
import Foundation
import XCTest
@testable import Checkpoints
@testable import CompVis

final class VAEAttentionLayoutTests: XCTestCase {
    func testLevelAttentionKeysMapBothWays() throws {
        let data = try Data(contentsOf: Fixtures.url("vae_attention_keys.json"))
        let root = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: [String: Any]])
        for kind in ["kl", "vq"] {
            let c = try XCTUnwrap(root[kind]), cfg = try XCTUnwrap(c["config"] as? [String: [String]])
            let pairs = try XCTUnwrap(c["pairs"] as? [[Any]]).map { p in
                (p[0] as! String, p[1] as! [Int], p[2] as! String, p[3] as! [Int])
            }
            XCTAssertTrue(pairs.contains { $0.0.contains(".attn.0.") }, kind)
            let compvis = pairs.map { PipelineLayout.vaePrefix + $0.0 }, diffusers = pairs.map { "vae." + $0.2 }
            let fromCompVis = try PipelineLayout.detect(compvis: compvis), fromDiffusers = try PipelineLayout.detect(diffusers: diffusers)
            let layout = try XCTUnwrap(fromCompVis.vae)
            XCTAssertEqual(layout, fromDiffusers.vae, kind)
            XCTAssertEqual(layout.encoderAttention, cfg["down_block_types"]?.map { $0.hasPrefix("Attn") }, kind)
            XCTAssertEqual(layout.decoderAttention, cfg["up_block_types"]?.map { $0.hasPrefix("Attn") }, kind)
            for (cv, cvShape, d, dShape) in pairs {
                let to = fromCompVis.toDiffusers(PipelineLayout.vaePrefix + cv, shape: cvShape)
                XCTAssertEqual(to?.component, "vae", cv)
                XCTAssertEqual(to?.key, d, cv)
                XCTAssertEqual(to?.shape, dShape, cv)
                let back = fromDiffusers.toCompVis(component: "vae", key: d, shape: dShape)
                XCTAssertEqual(back?.name, PipelineLayout.vaePrefix + cv, d)
                XCTAssertEqual(back?.shape, cvShape, d)
            }
            let shapes = Dictionary(uniqueKeysWithValues: pairs.map { ($0.2, $0.3) })
            let derived = try DiffusersConfigs.vae(layout, shapes: shapes).config
            XCTAssertEqual(derived["down_block_types"] as? [String], cfg["down_block_types"], kind)
            XCTAssertEqual(derived["up_block_types"] as? [String], cfg["up_block_types"], kind)
        }
    }
}
