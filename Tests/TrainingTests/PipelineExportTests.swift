import Checkpoints
import Diffusion
import Foundation
import Imaging
import TensorCore
import XCTest
@testable import Training

// RUN_DIR/pipeline/ of `ldm train ldm`: a diffusers folder that `ldm sample` / `ldm txt2img` (ModelBundle.load and the
// Pipelines code paths) read directly. The pipelines are exercised through the built `ldm` executable, since this
// test target links Training only.

/// The built `ldm` executable (next to the .xctest bundle on Linux).
var ldmExecutable: URL {
    #if os(macOS)
    for b in Bundle.allBundles where b.bundlePath.hasSuffix(".xctest") { return b.bundleURL.deletingLastPathComponent().appendingPathComponent("ldm") }
    #endif
    return Bundle.main.bundleURL.appendingPathComponent("ldm")
}

/// The generation commands run at `--precision f32` unless a test names a precision: their images are compared with
/// diffusers' float32 ones, and the default (auto) computes in bf16 on CPUs with native bf16.
func float32Precision(_ args: [String]) -> [String] {
    let generation: Set = ["txt2img", "img2img", "inpaint", "upscale", "sample", "semantic", "layout"]
    guard let command = args.first, generation.contains(command), !args.contains("--precision") else { return args }
    return args + ["--precision", "f32"]
}

/// Runs `ldm args`; returns the exit status and the combined output.
func runLDM(_ args: [String]) throws -> (status: Int32, output: String) {
    guard FileManager.default.isExecutableFile(atPath: ldmExecutable.path) else {
        throw TrainingError("the ldm executable is not built at \(ldmExecutable.path) (swift test builds it with the package)")
    }
    let p = Process()
    p.executableURL = ldmExecutable
    p.arguments = float32Precision(args)
    let out = Pipe()
    p.standardOutput = out; p.standardError = out
    try p.run()
    let log = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    p.waitUntilExit()
    return (p.terminationStatus, log)
}

let tinyKLFirstStage = fixturesURL.deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("AutoencodersTests/Fixtures/kl_f4")

/// Class folders a/, b/ of 16x16 PNGs with captions.
func writeTinyImageFolder(_ dir: URL) throws {
    for (k, cls) in ["a", "b"].enumerated() {
        let sub = dir.appendingPathComponent(cls)
        try FileManager.default.createDirectory(at: sub, withIntermediateDirectories: true)
        for i in 0..<2 {
            var img = try RGBImage(width: 16, height: 16, fill: (UInt8(40 + 150 * k), UInt8(i * 90), 30))
            for x in 0..<16 { img.pixels[3 * x + 1] = UInt8(x * 15) }
            try img.writePNG(to: sub.appendingPathComponent("\(i).png").path)
            try "a \(cls) picture \(i)".write(to: sub.appendingPathComponent("\(i).txt"), atomically: true, encoding: .utf8)
        }
    }
}

final class PipelineExportTests: XCTestCase {
    func classConfig(data: URL, run: URL, _ extra: [String: Any] = [:]) throws -> URL {
        let d: [String: Any] = [
            "base_learning_rate": 1e-4, "batch_size": 2, "max_steps": 2, "ckpt_every": 1, "data_dir": data.path,
            "image_size": 16, "seed": 3, "conditioning": "class", "cond_drop_prob": 0.5, "scale_by_std": true,
            "ema_decay": 0.9, "first_stage": tinyKLFirstStage.path, "run_dir": run.path, "export_dtype": "bfloat16",
            "unet_config": tinyClassUNetConfigDictionary,
        ]
        return try writeTrainConfig(d, extra, besides: data)
    }

    func testClassConditionalRunExportsSampleablePipeline() throws {
        let work = try tempDirectory("export-class")
        defer { try? FileManager.default.removeItem(at: work) }
        let data = work.appendingPathComponent("data"), run = work.appendingPathComponent("run")
        try writeTinyImageFolder(data)
        let configURL = try classConfig(data: data, run: run)
        let cfg = try LDMTrainConfig.load(configURL)
        XCTAssertEqual(cfg.exportDType, .bfloat16)
        let trainer = try cfg.makeTrainer(runDir: run)
        try trainer.train()
        XCTAssertEqual(trainer.step, 2)
        let pipe = run.appendingPathComponent("pipeline")

        // model_index.json: diffusers LDMPipeline with a vae/ (AutoencoderKL) first stage.
        let index = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: pipe.appendingPathComponent("model_index.json"))) as? [String: Any])
        XCTAssertEqual(index["_class_name"] as? String, "LDMPipeline")
        XCTAssertEqual(index["unet"] as? [String], ["diffusers", "UNet2DModel"])
        XCTAssertEqual(index["vae"] as? [String], ["diffusers", "AutoencoderKL"])
        XCTAssertEqual(index["scheduler"] as? [String], ["diffusers", "DDIMScheduler"])
        XCTAssertNil(index["text_encoder"])
        // unet/: EMA weights stored as bfloat16, sample_size = the 4x4 latent grid.
        let unetConfig = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: pipe.appendingPathComponent("unet/config.json"))) as? [String: Any])
        XCTAssertEqual(unetConfig["sample_size"] as? Int, 4)
        XCTAssertEqual(unetConfig["num_class_embeds"] as? Int, 3)
        let weights = try SafeTensors(url: pipe.appendingPathComponent("unet/diffusion_pytorch_model.safetensors"))
        let convIn = try XCTUnwrap(weights["conv_in.weight"])
        XCTAssertEqual(convIn.dtype, .BF16)
        let shadow = try XCTUnwrap(trainer.ema?.shadow["conv_in.weight"]).toArray()
        XCTAssertEqual(try convIn.floats(), shadow.map { Float(bitPattern: UInt32(bf16Bits($0)) << 16) })
        XCTAssertEqual(try Data(contentsOf: pipe.appendingPathComponent("unet/diffusion_pytorch_model.safetensors")),
                       try Data(contentsOf: run.appendingPathComponent("unet/diffusion_pytorch_model.safetensors")))
        // vae/: the first stage with the measured scale_by_std factor as scaling_factor.
        let vaeConfig = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: pipe.appendingPathComponent("vae/config.json"))) as? [String: Any])
        let scale = try XCTUnwrap(trainer.scaleFactor)
        XCTAssertNotEqual(scale, 1)
        XCTAssertEqual((vaeConfig["scaling_factor"] as? NSNumber)?.floatValue, scale)
        XCTAssertEqual(try Data(contentsOf: pipe.appendingPathComponent("vae/diffusion_pytorch_model.safetensors")),
                       try Data(contentsOf: tinyKLFirstStage.appendingPathComponent("diffusion_pytorch_model.safetensors")))
        // scheduler/: round-trips through SchedulerConfig to the training schedule.
        let sched = try SchedulerConfig.load(contentsOf: pipe.appendingPathComponent("scheduler/scheduler_config.json"))
        XCTAssertEqual(sched, try cfg.samplingSchedulerConfig())
        XCTAssertEqual(try DDIMScheduler(config: sched).schedule.alphasCumprod[999], try cfg.noiseSchedule().alphasCumprod[999], accuracy: 1e-6)

        // `ldm sample` reads it: ModelSummary sees the 3 classes; class 1 with guidance against the null class 2.
        let noClass = try runLDM(["sample", "--model", pipe.path, "--output", work.appendingPathComponent("x.png").path, "--quiet"])
        XCTAssertNotEqual(noClass.status, 0)
        XCTAssertTrue(noClass.output.contains("class-conditional (3 classes)"), noClass.output)
        let out = work.appendingPathComponent("class1.png")
        let r = try runLDM(["sample", "--model", pipe.path, "--class", "1", "--cfg-scale", "2", "--steps", "3", "--seed", "7",
                            "--output", out.path, "--quiet"])
        XCTAssertEqual(r.status, 0, r.output)
        let img = try ImageIO.loadRGB(path: out.path)
        XCTAssertEqual([img.width, img.height], [16, 16])
        XCTAssertGreaterThan(Set(img.pixels).count, 1)

        // --export-only rewrites the same folder from the last checkpoint without training.
        let unetBytes = try Data(contentsOf: pipe.appendingPathComponent("unet/diffusion_pytorch_model.safetensors"))
        try FileManager.default.removeItem(at: pipe)
        let e = try runLDM(["train", "ldm", "--config", configURL.path, "--resume", run.path, "--export-only"])
        XCTAssertEqual(e.status, 0, e.output)
        XCTAssertTrue(e.output.contains("pipeline in"), e.output)
        XCTAssertEqual(try Data(contentsOf: pipe.appendingPathComponent("unet/diffusion_pytorch_model.safetensors")), unetBytes)
        XCTAssertEqual(try String(contentsOf: run.appendingPathComponent("loss.jsonl"), encoding: .utf8).split(separator: "\n").count, 2)
        let bad = try runLDM(["train", "ldm", "--config", configURL.path, "--export-only"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.output.contains("--export-only needs --resume"), bad.output)
    }

    func testExportDTypeAndPixelSpace() throws {
        let work = try tempDirectory("export-keys")
        defer { try? FileManager.default.removeItem(at: work) }
        let data = work.appendingPathComponent("data"), run = work.appendingPathComponent("run")
        try writeTinyImageFolder(data)
        XCTAssertThrowsError(try LDMTrainConfig.load(classConfig(data: data, run: run, ["export_dtype": "float8"]))) {
            XCTAssertTrue("\($0)".contains("export_dtype must be one of float32, bfloat16, float16"), "\($0)")
        }
        XCTAssertEqual(try LDMTrainConfig.load(classConfig(data: data, run: run, ["export_dtype": NSNull()])).exportDType, .float32)
        // Pixel space: a DDIMPipeline folder (unet/ + scheduler/, no first stage) that `ldm sample` reads.
        var pixel = try LDMTrainConfig.load(classConfig(data: data, run: run, ["max_steps": 1, "scale_by_std": false]))
        pixel.firstStage = nil
        pixel.unetConfig?["in_channels"] = 3; pixel.unetConfig?["out_channels"] = 3
        let t = try pixel.makeTrainer(runDir: run)
        try t.train()
        XCTAssertTrue(FileManager.default.fileExists(atPath: run.appendingPathComponent("unet/config.json").path))
        let pipe = run.appendingPathComponent("pipeline")
        let index = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: pipe.appendingPathComponent("model_index.json"))) as? [String: Any])
        XCTAssertEqual(index["_class_name"] as? String, "DDIMPipeline")
        XCTAssertNil(index["vae"]); XCTAssertNil(index["vqvae"])
        let out = work.appendingPathComponent("pixel.png")
        let r = try runLDM(["sample", "--model", pipe.path, "--class", "0", "--steps", "2", "--seed", "1", "--output", out.path, "--quiet"])
        XCTAssertEqual(r.status, 0, r.output)
        let img = try ImageIO.loadRGB(path: out.path)
        XCTAssertEqual([img.width, img.height], [16, 16])
    }
}
