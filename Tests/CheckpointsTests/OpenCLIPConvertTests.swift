// SD2 OpenCLIP text encoder (cond_stage_model.model.*) <-> diffusers text_encoder, following
// diffusers/loaders/single_file_utils.py convert_open_clip_checkpoint: names, shapes, q/k/v = in_proj thirds
// bit for bit, resblocks.23 / text_projection / logit_scale not converted, in_proj restored exactly.
import Foundation
import XCTest
@testable import Checkpoints
@testable import CompVis

final class OpenCLIPConvertTests: XCTestCase {
    var tmp: URL!
    let width = 8, mlp = 32, vocab = 12, context = 5, blocks = 24

    override func setUpWithError() throws {
        tmp = FileManager.default.temporaryDirectory.appendingPathComponent("ldm-openclip-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: tmp) }

    /// A tiny SD2-style CompVis file: OpenCLIP text tower with 24 resblocks (so resblocks.23 exists), deterministic bytes.
    func writeSD2(_ url: URL, dtype: StorageDType = .F32) throws -> [String: SafeTensorsEntry] {
        var state: UInt64 = 0x2545F4914F6CDD1D
        func bytes(_ n: Int) -> Data {
            var words = [UInt64](repeating: 0, count: (n + 7) / 8)
            for i in words.indices { state = state &* 6364136223846793005 &+ 1442695040888963407; words[i] = state ^ (state >> 31) }
            return words.withUnsafeBytes { Data($0.prefix(n)) }
        }
        let p = "cond_stage_model.model."
        var shapes: [(String, [Int])] = [("token_embedding.weight", [vocab, width]), ("positional_embedding", [context, width]),
                                         ("ln_final.weight", [width]), ("ln_final.bias", [width]),
                                         ("text_projection", [width, width]), ("logit_scale", [])]
        for n in 0..<blocks {
            let b = "transformer.resblocks.\(n)."
            shapes += [(b + "ln_1.weight", [width]), (b + "ln_1.bias", [width]),
                       (b + "attn.in_proj_weight", [3 * width, width]), (b + "attn.in_proj_bias", [3 * width]),
                       (b + "attn.out_proj.weight", [width, width]), (b + "attn.out_proj.bias", [width]),
                       (b + "ln_2.weight", [width]), (b + "ln_2.bias", [width]),
                       (b + "mlp.c_fc.weight", [mlp, width]), (b + "mlp.c_fc.bias", [mlp]),
                       (b + "mlp.c_proj.weight", [width, mlp]), (b + "mlp.c_proj.bias", [width])]
        }
        var entries = shapes.map { SafeTensorsEntry(name: p + $0.0, dtype: dtype, shape: $0.1, bytes: bytes($0.1.reduce(1, *) * dtype.byteSize)) }
        entries.append(SafeTensorsEntry(name: "alphas_cumprod", dtype: .F32, shape: [4], bytes: bytes(16)))
        try SafeTensors.write(entries, metadata: [:], to: url)
        return Dictionary(entries.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
    }

    func testSD2TextEncoderToDiffusersAndBack() throws {
        let src = tmp.appendingPathComponent("sd2.safetensors")
        let original = try writeSD2(src)
        let folder = tmp.appendingPathComponent("pipe")
        let lines = try Converter.convert(input: src, output: folder, options: ConvertOptions()).joined(separator: "\n")
        XCTAssertTrue(lines.contains(OpenCLIPMapping.forwardNote), lines)
        XCTAssertTrue(lines.contains("not converted"), lines)
        XCTAssertTrue(lines.contains("cond_stage_model.model.* (14)"), lines)   // 12 of resblocks.23, text_projection, logit_scale
        XCTAssertTrue(lines.contains("alphas_cumprod"), lines)

        // diffusers' names: 23 layers (resblocks.23 dropped), q/k/v split, no text_projection / logit_scale.
        let te = try CheckpointFile.open(folder.appendingPathComponent("text_encoder/model.safetensors"))
        let tensors = te.tensors
        var want: [String: [Int]] = ["text_model.embeddings.token_embedding.weight": [vocab, width],
                                     "text_model.embeddings.position_embedding.weight": [context, width],
                                     "text_model.final_layer_norm.weight": [width], "text_model.final_layer_norm.bias": [width]]
        for n in 0..<(blocks - 1) {
            let l = "text_model.encoder.layers.\(n)."
            for q in ["q_proj", "k_proj", "v_proj"] { want[l + "self_attn.\(q).weight"] = [width, width]; want[l + "self_attn.\(q).bias"] = [width] }
            want[l + "self_attn.out_proj.weight"] = [width, width]; want[l + "self_attn.out_proj.bias"] = [width]
            for ln in ["layer_norm1", "layer_norm2"] { want[l + ln + ".weight"] = [width]; want[l + ln + ".bias"] = [width] }
            want[l + "mlp.fc1.weight"] = [mlp, width]; want[l + "mlp.fc1.bias"] = [mlp]
            want[l + "mlp.fc2.weight"] = [width, mlp]; want[l + "mlp.fc2.bias"] = [width]
        }
        XCTAssertEqual(Set(tensors.keys), Set(want.keys))
        for (k, s) in want { XCTAssertEqual(tensors[k]?.shape, s, k) }

        // Bytes: q/k/v are the in_proj thirds; renamed tensors are unchanged.
        let p = "cond_stage_model.model."
        for n in [0, 7, 22] {
            for (leaf, rowBytes) in [("weight", width * width * 4), ("bias", width * 4)] {
                let fusedBytes = try XCTUnwrap(original[p + "transformer.resblocks.\(n).attn.in_proj_\(leaf)"]).bytes
                for (i, q) in ["q_proj", "k_proj", "v_proj"].enumerated() {
                    let got = try XCTUnwrap(tensors["text_model.encoder.layers.\(n).self_attn.\(q).\(leaf)"]).rawData()
                    XCTAssertEqual(got, fusedBytes.subdata(in: fusedBytes.startIndex + i * rowBytes ..< fusedBytes.startIndex + (i + 1) * rowBytes), "\(n) \(q) \(leaf)")
                }
            }
            XCTAssertEqual(try tensors["text_model.encoder.layers.\(n).mlp.fc2.weight"]?.rawData(),
                           original[p + "transformer.resblocks.\(n).mlp.c_proj.weight"]?.bytes)
            XCTAssertEqual(try tensors["text_model.encoder.layers.\(n).layer_norm1.bias"]?.rawData(),
                           original[p + "transformer.resblocks.\(n).ln_1.bias"]?.bytes)
        }
        XCTAssertEqual(try tensors["text_model.embeddings.position_embedding.weight"]?.rawData(), original[p + "positional_embedding"]?.bytes)
        XCTAssertEqual(try tensors["text_model.final_layer_norm.weight"]?.rawData(), original[p + "ln_final.weight"]?.bytes)

        // Config as SD2's text_encoder/config.json, sizes from shapes.
        let cfgData = try Data(contentsOf: folder.appendingPathComponent("text_encoder/config.json"))
        let cfg = try XCTUnwrap(JSONSerialization.jsonObject(with: cfgData) as? [String: Any])
        XCTAssertEqual(cfg["hidden_act"] as? String, "gelu")
        XCTAssertEqual(cfg["num_hidden_layers"] as? Int, blocks - 1)
        XCTAssertEqual(cfg["hidden_size"] as? Int, width)
        XCTAssertEqual(cfg["intermediate_size"] as? Int, mlp)
        XCTAssertEqual(cfg["vocab_size"] as? Int, vocab)
        XCTAssertEqual(cfg["max_position_embeddings"] as? Int, context)
        XCTAssertEqual(cfg["projection_dim"] as? Int, 512)

        // Back to CompVis: every kept tensor, in_proj bit-identical; the dropped ones are reported as not restorable.
        let back = tmp.appendingPathComponent("back.safetensors")
        let backLines = try Converter.convert(input: folder, output: back, options: ConvertOptions(target: .compvis)).joined(separator: "\n")
        XCTAssertTrue(backLines.contains(OpenCLIPMapping.reverseNote), backLines)
        let restored = try CheckpointFile.open(back).tensors
        let dropped = Set(original.keys.filter { $0.contains(".resblocks.23.") || $0.hasSuffix("text_projection")
                                                 || $0.hasSuffix("logit_scale") || $0 == "alphas_cumprod" })
        XCTAssertEqual(dropped.count, 15)
        XCTAssertEqual(Set(restored.keys), Set(original.keys).subtracting(dropped))
        for (k, r) in restored {
            let o = try XCTUnwrap(original[k], k)
            XCTAssertEqual(r.shape, o.shape, k)
            XCTAssertEqual(r.dtype, o.dtype, k)
            XCTAssertEqual(try r.rawData(), o.bytes, k)
        }
        XCTAssertEqual(restored.keys.filter { $0.contains("in_proj") }.count, 2 * (blocks - 1))
    }

    /// F16 records and a model with fewer than 24 resblocks (nothing dropped); no config.json: layer-count test fails,
    /// so an explicit `openCLIP` flag selects the mapping.
    func testLibraryRoundTripF16AndExplicitFlag() throws {
        let src = tmp.appendingPathComponent("sd2h.safetensors")
        _ = try writeSD2(src, dtype: .F16)
        let file = try CheckpointFile.open(src)
        let few = file.tensors.filter { !$0.key.contains(".resblocks.") || $0.key.contains(".resblocks.0.") || $0.key.contains(".resblocks.1.") }
        let (layout, comps, unmapped) = try Converter.compvisToDiffusers(few)
        XCTAssertTrue(layout.openCLIPTextEncoder)
        XCTAssertEqual(Set(unmapped), ["cond_stage_model.model.text_projection", "cond_stage_model.model.logit_scale", "alphas_cumprod"])
        let te = try XCTUnwrap(comps["text_encoder"])
        XCTAssertEqual(te.count, 4 + 2 * 16)
        var named: [String: TensorRecord] = [:]
        for m in te {
            let data = try m.source.rawData()
            named["text_encoder." + m.name] = try TensorRecord(name: m.name, dtype: m.source.dtype, shape: m.shape,
                                                                storage: TensorStorage(buffer: ByteBuffer(copying: data), offset: 0, byteCount: data.count))
        }
        XCTAssertFalse(OpenCLIPMapping.looksLikeOpenCLIP(diffusersKeys: Array(named.keys)))
        let (back, un) = try Converter.diffusersToCompVis(named, openCLIP: true)
        XCTAssertEqual(un, [])
        XCTAssertEqual(back.count, few.count - 3)
        for m in back {
            let o = try XCTUnwrap(few[m.name], m.name)
            XCTAssertEqual(m.shape, o.shape, m.name)
            XCTAssertEqual(try m.source.rawData(), try o.rawData(), m.name)
        }
        // A q/k/v set with one part missing is not fused but reported.
        named.removeValue(forKey: "text_encoder.text_model.encoder.layers.1.self_attn.k_proj.bias")
        let (_, un2) = try Converter.diffusersToCompVis(named, openCLIP: true)
        XCTAssertEqual(Set(un2), ["text_encoder.text_model.encoder.layers.1.self_attn.q_proj.bias",
                                  "text_encoder.text_model.encoder.layers.1.self_attn.v_proj.bias"])
    }

    func testBadInProjShapeIsAnError() throws {
        let e = SafeTensorsEntry(name: "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_bias", dtype: .F32, shape: [7], bytes: Data(count: 28))
        let url = tmp.appendingPathComponent("bad.safetensors")
        try SafeTensors.write([e], metadata: [:], to: url)
        XCTAssertThrowsError(try Converter.compvisToDiffusers(try CheckpointFile.open(url).tensors)) { err in
            XCTAssertTrue("\(err)".contains("in_proj_bias"), "\(err)")
        }
    }
}
