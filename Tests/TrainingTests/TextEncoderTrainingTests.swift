import Checkpoints
import Conditioning
import Foundation
import Imaging
import TensorCore
import Tokenizers
import XCTest
@testable import Training

// A text encoder trained jointly with the UNet (CompVis cond_stage_trainable: true): text_encoder_config (a CLIP text
// transformer from scratch) with the shipped CLIP vocabulary ("openai-clip"), its optimizer state, checkpoints,
// exact resume, and the exported text-to-image pipeline.

let tinyTextEncoderConfig: [String: Any] = [
    "vocab_size": 49408, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
    "max_position_embeddings": 16, "hidden_act": "quick_gelu",
]

final class TextEncoderTrainingTests: XCTestCase {
    func textConfig(data: URL, _ extra: [String: Any] = [:], removing: [String] = []) throws -> LDMTrainConfig {
        var d: [String: Any] = [
            "base_learning_rate": 5e-4, "batch_size": 2, "max_steps": 4, "ckpt_every": 2, "data_dir": data.path,
            "image_size": 16, "seed": 8, "conditioning": "text", "cond_drop_prob": 0.5, "scale_by_std": true,
            "ema_decay": 0.9, "first_stage": tinyKLFirstStage.path, "export_dtype": "bfloat16",
            "text_encoder_config": tinyTextEncoderConfig, "tokenizer": "openai-clip",
            "unet_config": ["_class_name": "UNet2DConditionModel", "in_channels": 4, "out_channels": 4, "block_out_channels": [8, 16],
                            "layers_per_block": 1, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "norm_num_groups": 4, "attention_head_dim": 2,
                            "cross_attention_dim": 32] as [String: Any],
        ]
        for k in removing { d.removeValue(forKey: k) }
        for (k, v) in extra { d[k] = v }
        return try LDMTrainConfig.parse(JSONSerialization.data(withJSONObject: d))
    }

    func bits(_ t: Tensor) -> [UInt32] { t.contiguous().toArray().map(\.bitPattern) }

    func testTrainableTextEncoderLearnsResumesAndExports() throws {
        let work = try tempDirectory("text-train")
        defer { try? FileManager.default.removeItem(at: work) }
        let data = work.appendingPathComponent("data")
        try writeTinyImageFolder(data)
        let cfg = try textConfig(data: data)
        XCTAssertTrue(cfg.condStageTrainable)   // the default with text_encoder_config
        let runA = work.appendingPathComponent("straight"), runB = work.appendingPathComponent("resumed")

        // One step moves the text encoder: its parameters are in the optimizer, not in the EMA.
        let straight = try cfg.makeTrainer(runDir: runA)
        let text = try XCTUnwrap(straight.textConditioner)
        XCTAssertTrue(text.trainable)
        XCTAssertEqual(straight.extraModules.map(\.prefix), ["text_encoder."])
        XCTAssertNil(straight.loss.nullText)   // recomputed every step from the current encoder
        let before = text.model.namedParameters.map { ($0.0, bits($0.1)) }
        let nullBefore = try GradMode.noGrad { try text.encode([""]) }.toArray()
        try straight.trainStep()
        var changed: [String] = []
        for ((name, old), (_, p)) in zip(before, text.model.namedParameters) where old != bits(p) { changed.append(name) }
        XCTAssertTrue(changed.contains("text_model.embeddings.token_embedding.weight"), "\(changed)")
        XCTAssertTrue(changed.contains("text_model.encoder.layers.1.self_attn.q_proj.weight"), "\(changed)")
        XCTAssertTrue(changed.contains("text_model.final_layer_norm.weight"), "\(changed)")
        XCTAssertNotNil(straight.optimizer.expAvg["text_encoder.text_model.encoder.layers.0.mlp.fc1.weight"])
        XCTAssertFalse(try XCTUnwrap(straight.ema).names.contains { $0.hasPrefix("text_encoder.") || $0.hasPrefix("text_model.") })
        XCTAssertNotEqual(try GradMode.noGrad { try text.encode([""]) }.toArray(), nullBefore)
        try straight.train()
        XCTAssertEqual(straight.step, 4)

        // Checkpoint contents, then 2 steps + a lost step + resume + 2 steps == 4 straight steps, bit for bit.
        let ckpt = try SafeTensors(url: try XCTUnwrap(Trainer.latestCheckpoint(in: runA)))
        XCTAssertEqual(ckpt.metadata?["trainable_modules"], "text_encoder.")
        XCTAssertNotNil(ckpt["text_encoder.text_model.embeddings.token_embedding.weight"])
        XCTAssertNotNil(ckpt["optimizer.exp_avg_sq.text_encoder.text_model.final_layer_norm.bias"])
        let first = try cfg.makeTrainer(runDir: runB)
        try first.train(steps: 2)
        try first.trainStep()
        let resumed = try cfg.makeTrainer(runDir: runB)
        let freshToken = bits(try XCTUnwrap(resumed.textConditioner).model.tokenEmbedding.weight)
        try resumed.resume()
        XCTAssertEqual(resumed.step, 2)
        XCTAssertNotEqual(bits(try XCTUnwrap(resumed.textConditioner).model.tokenEmbedding.weight), freshToken)
        try resumed.train()
        for ((n, p), (_, q)) in zip(straight.model.namedParameters, resumed.model.namedParameters) { XCTAssertEqual(bits(p), bits(q), "unet \(n)") }
        let te = try XCTUnwrap(resumed.textConditioner).model
        for ((n, p), (_, q)) in zip(text.model.namedParameters, te.namedParameters) { XCTAssertEqual(bits(p), bits(q), "text encoder \(n)") }
        for (n, _) in straight.optimizer.parameters {
            XCTAssertEqual(straight.optimizer.expAvgSq[n].map(bits), resumed.optimizer.expAvgSq[n].map(bits), "v \(n)")
        }
        for n in try XCTUnwrap(straight.ema).names {
            XCTAssertEqual(straight.ema?.shadow[n].map(bits), resumed.ema?.shadow[n].map(bits), "ema \(n)")
        }
        XCTAssertEqual(straight.generator.state, resumed.generator.state)
        XCTAssertEqual(try String(contentsOf: straight.logURL, encoding: .utf8), try String(contentsOf: resumed.logURL, encoding: .utf8))
        // A frozen-encoder configuration cannot continue a run that trained the encoder.
        let frozenRun = work.appendingPathComponent("frozen")
        let (enc, tok) = try makeTextParts()
        defer { try? FileManager.default.removeItem(at: enc.deletingLastPathComponent()) }
        let frozen = try textConfig(data: data, ["text_encoder": enc.path, "tokenizer": tok.path], removing: ["text_encoder_config"])
        XCTAssertFalse(frozen.condStageTrainable)
        try FileManager.default.createDirectory(at: frozenRun.appendingPathComponent("checkpoints"), withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: try XCTUnwrap(Trainer.latestCheckpoint(in: runA)),
                                        to: frozenRun.appendingPathComponent("checkpoints/step-00000004.safetensors"))
        XCTAssertThrowsError(try frozen.makeTrainer(runDir: frozenRun).resume()) {
            XCTAssertTrue("\($0)".contains("cond_stage_trainable must match"), "\($0)")
        }

        // pipeline/: StableDiffusionPipeline layout with the trained text encoder (bf16) and the CLIP tokenizer files.
        let pipe = runA.appendingPathComponent("pipeline")
        let index = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: pipe.appendingPathComponent("model_index.json"))) as? [String: Any])
        XCTAssertEqual(index["_class_name"] as? String, "StableDiffusionPipeline")
        XCTAssertEqual(index["text_encoder"] as? [String], ["transformers", "CLIPTextModel"])
        XCTAssertEqual(index["tokenizer"] as? [String], ["transformers", "CLIPTokenizer"])
        XCTAssertEqual(try CLIPTextConfig.decode(Data(contentsOf: pipe.appendingPathComponent("text_encoder/config.json"))), text.model.config)
        let teFile = try SafeTensors(url: pipe.appendingPathComponent("text_encoder/model.safetensors"))
        XCTAssertEqual(teFile.metadata?["format"], "pt")
        let fc1 = try XCTUnwrap(teFile["text_model.encoder.layers.0.mlp.fc1.weight"])
        XCTAssertEqual(fc1.dtype, .BF16)
        XCTAssertEqual(try fc1.floats(), text.model.layers[0].fc1.weight.toArray().map { Float(bitPattern: UInt32(bf16Bits($0)) << 16) })
        let exportedTok = try CLIPTokenizer(folder: pipe.appendingPathComponent("tokenizer"))
        XCTAssertEqual(exportedTok.modelMaxLength, 16)
        for p in ["a b picture 1", "", "A photo of an astronaut, riding a horse!"] {
            XCTAssertEqual(exportedTok(p, maxLength: 16), text.tokenizer(p, maxLength: 16), p)
        }
        let out = work.appendingPathComponent("txt.png")
        let r = try runLDM(["txt2img", "--model", pipe.path, "--prompt", "a b picture 1", "--steps", "3", "--cfg-scale", "3",
                            "--seed", "2", "--output", out.path, "--quiet"])
        XCTAssertEqual(r.status, 0, r.output)
        let img = try ImageIO.loadRGB(path: out.path)
        XCTAssertEqual([img.width, img.height], [16, 16])
        XCTAssertGreaterThan(Set(img.pixels).count, 1)
        let s = try runLDM(["sample", "--model", pipe.path, "--output", work.appendingPathComponent("s.png").path, "--quiet"])
        XCTAssertNotEqual(s.status, 0)
        XCTAssertTrue(s.output.contains("text-conditioned"), s.output)
    }

    /// The shipped vocabulary written as vocab.json + merges.txt reads back as the same tokenizer.
    func testBundledCLIPTokenizerFolderRoundTrips() throws {
        let dir = try tempDirectory("clip-tokenizer")
        defer { try? FileManager.default.removeItem(at: dir) }
        try writeBundledCLIPTokenizer(to: dir.appendingPathComponent("tokenizer"), modelMaxLength: 77)
        let back = try CLIPTokenizer(folder: dir.appendingPathComponent("tokenizer"))
        let shipped = try CLIPTokenizer.openCLIPDefault()
        XCTAssertEqual(back.vocabulary, shipped.vocabulary)
        XCTAssertEqual(back.vocabulary.count, 49408)
        XCTAssertEqual([back.bosTokenID, back.eosTokenID, back.padTokenID], [49406, 49407, 49407])
        for p in ["a photograph of an astronaut riding a horse", "Ünïcödé façade — naïve café 東京 🚀", "it's 3.14/2 <|endoftext|> x",
                  "  multiple   spaces\tand\nnewlines ", ""] {
            XCTAssertEqual(back(p), shipped(p), p)
        }
    }

    func testTextEncoderConfigValidation() throws {
        let data = try tempDirectory("text-keys")
        defer { try? FileManager.default.removeItem(at: data) }
        try writeTinyImageFolder(data)
        func rejects(_ extra: [String: Any], removing: [String] = [], _ fragment: String, line: UInt = #line) {
            XCTAssertThrowsError(try textConfig(data: data, extra, removing: removing).makeTrainer(runDir: tempDirectory("never")), line: line) {
                XCTAssertTrue("\($0)".contains(fragment), "\"\($0)\" lacks \(fragment)", line: line)
            }
        }
        let (enc, tok) = try makeTextParts()
        defer { try? FileManager.default.removeItem(at: enc.deletingLastPathComponent()) }
        rejects(["cond_stage_trainable": false], "cannot be false with text_encoder_config")
        rejects(["text_encoder": enc.path], "not both")
        rejects(["text_encoder_config": "big"], "text_encoder_config must be a JSON object")
        var dropout = tinyTextEncoderConfig; dropout["attention_dropout"] = 0.1
        rejects(["text_encoder_config": dropout], "attention_dropout 0.1 is not supported")
        var heads = tinyTextEncoderConfig; heads["num_attention_heads"] = 5
        rejects(["text_encoder_config": heads], "divisible by num_attention_heads")
        var noVocab = tinyTextEncoderConfig; noVocab.removeValue(forKey: "vocab_size")
        rejects(["text_encoder_config": noVocab], "vocab_size is missing")
        var small = tinyTextEncoderConfig; small["vocab_size"] = 500
        rejects(["text_encoder_config": small], "vocab_size is 500")
        rejects([:], removing: ["tokenizer"], "text_encoder and tokenizer")
        rejects(["tokenizer": "/nonexistent/tokenizer"], "does not exist")
        rejects(["conditioning": "class", "cond_stage_trainable": true], removing: ["text_encoder_config", "tokenizer"], "cond_stage_trainable needs conditioning \"text\"")

        // A pretrained folder fine-tuned (cond_stage_trainable true): its weights move and are exported from the model.
        let run = try tempDirectory("finetune")
        defer { try? FileManager.default.removeItem(at: run) }
        let cfg = try textConfig(data: data, ["text_encoder": enc.path, "tokenizer": tok.path, "cond_stage_trainable": true,
                                              "max_steps": 1, "export_dtype": "float32"], removing: ["text_encoder_config"])
        let t = try cfg.makeTrainer(runDir: run)
        let te = try XCTUnwrap(t.textConditioner?.model)
        let before = te.layers[0].qProj.weight.toArray()
        try t.train()
        XCTAssertNotEqual(te.layers[0].qProj.weight.toArray(), before)
        let exported = try SafeTensors(url: run.appendingPathComponent("pipeline/text_encoder/model.safetensors"))
        XCTAssertEqual(try exported["text_model.encoder.layers.0.self_attn.q_proj.weight"]?.floats(), te.layers[0].qProj.weight.toArray())
        XCTAssertEqual(try CLIPTokenizer(folder: run.appendingPathComponent("pipeline/tokenizer")).vocabulary, t.textConditioner?.tokenizer.vocabulary)
    }
}
