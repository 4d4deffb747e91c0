import Checkpoints
import Foundation
import Imaging
import NeuralNetwork
import Pipelines
import TensorCore
import XCTest
@testable import Training

// `ldm train lora` on the tiny random SD folder of the pipeline tests: only the adapters train (base weights bit for bit
// unchanged, no gradients and no optimizer state for them), the loss on fixed noise falls, a stopped and resumed run
// writes the same file as an uninterrupted one (bf16-mixed), the kohya file goes through our strict loader to exactly
// the adapters' updates, and bad configs are refused with the key named, through the CLI with a non-zero exit and
// nothing overwritten.

let tinySDFolder = fixturesURL.deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("PipelinesTests/Fixtures/tiny-sd")

final class LoRATrainingTests: XCTestCase {
    /// A freshly loaded tiny SD model (adapters attach to its modules, so each run needs its own).
    func base() throws -> LoRABaseModel {
        let b = try ModelBundle.load(tinySDFolder)
        return LoRABaseModel(unet: b.unet, firstStage: b.firstStage, textEncoder: try XCTUnwrap(b.textEncoder),
                             tokenizer: try XCTUnwrap(b.tokenizer), schedulerConfig: b.schedulerConfig,
                             defaultImageSize: b.defaultImageSize, name: "tiny-sd")
    }

    /// Four 16x16 images with captions, flat (kohya's layout).
    func writeData(_ dir: URL) throws {
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        for i in 0..<4 {
            var img = try RGBImage(width: 16, height: 16, fill: (UInt8(40 + 50 * i), 30, UInt8(200 - 40 * i)))
            for x in 0..<16 { img.pixels[3 * (16 * (x % 16) + x)] = 255 }
            try img.writePNG(to: dir.appendingPathComponent("\(i).png").path)
            try "a \(i % 2 == 0 ? "red" : "blue") cat".write(to: dir.appendingPathComponent("\(i).txt"), atomically: true, encoding: .utf8)
        }
    }

    func dictionary(data: URL, _ extra: [String: Any] = [:], removing: [String] = []) -> [String: Any] {
        var d: [String: Any] = ["base_model": tinySDFolder.path, "data_dir": data.path, "max_steps": 6, "rank": 2, "alpha": 1,
                                "learning_rate": 1e-2, "batch_size": 2, "seed": 4, "resolution": 16]
        for k in removing { d.removeValue(forKey: k) }
        for (k, v) in extra { d[k] = v }
        return d
    }

    func config(data: URL, _ extra: [String: Any] = [:], removing: [String] = []) throws -> LoRATrainConfig {
        try LoRATrainConfig.parse(JSONSerialization.data(withJSONObject: dictionary(data: data, extra, removing: removing)))
    }

    func bits(_ t: Tensor) -> [UInt32] { t.contiguous().float32().toArray().map(\.bitPattern) }

    /// The L2 loss on the first batch at fixed timesteps and noise (no gradients).
    func fixedLoss(_ run: LoRATrainer) throws -> Float {
        let t = run.trainer
        let batch = try t.sampler.batch(epoch: 0, index: 0)
        return try GradMode.noGrad {
            let z = try t.encoder.encode(batch.images, generator: TorchGenerator(seed: 9)) * run.base.firstStage!.scalingFactor
            let noise = Tensor.randn(z.shape, generator: TorchGenerator(seed: 10))
            let ctx = try XCTUnwrap(t.textConditioner).encode(try XCTUnwrap(batch.captions))
            var total: Float = 0
            for step in [50, 300, 600, 900] as [Int64] {
                total += try t.loss.pLosses(model: t.model, x0: z, conditioning: .text(ctx), timesteps: [step, step], noise: noise).item
            }
            return total / 4
        }
    }

    func testOnlyAdaptersTrainAndTheLossFalls() throws {
        let work = try tempDirectory("lora-train")
        defer { try? FileManager.default.removeItem(at: work) }
        let data = work.appendingPathComponent("data")
        try writeData(data)
        let cfg = try config(data: data, ["max_steps": 150, "targets": ["attention", "projections", "feed_forward"],
                                          "train_text_encoder": true, "max_grad_norm": NSNull()])
        let run = try cfg.makeTrainer(base: try base(), runDir: work.appendingPathComponent("run"))
        let t = run.trainer
        // 2 transformer blocks (down 1, mid, up 1: 3 Transformer2DModels) x (8 attention + 2 ff) + 2 proj each; 6 per CLIP layer.
        let unetAdapters = run.network.adapters.filter { $0.name.hasPrefix("lora_unet_") }
        XCTAssertEqual(unetAdapters.count, LoRANetwork.transformers(t.model).count * 12)
        XCTAssertEqual(run.network.adapters.count - unetAdapters.count, run.base.textEncoder.layers.count * 6)
        XCTAssertTrue(run.network.adapters.contains { $0.name == "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_out_0" })
        XCTAssertTrue(run.network.adapters.contains { $0.name == "lora_te_text_model_encoder_layers_0_self_attn_q_proj" })
        XCTAssertTrue(run.network.adapters.contains { $0.isConv && $0.name.hasSuffix("proj_in") })
        // The optimizer holds the adapters only.
        XCTAssertEqual(t.optimizer.parameters.count, run.network.namedParameters.count)
        XCTAssertTrue(t.optimizer.parameters.allSatisfy { $0.0.hasPrefix("lora.lora_") })
        XCTAssertNil(t.ema)
        // up starts at zero: the model computes exactly what the base does.
        XCTAssertTrue(run.network.adapters.allSatisfy { $0.up.toArray().allSatisfy { $0 == 0 } })

        let frozen = t.model.namedParameters + run.base.textEncoder.namedParameters.map { ("te." + $0.0, $0.1) }
        let vae: [(String, Tensor)]
        if case .kl(let m) = try XCTUnwrap(run.base.firstStage) { vae = m.namedParameters } else { vae = [] }
        let before = (frozen + vae).map { bits($0.1) }
        let lossBefore = try fixedLoss(run)
        try t.train()
        let lossAfter = try fixedLoss(run)
        print("fixed-noise loss \(lossBefore) -> \(lossAfter)")
        XCTAssertLessThan(lossAfter, lossBefore * 0.95)
        XCTAssertEqual((frozen + vae).map { bits($0.1) }, before, "base weights changed")
        XCTAssertTrue(frozen.allSatisfy { $0.1.grad == nil && !$0.1.requiresGrad }, "a base weight has a gradient")
        XCTAssertTrue(run.network.adapters.allSatisfy { $0.up.toArray().contains { $0 != 0 } })
        XCTAssertEqual(t.optimizer.expAvg.count, run.network.namedParameters.count)
        // Checkpoints hold the adapters and their optimizer state, not the base model.
        let ckpt = try SafeTensors(url: try XCTUnwrap(Trainer.latestCheckpoint(in: t.runDir)))
        XCTAssertFalse(ckpt.tensors.keys.contains { $0.hasPrefix("model.") })
        XCTAssertEqual(ckpt.metadata?["trains_model"], "false")
        XCTAssertNotNil(ckpt["lora.lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight"])
        // Detached, the base model is the base model again.
        run.network.detach()
        XCTAssertEqual(try fixedLoss(run), lossBefore)
    }

    func testStoppedAndResumedRunWritesTheSameLoRA() throws {
        let work = try tempDirectory("lora-resume")
        defer { try? FileManager.default.removeItem(at: work) }
        let data = work.appendingPathComponent("data")
        try writeData(data)
        let cfg = try config(data: data, ["save_every": 2, "precision": "bf16-mixed", "train_text_encoder": true, "cond_drop_prob": 0.5])
        let straight = try cfg.makeTrainer(base: try base(), runDir: work.appendingPathComponent("a"))
        try straight.trainer.train()
        XCTAssertEqual(straight.trainer.step, 6)
        let fileA = try Data(contentsOf: straight.outputURL)

        let runB = work.appendingPathComponent("b")
        let first = try cfg.makeTrainer(base: try base(), runDir: runB)
        try first.trainer.train(steps: 2)
        try first.trainer.trainStep()   // step 3: after the last checkpoint, lost
        XCTAssertFalse(FileManager.default.fileExists(atPath: first.outputURL.path))
        let resumed = try cfg.makeTrainer(base: try base(), runDir: runB)
        try resumed.trainer.resume()
        XCTAssertEqual(resumed.trainer.step, 2)
        try resumed.trainer.train()
        let differing = zip(straight.network.namedParameters, resumed.network.namedParameters).filter { p in bits(p.0.1) != bits(p.1.1) }
        XCTAssertEqual(differing.map { $0.0.0 }, [])
        XCTAssertEqual(try Data(contentsOf: resumed.outputURL), fileA, "the resumed run's LoRA file differs")
        // A checkpoint of another precision or rank does not resume.
        let other = try config(data: data, ["save_every": 2])
        XCTAssertThrowsError(try other.makeTrainer(base: try base(), runDir: runB).trainer.resume()) { XCTAssertTrue("\($0)".contains("precision"), "\($0)") }
        let rank3 = try config(data: data, ["save_every": 2, "precision": "bf16-mixed", "train_text_encoder": true, "rank": 3])
        XCTAssertThrowsError(try rank3.makeTrainer(base: try base(), runDir: runB).trainer.resume())
    }

    func testExportedFileLoadsStrictlyToTheAdaptersUpdates() throws {
        let work = try tempDirectory("lora-export")
        defer { try? FileManager.default.removeItem(at: work) }
        let data = work.appendingPathComponent("data")
        try writeData(data)
        for (dtype, tol) in [("float32", Float(1e-6)), ("bfloat16", Float(2e-2))] {
            let cfg = try config(data: data, ["max_steps": 3, "targets": ["attention", "projections", "feed_forward"], "train_text_encoder": true,
                                              "save_dtype": dtype, "alpha": 3, "output": work.appendingPathComponent("\(dtype).safetensors").path])
            let run = try cfg.makeTrainer(base: try base(), runDir: work.appendingPathComponent("run-\(dtype)"))
            try run.trainer.train()
            let file = try LoRAFile(url: run.outputURL)
            XCTAssertEqual(file.metadata["ss_network_dim"], "2")
            XCTAssertEqual(file.metadata["ss_network_alpha"], "3.0")
            XCTAssertEqual(file.metadata["ss_steps"], "3")
            XCTAssertEqual(file.metadata["ss_network_train_unet_only"], "False")
            XCTAssertEqual(file.records.count, run.network.adapters.count * 3)
            XCTAssertEqual(try XCTUnwrap(file.records["lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q.alpha"]).shape, [])
            var shapes: [String: [Int]] = [:]
            for (n, p) in run.base.unet.namedParameters { shapes["unet." + n] = p.shape }
            for (n, p) in run.base.textEncoder.namedParameters { shapes["text_encoder." + n] = p.shape }
            let deltas = try LoRA.deltas(file, baseShapes: shapes, weight: 1)
            XCTAssertEqual(deltas.count, run.network.adapters.count)
            for a in run.network.adapters {
                let d = try XCTUnwrap(deltas[a.target], a.target)
                assertClose(d, a.delta(), tol: tol, floor: 1e-12, a.name)
            }
        }
    }

    func testConfigErrorsNameTheKey() throws {
        let work = try tempDirectory("lora-config")
        defer { try? FileManager.default.removeItem(at: work) }
        let data = work.appendingPathComponent("data")
        try writeData(data)
        XCTAssertNoThrow(try config(data: data))
        let cases: [([String: Any], [String], String)] = [
            ([:], ["base_model"], "base_model is missing"),
            (["base_model": "/nonexistent/model"], [], "base_model /nonexistent/model does not exist"),
            (["data_dir": data.appendingPathComponent("0.png").path], [], "data_dir"),
            ([:], ["max_steps"], "max_steps is missing"),
            (["max_steps": 0], [], "max_steps must be positive"),
            (["rank": 0], [], "rank must be positive"),
            (["rank": 2.5], [], "rank must be an integer"),
            (["rank": "4"], [], "rank must be a number"),
            (["alpha": -1], [], "alpha must be positive"),
            (["learning_rate": 0], [], "learning_rate must be positive"),
            (["batch_size": -2], [], "batch_size must be positive"),
            (["seed": -1], [], "seed must be >= 0"),
            (["targets": ["attn"]], [], "targets has attn"),
            (["targets": [String]()], [], "targets must be a non-empty list"),
            (["train_text_encoder": "yes"], [], "train_text_encoder must be true or false"),
            (["output": "lora.bin"], [], "output must name a .safetensors file"),
            (["output_name": "../x"], [], "output_name must be a file name"),
            (["save_dtype": "int8"], [], "save_dtype must be one of float32, float16, bfloat16"),
            (["precision": "16-mixed"], [], "precision must be"),
            (["lr_scheduler": "step"], [], "lr_scheduler must be one of"),
            (["cond_drop_prob": 2], [], "cond_drop_prob must be in [0, 1]"),
            (["adam_beta1": 1], [], "adam_beta1 must be in [0, 1)"),
            (["network_dim": 4], [], "unknown keys network_dim"),
        ]
        for (extra, removing, message) in cases {
            XCTAssertThrowsError(try config(data: data, extra, removing: removing), message) { error in
                XCTAssertTrue("\(error)".contains(message), "\(extra) \(removing): \(error)")
            }
        }
        // Checked when the model is known.
        for (extra, message) in [(["resolution": 18], "resolution 18 must be a multiple of"),
                                 (["batch_size": 5], "batch_size 5 is larger than the 4 images")] as [([String: Any], String)] {
            XCTAssertThrowsError(try config(data: data, extra).makeTrainer(base: try base(), runDir: work.appendingPathComponent("r"))) {
                XCTAssertTrue("\($0)".contains(message), "\($0)")
            }
        }
        try FileManager.default.removeItem(at: data.appendingPathComponent("2.txt"))
        XCTAssertThrowsError(try config(data: data).makeTrainer(base: try base(), runDir: work.appendingPathComponent("r"))) {
            XCTAssertTrue("\($0)".contains("2.png has no caption"), "\($0)")
        }
    }

    /// Through the CLI: a run writes its LoRA and `ldm txt2img --lora` applies it; a bad config exits non-zero with the
    /// key named, and an existing output file is never overwritten by a new run.
    func testCommandLine() throws {
        let work = try tempDirectory("lora-cli")
        defer { try? FileManager.default.removeItem(at: work) }
        let data = work.appendingPathComponent("data")
        try writeData(data)
        let out = work.appendingPathComponent("cats.safetensors")
        let good = work.appendingPathComponent("good.json")
        try JSONSerialization.data(withJSONObject: dictionary(data: data, ["output": out.path, "save_every": 3])).write(to: good)
        let (status, log) = try runLDM(["train", "lora", "--config", good.path, "--run-dir", work.appendingPathComponent("run").path])
        XCTAssertEqual(status, 0, log)
        XCTAssertTrue(log.contains("rank-2 LoRA"), log)
        let written = try Data(contentsOf: out)
        let png = work.appendingPathComponent("cat.png")
        let (s2, log2) = try runLDM(["txt2img", "--model", tinySDFolder.path, "--prompt", "a red cat", "--steps", "2", "--seed", "1",
                                     "--lora", out.path + ":0.8", "--output", png.path, "--quiet"])
        XCTAssertEqual(s2, 0, log2)
        XCTAssertTrue(FileManager.default.fileExists(atPath: png.path))

        // A new run does not overwrite an existing LoRA file.
        let (s3, log3) = try runLDM(["train", "lora", "--config", good.path, "--run-dir", work.appendingPathComponent("run2").path])
        XCTAssertNotEqual(s3, 0)
        XCTAssertTrue(log3.contains("already exists"), log3)
        XCTAssertEqual(try Data(contentsOf: out), written)
        // Bad values exit non-zero, naming the key, before anything is written.
        let bad = work.appendingPathComponent("bad.json")
        try JSONSerialization.data(withJSONObject: dictionary(data: data, ["output": out.path, "rank": -1])).write(to: bad)
        let (s4, log4) = try runLDM(["train", "lora", "--config", bad.path, "--run-dir", work.appendingPathComponent("run3").path])
        XCTAssertNotEqual(s4, 0)
        XCTAssertTrue(log4.contains("rank must be positive"), log4)
        XCTAssertFalse(FileManager.default.fileExists(atPath: work.appendingPathComponent("run3").path))
        XCTAssertEqual(try Data(contentsOf: out), written)
    }
}
