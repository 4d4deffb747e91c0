// The CompVis <-> diffusers rule table (Sources/CompVis: RenameTable.swift and the per-component tables) against diffusers' own converters
// (single_file_utils.py convert_ldm_unet/vae/clip_checkpoint), as recorded by tools/fixtures/layouts.py
// in Fixtures/layouts.json, and the configs derived from shapes against the models' saved configs.
import Autoencoders
import Foundation
import UNetModels
import XCTest
@testable import Checkpoints
@testable import CompVis

enum LayoutFixtures {
    struct Pair { let compvis: String; let compvisShape: [Int]; let diffusers: String; let diffusersShape: [Int] }
    struct Case { let pairs: [Pair]; let configs: [String: [String: Any]] }

    static let json: [String: Any] = {
        guard let d = try? Data(contentsOf: Fixtures.url("layouts.json")),
              let o = try? JSONSerialization.jsonObject(with: d) as? [String: Any] else { return [:] }
        return o
    }()

    static func load(_ name: String) throws -> Case {
        guard let c = json[name] as? [String: Any], let ps = c["pairs"] as? [[Any]],
              let comps = c["components"] as? [String: [String: Any]] else {
            throw CheckpointError("layouts.json: no case \(name)")
        }
        let pairs = try ps.map { p -> Pair in
            guard p.count == 4, let a = p[0] as? String, let sa = p[1] as? [Int], let b = p[2] as? String, let sb = p[3] as? [Int] else {
                throw CheckpointError("layouts.json: bad pair \(p)")
            }
            return Pair(compvis: a, compvisShape: sa, diffusers: b, diffusersShape: sb)
        }
        var configs: [String: [String: Any]] = [:]
        for (k, v) in comps { configs[k] = v["config"] as? [String: Any] }
        return Case(pairs: pairs, configs: configs)
    }

    static let cases = ["sd", "unet_b", "sd_unet4"]
}

final class LayoutMappingTests: XCTestCase {
    func testEveryKeyAgreesWithDiffusersConverters() throws {
        for name in LayoutFixtures.cases {
            let c = try LayoutFixtures.load(name)
            XCTAssertGreaterThan(c.pairs.count, 400, name)
            let fromCompVis = try PipelineLayout.detect(compvis: c.pairs.map(\.compvis))
            let fromDiffusers = try PipelineLayout.detect(diffusers: c.pairs.map(\.diffusers))
            XCTAssertEqual(fromCompVis.unet, fromDiffusers.unet, name)
            XCTAssertEqual(fromCompVis.vae, fromDiffusers.vae, name)
            XCTAssertEqual(fromCompVis.textEncoder, fromDiffusers.textEncoder, name)
            var mismatches = 0
            for p in c.pairs {
                let d = fromCompVis.toDiffusers(p.compvis, shape: p.compvisShape)
                if d.map({ "\($0.component).\($0.key)" }) != p.diffusers || d?.shape != p.diffusersShape {
                    mismatches += 1
                    if mismatches < 5 { XCTFail("\(name): \(p.compvis) -> \(String(describing: d)), diffusers: \(p.diffusers) \(p.diffusersShape)") }
                }
                let parts = p.diffusers.split(separator: ".", maxSplits: 1).map(String.init)
                let back = fromDiffusers.toCompVis(component: parts[0], key: parts[1], shape: p.diffusersShape)
                if back?.name != p.compvis || back?.shape != p.compvisShape {
                    mismatches += 1
                    if mismatches < 5 { XCTFail("\(name): \(p.diffusers) -> \(String(describing: back)), expected \(p.compvis) \(p.compvisShape)") }
                }
            }
            XCTAssertEqual(mismatches, 0, name)
        }
    }

    func testLayoutDescriptionMatchesConfigs() throws {
        for name in LayoutFixtures.cases {
            let c = try LayoutFixtures.load(name)
            let layout = try PipelineLayout.detect(compvis: c.pairs.map(\.compvis))
            let cfg = try XCTUnwrap(c.configs["unet"], name)
            let unet = try XCTUnwrap(layout.unet, name)
            let types = try XCTUnwrap(cfg["down_block_types"] as? [String])
            XCTAssertEqual(unet.levels, types.count, name)
            XCTAssertEqual(unet.layersPerBlock, cfg["layers_per_block"] as? Int, name)
            XCTAssertEqual(unet.attention, types.map { $0.hasPrefix("CrossAttn") }, name)
            XCTAssertEqual(unet.rules.count, Set(unet.rules.map(\.compvis)).count, "\(name): duplicate CompVis prefixes")
            XCTAssertEqual(unet.rules.count, Set(unet.rules.map(\.diffusers)).count, "\(name): duplicate diffusers prefixes")
            if let v = c.configs["vae"], let vae = layout.vae {
                XCTAssertEqual(vae.levels, (v["block_out_channels"] as? [Int])?.count)
                XCTAssertEqual(vae.layersPerBlock, v["layers_per_block"] as? Int)
            }
        }
    }

    func testDerivedConfigsMatchSavedConfigs() throws {
        for name in LayoutFixtures.cases {
            let c = try LayoutFixtures.load(name)
            let layout = try PipelineLayout.detect(compvis: c.pairs.map(\.compvis))
            func shapes(_ comp: String) -> [String: [Int]] {
                Dictionary(c.pairs.filter { $0.diffusers.hasPrefix(comp + ".") }
                    .map { (String($0.diffusers.dropFirst(comp.count + 1)), $0.diffusersShape) }, uniquingKeysWith: { a, _ in a })
            }
            func same(_ derived: [String: Any], _ saved: [String: Any], _ keys: [String], _ what: String) {
                for k in keys {
                    func norm(_ v: Any?) -> String? {   // compare as JSON text (Swift values vs JSONSerialization's)
                        v.flatMap { try? JSONSerialization.data(withJSONObject: [$0]) }.map { String(decoding: $0, as: UTF8.self) }
                    }
                    let a = norm(derived[k]), b = norm(saved[k])
                    XCTAssertNotNil(b, "\(name) \(what).\(k) missing from the saved config")
                    XCTAssertEqual(a, b, "\(name) \(what).\(k)")
                }
            }
            let unet = try DiffusersConfigs.unet(try XCTUnwrap(layout.unet), shapes: shapes("unet")).config
            same(unet, try XCTUnwrap(c.configs["unet"]), ["in_channels", "out_channels", "block_out_channels", "layers_per_block",
                 "down_block_types", "up_block_types", "cross_attention_dim", "transformer_layers_per_block",
                 "use_linear_projection", "mid_block_type", "_class_name"], "unet")
            if let saved = c.configs["vae"], let vl = layout.vae {
                same(try DiffusersConfigs.vae(vl, shapes: shapes("vae")).config, saved,
                     ["in_channels", "out_channels", "latent_channels", "block_out_channels", "layers_per_block",
                      "down_block_types", "up_block_types", "_class_name"], "vae")
            }
            if let saved = c.configs["text_encoder"] {
                same(try DiffusersConfigs.clipText(shapes: shapes("text_encoder")).config, saved,
                     ["hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size", "max_position_embeddings",
                      "architectures", "model_type"], "text_encoder")
            }
        }
    }

    /// Loading and `ldm convert` use one table per component: the UNet and VAE tables built from the saved diffusers
    /// configs (as loading builds them from a typed config) equal the tables read from the CompVis names (as `ldm
    /// convert` builds them), and the loader's names agree with diffusers' converters pair by pair.
    func testLoadingTablesAreTheConvertTables() throws {
        for name in LayoutFixtures.cases {
            let c = try LayoutFixtures.load(name)
            let layout = try PipelineLayout.detect(compvis: c.pairs.map(\.compvis))
            func data(_ comp: String) throws -> Data { try JSONSerialization.data(withJSONObject: try XCTUnwrap(c.configs[comp], name)) }
            let unetConfig = try UNetConfig.decode(try data("unet"))
            XCTAssertEqual(try UNetLayout(config: unetConfig).rules, try XCTUnwrap(layout.unet).rules, name)
            let keyMap = try CompVisUNetKeyMap(config: unetConfig)
            var checked = 0
            for p in c.pairs where p.compvis.hasPrefix(CompVisUNetKeyMap.compVisPrefix) {
                let key = String(p.compvis.dropFirst(CompVisUNetKeyMap.compVisPrefix.count))
                XCTAssertEqual(keyMap.diffusersName(key).map { "unet." + $0 }, p.diffusers, "\(name): \(p.compvis)")
                checked += 1
            }
            XCTAssertGreaterThan(checked, 100, name)
            if c.configs["vae"] != nil, let vae = layout.vae {
                let vaeConfig = try JSONDecoder().decode(AutoencoderKLConfig.self, from: try data("vae"))
                XCTAssertEqual(VAELayout(config: vaeConfig).rules, vae.rules, name)
            }
        }
    }

    func testUnknownNamesAreNotMapped() throws {
        let layout = try PipelineLayout.detect(compvis: try LayoutFixtures.load("sd").pairs.map(\.compvis))
        XCTAssertNil(layout.toDiffusers("model.diffusion_model.input_blocks.99.0.in_layers.0.weight", shape: [1]))
        XCTAssertNil(layout.toDiffusers("betas", shape: [1000]))
        XCTAssertNil(layout.toCompVis(component: "unet", key: "down_blocks.7.resnets.0.norm1.weight", shape: [1]))
        XCTAssertNil(layout.toCompVis(component: "scheduler", key: "x", shape: [1]))
        XCTAssertThrowsError(try UNetLayout.detect(compvis: ["time_embed.0.weight"]))
        XCTAssertThrowsError(try VAELayout.detect(diffusers: ["encoder.conv_in.weight"]))
    }

    func testDTypeCastsMatchTorch() throws {
        let c = try XCTUnwrap(LayoutFixtures.json["casts"] as? [String: [Int]])
        let f = try XCTUnwrap(c["f32"]).map { Float(bitPattern: UInt32(truncatingIfNeeded: $0)) }
        for (key, dt) in [("f16", StorageDType.F16), ("bf16", .BF16)] {
            let want = try XCTUnwrap(c[key]).map { UInt16(truncatingIfNeeded: $0) }
            let got = Converter.encode(f, as: dt).withUnsafeBytes { Array($0.bindMemory(to: UInt16.self)) }.map { UInt16(littleEndian: $0) }
            XCTAssertEqual(got.count, want.count)
            for i in 0..<min(got.count, want.count) where got[i] != want[i] {
                // NaN payloads may differ; both must be NaN.
                let nanBoth = dt == .F16 ? (got[i] & 0x7C00 == 0x7C00 && got[i] & 0x3FF != 0 && want[i] & 0x3FF != 0)
                                         : (got[i] & 0x7F80 == 0x7F80 && got[i] & 0x7F != 0 && want[i] & 0x7F != 0)
                XCTAssertTrue(nanBoth, "\(key) of \(f[i]): got \(String(got[i], radix: 16)), torch \(String(want[i], radix: 16))")
            }
        }
    }
}
