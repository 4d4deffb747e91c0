import Checkpoints
import Foundation
import NeuralNetwork
import TensorCore
import XCTest

// Loading of the fixtures written by tools/fixtures/training.py.

let fixturesURL = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")

func fixtureTensors(_ relativePath: String) throws -> [String: Tensor] {
    let file = try CheckpointFile.open(fixturesURL.appendingPathComponent(relativePath))
    return try file.tensors.mapValues { try $0.tensor().float32() }
}

/// Max relative error max|a - b| / max(|b|, floor) and an assertion against `tol`.
@discardableResult
func assertClose(_ a: [Float], _ b: [Float], tol: Float, floor: Float = 1e-6, _ what: String,
                 file: StaticString = #filePath, line: UInt = #line) -> Float {
    XCTAssertEqual(a.count, b.count, what, file: file, line: line)
    let scale = max(b.map(abs).max() ?? 0, floor)
    let err = zip(a, b).map { abs($0 - $1) }.max() ?? 0
    XCTAssertLessThanOrEqual(err / scale, tol, "\(what): rel err \(err / scale)", file: file, line: line)
    return err / scale
}

/// The tiny class-conditional UNet2DModel (4 latent channels, [8, 16], one attention level, 3 classes) of the
/// training tests, as config.json text and as the `unet_config` of a training configuration.
let tinyClassUNetConfig = #"""
{"_class_name": "UNet2DModel", "in_channels": 4, "out_channels": 4, "block_out_channels": [8, 16], "layers_per_block": 1,
 "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
 "norm_num_groups": 4, "attention_head_dim": 4, "num_class_embeds": 3}
"""#
let tinyClassUNetConfigDictionary = try! JSONSerialization.jsonObject(with: Data(tinyClassUNetConfig.utf8)) as! [String: Any]

/// `config` with `extra` keys overriding, written as a JSON training configuration beside the data folder.
func writeTrainConfig(_ config: [String: Any], _ extra: [String: Any], besides data: URL) throws -> URL {
    let d = config.merging(extra) { _, new in new }
    let url = data.deletingLastPathComponent().appendingPathComponent("train-\(UUID().uuidString).json")
    try JSONSerialization.data(withJSONObject: d).write(to: url)
    return url
}

func tempDirectory(_ name: String) throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("ldm-training-\(name)-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}

/// A transformers CLIPTextModel folder (the tiny fixture of ConditioningTests) and a letters-only CLIP tokenizer
/// whose ids fit its 500-token vocabulary (BOS 498, EOS 499).
func makeTextParts() throws -> (encoder: URL, tokenizer: URL) {
    let root = try tempDirectory("text-parts")
    let enc = root.appendingPathComponent("text_encoder"), tok = root.appendingPathComponent("tokenizer")
    for d in [enc, tok] { try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true) }
    let src = fixturesURL.deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("ConditioningTests/Fixtures/clip_quick_gelu")
    for f in ["config.json", "model.safetensors"] { try FileManager.default.copyItem(at: src.appendingPathComponent(f), to: enc.appendingPathComponent(f)) }
    var vocab: [String: Int] = ["<|startoftext|>": 498, "<|endoftext|>": 499]
    for (i, ch) in "abcdefghijklmnopqrstuvwxyz0123456789".enumerated() { vocab[String(ch)] = 2 * i; vocab["\(ch)</w>"] = 2 * i + 1 }
    try JSONSerialization.data(withJSONObject: vocab).write(to: tok.appendingPathComponent("vocab.json"))
    try "#version: 0.2\n".write(to: tok.appendingPathComponent("merges.txt"), atomically: true, encoding: .utf8)
    return (enc, tok)
}
