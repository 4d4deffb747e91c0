import Checkpoints
import Foundation
import NeuralNetwork
import TensorCore
import Tokenizers
import XCTest
@testable import Conditioning
@testable import CompVis

// CompVis' BERTEmbedder checkpoint names (x-transformers TransformerWrapper under cond_stage_model.transformer.*)
// loaded into LDMBertModel through CompVis' BERTLayout rule table, against the CompVis module itself on a tiny
// random BERTEmbedder (tools/fixtures/compvis_ldm_bert.py: n_embed 16, n_layer 2, 22 tokens, max_seq_len 12).

final class BERTEmbedderTests: XCTestCase {
    var dir: URL { fixturesURL.appendingPathComponent("bert_embedder") }

    func records() throws -> [String: TensorRecord] { try CheckpointFile.open(dir.appendingPathComponent("model.safetensors")).tensors }

    func config() throws -> LDMBertConfig {
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent("config.json"))) as? [String: Any])
        let p = try XCTUnwrap(json["params"] as? [String: Int])
        return try .bertEmbedder(nEmbed: try XCTUnwrap(p["n_embed"]), nLayer: try XCTUnwrap(p["n_layer"]),
                                 vocabSize: try XCTUnwrap(p["vocab_size"]), maxSeqLen: try XCTUnwrap(p["max_seq_len"]))
    }

    func testEmbeddingsMatchCompVis() throws {
        let model = try LDMBertModel(config: config(), bertEmbedder: records())
        let io = try fixtureTensors("bert_embedder/io.safetensors")
        for i in 0..<2 {
            let ids = try XCTUnwrap(io["ids_\(i)"])
            let flat = ids.toArray().map { Int($0) }, n = ids.shape[1]
            let out = try GradMode.noGrad { try model(inputIDs: [Array(flat[0..<n]), Array(flat[n...])]) }
            assertParity(out, try XCTUnwrap(io["z_\(i)"]), "BERTEmbedder \(n) tokens")
        }
        // Prompts through CompVis' BERTTokenizer (BertTokenizerFast, padding to max_seq_len) and the embedder.
        let prompts = try JSONDecoder().decode([String].self, from: Data(contentsOf: dir.appendingPathComponent("prompts.json")))
        let tok = try BertTokenizer(vocabularyFile: dir.appendingPathComponent("vocab.txt"), modelMaxLength: 12)
        let ids = prompts.map { tok($0, maxLength: 12) }
        let refIDs = try XCTUnwrap(io["prompt_ids"]).toArray().map { Int($0) }
        XCTAssertEqual(ids.flatMap { $0 }, refIDs)
        let z = try GradMode.noGrad { try model(inputIDs: ids) }
        assertParity(z, try XCTUnwrap(io["prompt_z"]), "BERTEmbedder prompts")
    }

    /// The rule table gives every CompVis tensor the LDMBertModel name diffusers' convert_ldm_bert_checkpoint gives it,
    /// and maps back (the reverse direction of `ldm convert`).
    func testNamesMatchDiffusersConverter() throws {
        let expected = try JSONDecoder().decode([String: String].self, from: Data(contentsOf: dir.appendingPathComponent("diffusers_names.json")))
        let recs = try records()
        let (layout, mapped, unmapped) = try BERTLayout.toDiffusers(recs)
        XCTAssertEqual(layout.layers, 2)
        XCTAssertEqual(unmapped, [])
        XCTAssertEqual(Dictionary(uniqueKeysWithValues: mapped.map { ($0.source.name, $0.name) }), expected)
        XCTAssertEqual(Set(mapped.map(\.name)), layout.diffusersKeys)
        for (compvis, diffusers) in expected {
            let shape = try XCTUnwrap(recs[compvis]).shape
            let back = try XCTUnwrap(layout.mapping.toCompVis(diffusers, shape: shape))
            XCTAssertEqual(BERTLayout.compvisPrefix + back.0, compvis)
            XCTAssertEqual(back.1, shape)
        }
    }

    /// Strict: missing or extra BERTEmbedder tensors fail with their names; only the unused to_logits may be absent.
    func testStrictLoading() throws {
        let recs = try records(), cfg = try config()
        let p = BERTLayout.compvisPrefix
        // to_logits is skipped by return_embeddings=True: loading without it is fine.
        var noLogits = recs
        noLogits[p + "to_logits.weight"] = nil; noLogits[p + "to_logits.bias"] = nil
        XCTAssertNoThrow(try LDMBertModel(config: cfg, bertEmbedder: noLogits))
        var missing = recs
        missing[p + "attn_layers.layers.3.1.net.2.weight"] = nil
        XCTAssertThrowsError(try LDMBertModel(config: cfg, bertEmbedder: missing)) { e in
            XCTAssertTrue("\(e)".contains("model.layers.1.fc2.weight"), "\(e)")
        }
        // A GLU feed-forward (ff_glu=True: net.0.proj) has no LDM-BERT counterpart.
        var glu = recs
        glu[p + "attn_layers.layers.1.1.net.0.proj.weight"] = recs[p + "attn_layers.layers.1.1.net.0.0.weight"]
        XCTAssertThrowsError(try LDMBertModel(config: cfg, bertEmbedder: glu)) { e in
            XCTAssertTrue("\(e)".contains("net.0.proj.weight"), "\(e)")
        }
        // The YAML's n_layer decides: one layer too many is missing, one too few leaves tensors unused.
        var three = cfg; three.encoderLayers = 3
        XCTAssertThrowsError(try LDMBertModel(config: three, bertEmbedder: recs)) { e in XCTAssertTrue("\(e)".contains("model.layers.2."), "\(e)") }
        var one = cfg; one.encoderLayers = 1
        XCTAssertThrowsError(try LDMBertModel(config: one, bertEmbedder: recs)) { e in XCTAssertTrue("\(e)".contains("model.layers.1."), "\(e)") }
        // Not an ('a', 'f') * depth Encoder.
        var odd = recs
        for k in recs.keys where k.hasPrefix(p + "attn_layers.layers.3.") { odd[k] = nil }
        XCTAssertThrowsError(try LDMBertModel(config: cfg, bertEmbedder: odd))
        XCTAssertThrowsError(try LDMBertConfig.bertEmbedder(nEmbed: 0, nLayer: 1))
    }
}
