import Foundation
import Imaging
import TensorCore
import UNetModels
import XCTest
@testable import Training

// `ldm train ldm` configs: validation at the boundary, and a short end-to-end run through a first stage
// (the tiny AutoencoderKL fixture of AutoencodersTests) with class conditioning, then a resume.

final class TrainConfigTests: XCTestCase {
    var dataDir: URL!

    override func setUpWithError() throws {
        dataDir = try tempDirectory("config-data")
        for (cls, shade) in [("a", 40), ("b", 200)] {
            let sub = dataDir.appendingPathComponent(cls)
            try FileManager.default.createDirectory(at: sub, withIntermediateDirectories: true)
            for i in 0..<2 {
                var img = try RGBImage(width: 20, height: 18, fill: (UInt8(shade), UInt8(i * 90), 30))
                for x in 0..<20 { img.pixels[3 * x + 1] = UInt8(x * 12) }
                try img.writePNG(to: sub.appendingPathComponent("\(i).png").path)
                try "a \(cls) picture \(i)".write(to: sub.appendingPathComponent("\(i).txt"), atomically: true, encoding: .utf8)
            }
        }
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dataDir) }

    func config(_ extra: [String: Any] = [:], removing: [String] = []) throws -> Data {
        var d: [String: Any] = [
            "base_learning_rate": 1e-4, "batch_size": 2, "max_steps": 4, "ckpt_every": 2, "data_dir": dataDir.path,
            "image_size": 16, "seed": 3, "conditioning": "class", "cond_drop_prob": 0.5, "scale_by_std": true,
            "parameterization": "eps", "loss_type": "l2", "ema_decay": 0.999, "lr_scheduler": "constant_with_warmup", "lr_warmup_steps": 1,
            "first_stage": fixturesURL.deletingLastPathComponent().deletingLastPathComponent()
                .appendingPathComponent("AutoencodersTests/Fixtures/kl_f4").path,
            "unet_config": tinyClassUNetConfigDictionary,
        ]
        for k in removing { d.removeValue(forKey: k) }
        for (k, v) in extra { d[k] = v }
        return try JSONSerialization.data(withJSONObject: d)
    }

    func assertRejects(_ data: Data, _ fragment: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try LDMTrainConfig.parse(data).makeTrainer(runDir: tempDirectory("never")), file: file, line: line) { e in
            XCTAssertTrue("\(e)".contains(fragment), "error \"\(e)\" does not mention \(fragment)", file: file, line: line)
        }
    }

    func testValidation() throws {
        let c = try LDMTrainConfig.parse(config())
        XCTAssertEqual(c.learningRate, 2e-4, accuracy: 1e-15)   // scale_lr: batch_size * accumulate * base
        assertRejects(try config(removing: ["max_steps"]), "max_steps is missing")
        assertRejects(try config(["batch_size": 0]), "batch_size must be positive")
        assertRejects(try config(["batch_size": "two"]), "batch_size must be a number")
        assertRejects(try config(["data_dir": "/nonexistent/data"]), "does not exist")
        assertRejects(try config(["parameterization": "score"]), "parameterization has invalid value")
        assertRejects(try config(["loss_type": "huber"]), "loss_type has invalid value")
        assertRejects(try config(["cond_drop_prob": 1.5]), "cond_drop_prob must be in [0, 1]")
        assertRejects(try config(["lr_scheduler": "cyclic"]), "lr schedule")
        assertRejects(try config(["learning_rate": 1]), "unknown keys learning_rate")
        assertRejects(try config(["unet": "/x"]), "exactly one of unet")
        assertRejects(try config(["scale_lr": 1]), "scale_lr must be true or false")
        assertRejects(try config(["conditioning": "none"]), "cond_drop_prob needs conditioning")
        assertRejects(try config(["conditioning": "none", "cond_drop_prob": 0]), "has a class embedding")
        assertRejects(try config(["image_size": 18]), "multiple of the first stage's downsampling factor 4")
        assertRejects(try config(removing: ["first_stage"]), "latent channels")
        XCTAssertThrowsError(try LDMTrainConfig.parse(Data("[1]".utf8)))
        // Read through Codable (ConfigReader): a value of another JSON type still names the key.
        assertRejects(try config(["batch_size": true]), "config: batch_size must be a number")
        assertRejects(try config(["batch_size": 2.5]), "batch_size must be an integer, got 2.5")
        assertRejects(try config(["unet_config": 5]), "unet_config must be a JSON object")
        assertRejects(try config(["data_dir": ""]), "data_dir must be a non-empty string")
        assertRejects(Data("{\"batch_size\": ".utf8), "config: not a JSON object")
        assertRejects(Data("[1]".utf8), "config: not a JSON object")
        XCTAssertNil(try LDMTrainConfig.parse(config(["max_grad_norm": NSNull()])).maxGradNorm)
        XCTAssertEqual(try LDMTrainConfig.parse(config(["scale_lr": NSNull()])).scaleLR, true)
        // The inline UNet config reaches the model as it was written (numbers, booleans, lists, nested objects).
        let inline = try XCTUnwrap(c.unetConfig)
        XCTAssertEqual(try JSONSerialization.data(withJSONObject: inline, options: .sortedKeys),
                       try JSONSerialization.data(withJSONObject: tinyClassUNetConfigDictionary, options: .sortedKeys))
    }

    func testTextConditionedTraining() throws {
        let (enc, tok) = try makeTextParts()
        defer { try? FileManager.default.removeItem(at: enc.deletingLastPathComponent()) }
        let unet: [String: Any] = ["_class_name": "UNet2DConditionModel", "in_channels": 4, "out_channels": 4, "block_out_channels": [8, 16],
                                   "layers_per_block": 1, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                                   "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "norm_num_groups": 4, "attention_head_dim": 2,
                                   "cross_attention_dim": 32]
        let data = try config(["conditioning": "text", "text_encoder": enc.path, "tokenizer": tok.path, "unet_config": unet,
                               "parameterization": "v", "loss_type": "l1", "max_steps": 2])
        let run = try tempDirectory("text-run")
        defer { try? FileManager.default.removeItem(at: run) }
        let t = try LDMTrainConfig.parse(data).makeTrainer(runDir: run)
        XCTAssertEqual(t.loss.nullText?.shape, [1, 77, 32])
        try t.train()
        XCTAssertEqual(t.step, 2)
        let before = try UNet2DConditionModel.random(config: t.model.config, seed: 3)
        XCTAssertNotEqual(before.convIn.weight.toArray(), t.model.convIn.weight.toArray())
        assertRejects(try config(["conditioning": "text", "text_encoder": enc.path]), "text_encoder and tokenizer")
        assertRejects(try config(["conditioning": "text", "text_encoder": enc.path, "tokenizer": tok.path]), "needs a UNet with cross-attention")
        var bigUNet = unet; bigUNet["cross_attention_dim"] = 16
        assertRejects(try config(["conditioning": "text", "text_encoder": enc.path, "tokenizer": tok.path, "unet_config": bigUNet]),
                      "does not match the UNet cross_attention_dim")
    }

    func testTrainsThroughFirstStageAndResumes() throws {
        let cfg = try LDMTrainConfig.parse(config())
        let run = try tempDirectory("config-run")
        defer { try? FileManager.default.removeItem(at: run) }
        let t = try cfg.makeTrainer(runDir: run)
        try t.train(steps: 2)
        let scale = try XCTUnwrap(t.scaleFactor)
        XCTAssertNotEqual(scale, 0.18215)   // scale_by_std measured it from the first batch
        let resumed = try cfg.makeTrainer(runDir: run)
        try resumed.resume()
        XCTAssertEqual(resumed.scaleFactor, scale)
        try resumed.train()
        XCTAssertEqual(resumed.step, 4)
        let back = try UNet2DConditionModel(pretrainedFolder: run.appendingPathComponent("unet"))
        XCTAssertEqual(back.config.numClassEmbeds, 3)
        let log = try String(contentsOf: resumed.logURL, encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(log.count, 4)
        XCTAssertTrue(log.allSatisfy { $0.contains("\"loss\"") })
    }
}
