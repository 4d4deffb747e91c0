import Checkpoints
import DiffusersBlocks
import Foundation
import NeuralNetwork
import TensorCore
import XCTest
@testable import UNetModels
@testable import CompVis

// The generated CompVis <-> diffusers table against the pairs diffusers' convert_ldm_unet_checkpoint produced from a
// CompVis openaimodel.UNetModel (tools/fixtures/unet.py).

final class CompVisUNetKeysTests: XCTestCase {
    struct Fixture: Decodable { let pairs: [[String]]; let unused: [String] }

    func check(_ name: String) throws {
        let data = try Data(contentsOf: fixturesURL.appendingPathComponent("compvis_keys_\(name).json"))
        let fixture = try JSONDecoder().decode(Fixture.self, from: data)
        struct Wrapper: Decodable { let config: UNetConfig }
        let config = try JSONDecoder().decode(Wrapper.self, from: data).config
        let map = try CompVisUNetKeyMap(config: config)
        let prefix = CompVisUNetKeyMap.compVisPrefix
        for pair in fixture.pairs {
            let compvis = String(pair[0].dropFirst(prefix.count))
            XCTAssertEqual(map.diffusersName(compvis), pair[1], pair[0])
            XCTAssertEqual(map.compVisName(pair[1]), compvis, pair[1])
        }
        // The model built from the same config has exactly the converter's parameter names.
        let model = try UNet2DConditionModel(config: config)
        XCTAssertEqual(Set(model.namedParameters.map(\.0)), Set(fixture.pairs.map { $0[1] }))
        XCTAssertEqual(fixture.unused, [])
        XCTAssertNil(map.diffusersName("model_ema.decay"))
    }

    func testSD1Layout() throws { try check("sd1") }
    func testThreeLevelsWithClassEmbeddingLayout() throws { try check("three_levels_classes") }

    /// The sd1 parity fixture renamed to CompVis names loads through the table and still matches diffusers.
    func testCompVisCheckpointLoadsAndMatches() throws {
        let dir = fixturesURL.appendingPathComponent("sd1")
        let config = try UNetConfig.decode(Data(contentsOf: dir.appendingPathComponent("config.json")))
        let map = try CompVisUNetKeyMap(config: config)
        var compvis: [String: TensorRecord] = ["cond_stage_model.transformer.text_model.final_layer_norm.weight": try XCTUnwrap(
            CheckpointFile.open(dir.appendingPathComponent("diffusion_pytorch_model.safetensors")).tensors["conv_in.bias"])]
        for (name, record) in try CheckpointFile.open(dir.appendingPathComponent("diffusion_pytorch_model.safetensors")).tensors {
            let key = CompVisUNetKeyMap.compVisPrefix + (try XCTUnwrap(map.compVisName(name), name))
            compvis[key] = record.renamed(key)
        }
        let model = try UNet2DConditionModel(config: config, compVisCheckpoint: compvis)
        let io = try fixtureTensors("sd1/io.safetensors")
        let out = try GradMode.noGrad {
            try model(sample: try XCTUnwrap(io["sample"]), timestep: [10, 981], encoderHiddenStates: io["encoder_hidden_states"])
        }
        _ = parity(out, try XCTUnwrap(io["out"]))
    }

    /// A CompVis UNetModel with legacy AttentionBlocks and scale-shift norm maps onto exactly the parameters (and
    /// shapes) of the equivalent UNet2DModel; fused qkv (3C, C, 1) becomes to_q / to_k / to_v (C, C).
    func testLegacyAttentionLayoutCoversModel() throws {
        struct Fixture: Decodable { let config: UNetConfig; let shapes: [String: [Int]] }
        let fixture = try JSONDecoder().decode(Fixture.self, from: Data(contentsOf: fixturesURL.appendingPathComponent("compvis_keys_uncond.json")))
        let map = try CompVisUNetKeyMap(config: fixture.config)
        var expected: [String: [Int]] = [:]
        for (key, shape) in fixture.shapes {
            let (names, _) = try XCTUnwrap(map.diffusersNames(String(key.dropFirst(CompVisUNetKeyMap.compVisPrefix.count))), key)
            let squeezed = names.count == 3 ? [shape[0] / 3] + shape.dropFirst().filter { $0 != 1 } : shape.filter { $0 != 1 }
            for n in names { XCTAssertNil(expected.updateValue(squeezed, forKey: n), "\(n) mapped twice") }
        }
        let model = try UNet2DModel(config: fixture.config)
        XCTAssertEqual(Set(model.namedParameters.map(\.0)), Set(expected.keys))
        for (name, p) in model.namedParameters { XCTAssertEqual(p.shape.filter { $0 != 1 }, expected[name], name) }
    }

    final class MidAttention: Module {
        let attention = Attention(queryDim: 32, heads: 4, dimHead: 8, bias: true, normNumGroups: 32, residualConnection: true)
        var namedParameters: [(String, Tensor)] { scoped("mid_block.attentions.0", attention) }
    }

    /// CompVis AttentionBlock (QKVAttentionLegacy and QKVAttention orders) run in torch vs the split weights here.
    func testLegacyAttentionBlockParity() throws {
        struct Fixture: Decodable { let config: UNetConfig }
        let config = try JSONDecoder().decode(Fixture.self, from: Data(contentsOf: fixturesURL.appendingPathComponent("compvis_keys_uncond.json"))).config
        let records = try CheckpointFile.open(fixturesURL.appendingPathComponent("compvis_attention_block.safetensors")).tensors
        let io = try fixtureTensors("compvis_attention_block.safetensors")
        for (order, isNew) in [("legacy", false), ("new", true)] {
            var block: [String: TensorRecord] = [:]
            for (k, r) in records where k.hasPrefix(order + ".model.") { block[String(k.dropFirst(order.count + 1))] = r }
            let wrapper = MidAttention()
            let unused = try CompVisUNetKeyMap(config: config, newAttentionOrder: isNew).load(block, into: wrapper)
            XCTAssertEqual(unused, [])
            let x = try XCTUnwrap(io["\(order).x"])
            let out = GradMode.noGrad { wrapper.attention.spatial(x) }
            let err = parity(out, try XCTUnwrap(io["\(order).out"]))
            print("CompVis AttentionBlock (\(order) qkv order) parity: max abs err \(err)")
        }
        XCTAssertThrowsError(try CompVisUNetKeyMap(config: config).load([:], into: MidAttention()))
    }
}
