import Checkpoints
import Foundation
import NeuralNetwork
import TensorCore
import Tokenizers
import XCTest
@testable import Conditioning
@testable import CompVis

// Parity with transformers CLIPTextModel, diffusers' clip_skip, the web UI emphasis and CompVis ClassEmbedder
// (tools/fixtures/text_encoders.py).

let fixturesURL = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")

func fixtureTensors(_ relativePath: String) throws -> [String: Tensor] {
    try CheckpointFile.open(fixturesURL.appendingPathComponent(relativePath)).tensors.mapValues { try $0.tensor().float32() }
}

func assertParity(_ out: Tensor, _ ref: Tensor, _ label: String, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(out.shape, ref.shape, label, file: file, line: line)
    let a = out.toArray(), b = ref.toArray()
    let err = a.count == b.count ? zip(a, b).map { abs($0 - $1) }.max() ?? 0 : .infinity
    let tol = 1e-4 * max(1, b.map(abs).max() ?? 0)
    XCTAssertLessThanOrEqual(err, tol, label, file: file, line: line)
    print("Conditioning parity \(label): max abs err \(err)")
}

final class CLIPTextModelTests: XCTestCase {
    func loadModel(_ name: String) throws -> (CLIPTextModel, [String: Tensor], [[Int]]) {
        let dir = fixturesURL.appendingPathComponent(name)
        let model = try CLIPTextModel(configData: Data(contentsOf: dir.appendingPathComponent("config.json")))
        let report = try model.loadWeights(CheckpointFile.open(dir.appendingPathComponent("model.safetensors")).tensors)
        XCTAssertEqual(report.unexpected, [])
        let io = try fixtureTensors("\(name)/io.safetensors")
        let flat = try XCTUnwrap(io["input_ids"]).toArray().map { Int($0) }
        return (model, io, [Array(flat[0..<77]), Array(flat[77...])])
    }

    func checkModel(_ name: String) throws {
        let (model, io, ids) = try loadModel(name)
        try GradMode.noGrad {
            let out = try model(inputIDs: ids)
            assertParity(out.lastHiddenState, try XCTUnwrap(io["last_hidden_state"]), "\(name) last_hidden_state")
            assertParity(out.pooledOutput, try XCTUnwrap(io["pooler_output"]), "\(name) pooler_output")
            assertParity(try model.encode(ids, clipSkip: 1), try XCTUnwrap(io["penultimate"]), "\(name) clip_skip 1")
            assertParity(try model.encode(ids), try XCTUnwrap(io["last_hidden_state"]), "\(name) encode")
        }
    }

    func testQuickGELUHubKeysParity() throws { try checkModel("clip_quick_gelu") }
    func testGELUTransformers5KeysParity() throws { try checkModel("clip_gelu") }
    func testLegacyEOSPoolingParity() throws { try checkModel("clip_legacy_eos") }

    func testEmphasisOnTwoChunks() throws {
        let (model, io, ids) = try loadModel("clip_quick_gelu")
        let w = try XCTUnwrap(io["weights"]).toArray()
        let prompt = WeightedPrompt(chunks: ids, weights: [Array(w[0..<77]), Array(w[77...])], tokenCount: 150)
        let out = try GradMode.noGrad { try model.encode(prompt) }
        assertParity(out, try XCTUnwrap(io["emphasized"]), "emphasis")
        // Weights of 1 leave the encoding unchanged.
        let plain = WeightedPrompt(chunks: [ids[0]], weights: [[Float](repeating: 1, count: 77)], tokenCount: 8)
        assertParity(try model.encode(plain), try XCTUnwrap(io["last_hidden_state"]).narrow(0, 0, 1), "unit weights")
    }

    func testEmphasisWithTokenizerPrompt() throws {
        let (model, _, _) = try loadModel("clip_quick_gelu")
        // A prompt parsed by PromptParser: "(b:1.5)" weights one token; ids stay inside the tiny vocabulary.
        let prompt = WeightedPrompt("a (b:1.5) c", encode: { $0.unicodeScalars.filter { $0 != " " && $0 != "(" && $0 != ")" }.map { Int($0.value) % 400 + 1 } },
                                    bosTokenID: 498, eosTokenID: 499, commaTokenID: nil)
        XCTAssertEqual(prompt.chunks.count, 1)
        XCTAssertTrue(prompt.weights[0].contains(1.5))
        let out = try model.encode(prompt)
        XCTAssertEqual(out.shape, [1, 77, 32])
        XCTAssertTrue(out.toArray().allSatisfy { $0.isFinite })
    }

    func testFromPretrainedComponent() throws {
        let folder = try DiffusersFolder(url: fixturesURL.appendingPathComponent("clip_gelu"))
        let model = try CLIPTextModel(pretrained: try XCTUnwrap(folder.components.first))
        let (manual, _, ids) = try loadModel("clip_gelu")
        XCTAssertEqual(try model.encode(ids).toArray(), try manual.encode(ids).toArray())
    }

    /// CompVis FrozenOpenCLIPEmbedder (layer "penultimate") run in torch vs a 2-layer CLIPTextModel and vs the full
    /// 3-layer tower with clip skip 1, both loaded from OpenCLIP names with the fused in_proj split.
    func testOpenCLIPPenultimateParity() throws {
        let records = try CheckpointFile.open(fixturesURL.appendingPathComponent("openclip/model.safetensors")).tensors
        let io = try fixtureTensors("openclip/io.safetensors")
        let flat = try XCTUnwrap(io["input_ids"]).toArray().map { Int($0) }
        let ids = [Array(flat[0..<77]), Array(flat[77...])]
        var config = CLIPTextConfig()
        config.vocabSize = 500; config.hiddenSize = 32; config.intermediateSize = 128; config.numAttentionHeads = 4
        config.hiddenAct = "gelu"; config.numHiddenLayers = 2
        let short = try CLIPTextModel(config: config)
        let report = try short.loadOpenCLIPWeights(records)
        XCTAssertEqual(Set(report.unexpected.map { $0.components(separatedBy: ".")[3] }), ["2"]) // the dropped last layer
        config.numHiddenLayers = 3
        let full = try CLIPTextModel(config: config)
        XCTAssertEqual(try full.loadOpenCLIPWeights(records).unexpected, [])
        try GradMode.noGrad {
            assertParity(try short.encode(ids), try XCTUnwrap(io["penultimate"]), "OpenCLIP penultimate (23-layer style)")
            assertParity(try full.encode(ids, clipSkip: 1), try XCTUnwrap(io["penultimate"]), "OpenCLIP penultimate (clip skip 1)")
        }
    }

    func testRejectsBadInputs() throws {
        let (model, _, ids) = try loadModel("clip_gelu")
        XCTAssertThrowsError(try model(inputIDs: []))
        XCTAssertThrowsError(try model(inputIDs: [[1, 2], [1]]))
        XCTAssertThrowsError(try model(inputIDs: [[1, 500]]))
        XCTAssertThrowsError(try model(inputIDs: [[Int](repeating: 1, count: 78)]))
        XCTAssertThrowsError(try model.encode(ids, clipSkip: 3))
        XCTAssertThrowsError(try CLIPTextConfig.decode(Data(#"{"hidden_size": 30, "num_attention_heads": 4}"#.utf8)))
        XCTAssertThrowsError(try CLIPTextConfig.decode(Data(#"{"hidden_act": "swish"}"#.utf8)))
        XCTAssertThrowsError(try CLIPTextConfig.decode(Data("not json".utf8)))
        let nested = try CLIPTextConfig.decode(Data(#"{"text_config": {"hidden_size": 64, "num_attention_heads": 4}}"#.utf8))
        XCTAssertEqual(nested.hiddenSize, 64)
    }

    func testClassEmbedderParity() throws {
        let records = try CheckpointFile.open(fixturesURL.appendingPathComponent("class_embedder/model.safetensors")).tensors
        let embedder = ClassEmbedder(embedDim: 8, nClasses: 5)
        try embedder.load(mapKeys(records, ClassEmbedder.compVisKeyRules))
        let io = try fixtureTensors("class_embedder/io.safetensors")
        let classes = try XCTUnwrap(io["class"]).toArray().map { Int($0) }
        assertParity(try embedder(classes), try XCTUnwrap(io["out"]), "ClassEmbedder")
        XCTAssertEqual(embedder.unconditionalClass, 4)
        assertParity(try embedder.unconditionalConditioning(batchSize: 1), try XCTUnwrap(io["out"]).narrow(0, 2, 1), "ClassEmbedder uc")
        XCTAssertThrowsError(try embedder([5]))
        XCTAssertThrowsError(try embedder([]))
    }
}
