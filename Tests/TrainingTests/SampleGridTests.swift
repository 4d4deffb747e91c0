import Diffusion
import Foundation
import Imaging
import XCTest
@testable import Training

// `ldm train ldm` with sample_every: the sample-grid callback of Sources/ldm/TrainCommand.swift (DDIM through the
// Pipelines denoise loop) runs the built `ldm` executable end to end; plus the config keys behind it.

final class SampleGridTests: XCTestCase {
    /// The folder holding the built products (ldm next to the .xctest bundle on Linux).
    var productsDirectory: URL {
        #if os(macOS)
        for b in Bundle.allBundles where b.bundlePath.hasSuffix(".xctest") { return b.bundleURL.deletingLastPathComponent() }
        return Bundle.main.bundleURL
        #else
        return Bundle.main.bundleURL
        #endif
    }

    func makeData(_ dir: URL, classes: [String]) throws {
        for (k, cls) in classes.enumerated() {
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

    func baseConfig(data: URL) -> [String: Any] {
        ["base_learning_rate": 1e-4, "batch_size": 2, "max_steps": 4, "ckpt_every": 4, "data_dir": data.path, "image_size": 16,
         "seed": 5, "conditioning": "class", "sample_every": 2, "sample_steps": 3, "ema_decay": 0.9,
         "unet_config": ["_class_name": "UNet2DModel", "in_channels": 3, "out_channels": 3, "block_out_channels": [8, 16],
                         "layers_per_block": 1, "down_block_types": ["DownBlock2D", "DownBlock2D"],
                         "up_block_types": ["UpBlock2D", "UpBlock2D"], "norm_num_groups": 4, "num_class_embeds": 2] as [String: Any]]
    }

    func testConfigKeysAndSchedulerConfig() throws {
        let data = try tempDirectory("grid-keys")
        defer { try? FileManager.default.removeItem(at: data) }
        try makeData(data, classes: ["a", "b"])
        func parse(_ extra: [String: Any]) throws -> LDMTrainConfig {
            var d = baseConfig(data: data)
            for (k, v) in extra { d[k] = v }
            return try LDMTrainConfig.parse(JSONSerialization.data(withJSONObject: d))
        }
        for (extra, fragment) in [(["sample_every": 0], "sample_every must be positive"), (["sample_every": 1.5], "sample_every must be an integer"),
                                  (["sample_steps": -1], "sample_steps must be positive"), (["sample_steps": 2000], "sample_steps must be at most timesteps")] as [([String: Any], String)] {
            XCTAssertThrowsError(try parse(extra)) { XCTAssertTrue("\($0)".contains(fragment), "\($0) lacks \(fragment)") }
        }
        let c = try parse(["parameterization": "v", "beta_schedule": "linear", "linear_start": 0.0015, "linear_end": 0.0195])
        XCTAssertEqual(c.sampleEvery, 2)
        XCTAssertEqual(try c.trainerOptions().sampleEvery, 2)
        let s = try c.samplingSchedulerConfig()
        XCTAssertEqual(s.predictionType, "v_prediction")
        XCTAssertEqual(s.betaSchedule, "scaled_linear")
        XCTAssertEqual(s.numTrainTimesteps, 1000)
        // The DDIM scheduler's alphas_cumprod is the training one (float32 rounding of the float64 CompVis betas).
        let ddim = try DDIMScheduler(config: s)
        let train = try c.noiseSchedule()
        for t in [0, 499, 999] { XCTAssertEqual(ddim.schedule.alphasCumprod[t], train.alphasCumprod[t], accuracy: 1e-5) }
        // diffusers' own scaled_linear gives the same schedule from the names alone.
        var named = s
        named.trainedBetas = nil
        XCTAssertEqual(try DDIMScheduler(config: named).schedule.alphasCumprod[999], train.alphasCumprod[999], accuracy: 1e-5)
        XCTAssertEqual(try parse(["parameterization": "x0", "beta_schedule": "sqrt_linear"]).samplingSchedulerConfig().betaSchedule, "linear")
    }

    /// Runs `ldm train ldm` on `config` (data written to work/data) and checks the 2x2 grids of `side` px samples.
    func assertTrainWritesGrids(_ edit: (inout [String: Any]) -> Void, side: Int, file: StaticString = #filePath, line: UInt = #line) throws {
        let ldm = productsDirectory.appendingPathComponent("ldm")
        guard FileManager.default.isExecutableFile(atPath: ldm.path) else {
            return XCTFail("the ldm executable is not built at \(ldm.path) (swift test builds it with the package)", file: file, line: line)
        }
        let work = try tempDirectory("grid-run")
        defer { try? FileManager.default.removeItem(at: work) }
        let data = work.appendingPathComponent("data"), run = work.appendingPathComponent("run")
        try makeData(data, classes: ["a", "b"])
        var config = baseConfig(data: data)
        edit(&config)
        let configURL = work.appendingPathComponent("train.json")
        try JSONSerialization.data(withJSONObject: config).write(to: configURL)
        let p = Process()
        p.executableURL = ldm
        p.arguments = ["train", "ldm", "--config", configURL.path, "--run-dir", run.path, "--log-every", "1"]
        let out = Pipe()
        p.standardOutput = out; p.standardError = out
        try p.run()
        let log = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, log, file: file, line: line)
        for step in [2, 4] {
            let url = run.appendingPathComponent(String(format: "samples/step-%08d.png", step))
            let img = try ImageIO.loadRGB(path: url.path)
            XCTAssertEqual([img.width, img.height], [2 * side, 2 * side], "2x2 grid of \(side)x\(side) samples", file: file, line: line)
            XCTAssertGreaterThan(Set(img.pixels).count, 1, "a grid of one flat colour", file: file, line: line)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: run.appendingPathComponent("samples/step-00000001.png").path), file: file, line: line)
    }

    /// Class-conditional, pixel space (classes 0, 1, 0, 1 in the grid).
    func testTrainCommandWritesClassConditionalGrids() throws {
        try assertTrainWritesGrids({ _ in }, side: 16)
    }

    /// Unconditional, through the tiny AutoencoderKL of AutoencodersTests (f4: 4x4 latents), scale_by_std, v-prediction.
    func testTrainCommandWritesGridsThroughFirstStage() throws {
        try assertTrainWritesGrids({ c in
            c["conditioning"] = "none"; c["scale_by_std"] = true; c["parameterization"] = "v"
            c["first_stage"] = fixturesURL.deletingLastPathComponent().deletingLastPathComponent()
                .appendingPathComponent("AutoencodersTests/Fixtures/kl_f4").path
            c["unet_config"] = ["_class_name": "UNet2DModel", "in_channels": 4, "out_channels": 4, "block_out_channels": [8, 16],
                                "layers_per_block": 1, "down_block_types": ["DownBlock2D", "DownBlock2D"],
                                "up_block_types": ["UpBlock2D", "UpBlock2D"], "norm_num_groups": 4] as [String: Any]
        }, side: 16)
    }

    /// Caption-conditioned (first captions of the data), pixel space, with the tiny CLIP text encoder.
    func testTrainCommandWritesTextConditionedGrids() throws {
        let (enc, tok) = try makeTextParts()
        defer { try? FileManager.default.removeItem(at: enc.deletingLastPathComponent()) }
        try assertTrainWritesGrids({ c in
            c["conditioning"] = "text"; c["text_encoder"] = enc.path; c["tokenizer"] = tok.path
            c["unet_config"] = ["_class_name": "UNet2DConditionModel", "in_channels": 3, "out_channels": 3, "block_out_channels": [8, 16],
                                "layers_per_block": 1, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                                "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "norm_num_groups": 4, "attention_head_dim": 2,
                                "cross_attention_dim": 32] as [String: Any]
        }, side: 16)
    }

    /// Caption-conditioned with a text encoder trained from scratch (text_encoder_config, the shipped CLIP vocabulary):
    /// the grid encodes the captions with the current encoder.
    func testTrainCommandWritesGridsWithTrainableTextEncoder() throws {
        try assertTrainWritesGrids({ c in
            c["conditioning"] = "text"; c["tokenizer"] = "openai-clip"; c["cond_drop_prob"] = 0.3
            c["text_encoder_config"] = ["vocab_size": 49408, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
                                        "num_attention_heads": 4, "max_position_embeddings": 8] as [String: Any]
            c["unet_config"] = ["_class_name": "UNet2DConditionModel", "in_channels": 3, "out_channels": 3, "block_out_channels": [8, 16],
                                "layers_per_block": 1, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                                "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "norm_num_groups": 4, "attention_head_dim": 2,
                                "cross_attention_dim": 32] as [String: Any]
        }, side: 16)
    }
}
