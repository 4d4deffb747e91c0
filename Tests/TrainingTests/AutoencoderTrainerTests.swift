// `ldm train autoencoder`: config validation, a KL run with the PatchGAN discriminator switched on mid-run that resumes
// bit for bit after an interruption, a VQ run, and the exported folder loading as a diffusers first stage.
import Autoencoders
import Checkpoints
import Foundation
import TensorCore
import XCTest
@testable import Training

final class AutoencoderTrainerTests: XCTestCase {
    func config(data: URL, run: URL, _ extra: [String: Any] = [:]) throws -> URL {
        var d: [String: Any] = [
            "base_learning_rate": 1e-3, "scale_lr": false, "batch_size": 2, "max_steps": 6, "ckpt_every": 3,
            "data_dir": data.path, "image_size": 16, "seed": 5, "run_dir": run.path, "random_flip": true,
            "kl_weight": 1e-3, "disc_start": 3, "disc_weight": 0.5, "disc_ndf": 8, "disc_num_layers": 2,
            "model_config": ["_class_name": "AutoencoderKL", "block_out_channels": [8, 8], "layers_per_block": 1,
                             "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
                             "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"], "latent_channels": 2,
                             "norm_num_groups": 4, "sample_size": 16] as [String: Any],
        ]
        for (k, v) in extra { d[k] = v }
        let url = data.deletingLastPathComponent().appendingPathComponent("ae-\(UUID().uuidString).json")
        try JSONSerialization.data(withJSONObject: d).write(to: url)
        return url
    }

    func testResumedRunWithDiscriminatorIsBitIdentical() throws {
        let work = try tempDirectory("ae-resume")
        defer { try? FileManager.default.removeItem(at: work) }
        let data = work.appendingPathComponent("data")
        try writeTinyImageFolder(data)
        let a = work.appendingPathComponent("a"), b = work.appendingPathComponent("b")
        let straight = try AutoencoderTrainConfig.load(config(data: data, run: a)).makeTrainer(runDir: a)
        XCTAssertNotNil(straight.loss.adversarial)
        XCTAssertNil(straight.loss.perceptual)   // no LPIPS weights given
        try straight.train()
        // The discriminator trains from disc_start (global step 3) on: its loss shows in the log from step 4.
        let log = try String(contentsOf: straight.logURL, encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(log.count, 6)
        XCTAssertFalse(log[2].contains("disc_loss"))
        XCTAssertTrue(log[3].contains("disc_loss") && log[3].contains("d_weight"), String(log[3]))

        let cfgB = try AutoencoderTrainConfig.load(config(data: data, run: b))
        let first = try cfgB.makeTrainer(runDir: b)
        try first.train(steps: 3)
        try first.trainStep()   // lost by the "crash"
        let resumed = try cfgB.makeTrainer(runDir: b)
        try resumed.resume()
        XCTAssertEqual(resumed.step, 3)
        try resumed.train()
        for ((n, p), (_, q)) in zip(straight.model.module.namedParameters, resumed.model.module.namedParameters) {
            XCTAssertEqual(p.toArray().map(\.bitPattern), q.toArray().map(\.bitPattern), "weights \(n)")
        }
        let da = try XCTUnwrap(straight.loss.adversarial).state, db = try XCTUnwrap(resumed.loss.adversarial).state
        XCTAssertEqual(da.count, db.count)
        for ((n, p), (_, q)) in zip(da, db) { XCTAssertEqual(p.toArray().map(\.bitPattern), q.toArray().map(\.bitPattern), "disc \(n)") }
        XCTAssertEqual(straight.generator.state, resumed.generator.state)
        XCTAssertEqual(try String(contentsOf: straight.logURL, encoding: .utf8), try String(contentsOf: resumed.logURL, encoding: .utf8))

        // The export loads as a diffusers first stage, with the measured scaling factor.
        let (model, report) = try FirstStageModel.load(folder: a.appendingPathComponent("vae"))
        XCTAssertTrue(report.isComplete)
        XCTAssertEqual(model.scalingFactor, try straight.latentScalingFactor())
        guard case .kl(let m) = model else { return XCTFail("expected AutoencoderKL") }
        let x = try straight.fixedImages(count: 2)
        let rec = try GradMode.noGrad { try m.reconstruct(x, tiled: .never) }
        XCTAssertEqual(rec.shape, x.shape)
    }

    /// bf16-mixed (with the discriminator from step 3): the losses stay within bf16 noise of float32's, the precision is
    /// logged and checkpointed, and a float32 configuration refuses to resume the run.
    func testBF16MixedRunTracksFloat32() throws {
        let work = try tempDirectory("ae-bf16")
        defer { try? FileManager.default.removeItem(at: work) }
        let data = work.appendingPathComponent("data")
        try writeTinyImageFolder(data)
        var curves: [[String: Float]] = []
        var bf16Run: URL?
        for extra in [[:], ["precision": "bf16-mixed"]] as [[String: Any]] {
            let run = work.appendingPathComponent("run-\(curves.count)")
            let trainer = try AutoencoderTrainConfig.load(config(data: data, run: run, extra)).makeTrainer(runDir: run)
            var losses: [String: Float] = [:]
            trainer.onStep = { e in
                XCTAssertEqual(e.precision, extra.isEmpty ? nil : "bf16-mixed")
                for k in ["total_loss", "disc_loss"] { if let v = e.losses[k] { losses["\(k).\(e.step)"] = v } }
            }
            try trainer.train()
            curves.append(losses)
            if !extra.isEmpty { bf16Run = run }
        }
        XCTAssertEqual(Set(curves[0].keys), Set(curves[1].keys))
        var worst: Float = 0
        for (k, v) in curves[0] { worst = max(worst, abs(try XCTUnwrap(curves[1][k]) - v) / max(abs(v), 1e-3)) }
        print("autoencoder bf16-mixed vs float32, 6 steps: max relative loss difference \(worst)")
        XCTAssertNotEqual(curves[0], curves[1], "bf16-mixed ran the float32 computation")
        XCTAssertLessThanOrEqual(worst, 0.05)
        let run = try XCTUnwrap(bf16Run)
        let ckpt = try XCTUnwrap(Trainer.latestCheckpoint(in: run))
        XCTAssertEqual(try SafeTensors(url: ckpt).metadata?["precision"], "bf16-mixed")
        XCTAssertThrowsError(try AutoencoderTrainConfig.load(config(data: data, run: run)).makeTrainer(runDir: run).resume()) { e in
            XCTAssertTrue("\(e)".contains("precision bf16-mixed"), "\(e)")
        }
    }

    func testVQRunLowersTheLoss() throws {
        let work = try tempDirectory("ae-vq")
        defer { try? FileManager.default.removeItem(at: work) }
        let data = work.appendingPathComponent("data")
        try writeTinyImageFolder(data)
        let run = work.appendingPathComponent("run")
        let cfg = try AutoencoderTrainConfig.load(config(data: data, run: run, [
            "max_steps": 30, "ckpt_every": 30, "use_discriminator": false, "pixel_loss": "l2", "random_flip": false,
            "model_config": ["_class_name": "VQModel", "block_out_channels": [8, 8], "layers_per_block": 1,
                             "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
                             "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"], "latent_channels": 3,
                             "num_vq_embeddings": 16, "norm_num_groups": 4, "sample_size": 16] as [String: Any],
        ]))
        XCTAssertEqual(cfg.kind, .vq)
        let trainer = try cfg.makeTrainer(runDir: run)
        XCTAssertNil(trainer.loss.adversarial)
        var first: Float?, last: Float = 0
        trainer.onStep = { e in
            let v = e.losses["total_loss"] ?? .nan
            if first == nil { first = v }
            last = v
            XCTAssertNotNil(e.losses["quant_loss"])
        }
        try trainer.train()
        XCTAssertLessThan(last, try XCTUnwrap(first) * 0.7)
        let (model, _) = try FirstStageModel.load(folder: run.appendingPathComponent("vqvae"))
        guard case .vq = model else { return XCTFail("expected a VQModel") }
    }

    func testConfigErrorsNameTheKey() throws {
        let work = try tempDirectory("ae-config")
        defer { try? FileManager.default.removeItem(at: work) }
        let data = work.appendingPathComponent("data"), run = work.appendingPathComponent("run")
        try writeTinyImageFolder(data)
        let cases: [([String: Any], String)] = [
            (["kl_weight": -1], "kl_weight must be >= 0"),
            (["disc_loss": "wasserstein"], "disc_loss must be one of hinge, vanilla"),
            (["pixel_loss": "l2"], "pixel_loss applies to VQModel only"),
            (["lpips_vgg": "/nonexistent/vgg.safetensors"], "lpips_vgg /nonexistent/vgg.safetensors does not exist"),
            (["model_config": ["_class_name": "UNet2DModel"]], "must be AutoencoderKL or VQModel"),
            (["batch_size": 0], "batch_size must be positive"),
            (["learning_rate": 1], "unknown keys learning_rate"),
            (["export_dtype": "int8"], "export_dtype must be one of"),
        ]
        for (extra, message) in cases {
            XCTAssertThrowsError(try AutoencoderTrainConfig.load(config(data: data, run: run, extra))) {
                XCTAssertTrue("\($0)".contains(message), "\(extra): \($0)")
            }
        }
        // Resuming with another seed would not continue the data order: refused.
        let t = try AutoencoderTrainConfig.load(config(data: data, run: run, ["max_steps": 3])).makeTrainer(runDir: run)
        try t.train()
        let other = try AutoencoderTrainConfig.load(config(data: data, run: run, ["seed": 6])).makeTrainer(runDir: run)
        XCTAssertThrowsError(try other.resume()) { XCTAssertTrue("\($0)".contains("seed"), "\($0)") }
    }
}
