// CompVis' own super-resolution format end to end (tools/fixtures/compvis_bsr_sr.py): a tiny CompVis LatentDiffusion
// of models/ldm/bsr_sr/config.yaml's shape (cond_stage torch.nn.Identity, concat via concat_mode, VQModelInterface
// f = 4, UNet 6 -> 3 channels; model.ckpt float16, bsr-tiny.yaml / its parsed copy bsr-tiny.json) against CompVis'
// own DDIMSampler driven as the bsr notebook does (c = low-res image in [-1, 1] concatenated to x, decode with
// quantization, clamp((x + 1) / 2)). Ours: ModelBundle.load(checkpoint:yaml:) + LatentDiffusionPipeline.upscale, the
// code `ldm upscale --config --model` runs, with the torch generator; DDIM from the YAML's betas (diffusers DDIM,
// leading + steps_offset 1 = CompVis' range(0, 1000, 1000 // S) + 1) or `--sampler compvis-ddim`.
import Checkpoints
import Foundation
import Imaging
import Pipelines
import TensorCore
import XCTest
@testable import CompVis

final class CompVisSuperResolutionTests: XCTestCase {
    struct Case: Decodable { let name, image: String; let steps: Int; let seed: UInt64; let eta: Double; let sampler: String?; let width, height: Int }

    let dir = fixtures.appendingPathComponent("compvis-bsr-sr")
    var checkpoint: URL { dir.appendingPathComponent("model.ckpt") }

    func yaml() throws -> [String: Any] {
        try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent("bsr-tiny.json"))) as? [String: Any])
    }

    func cases() throws -> [Case] { try JSONDecoder().decode([Case].self, from: Data(contentsOf: dir.appendingPathComponent("cases.json"))) }

    func upscale(_ bundle: ModelBundle, _ c: Case, seed: UInt64? = nil) throws -> RGBImage {
        let low = try ImageIO.loadRGB(path: dir.appendingPathComponent(c.image).path)
        let r = try LatentDiffusionPipeline(bundle: bundle).upscale(low, SamplingOptions(sampler: c.sampler, steps: c.steps, eta: c.eta),
                                                                    generator: TorchGenerator(seed: seed ?? c.seed))
        return try XCTUnwrap(r.images.first)
    }

    func testYAMLCheckpointMatchesCompVisDDIM() throws {
        let s = try ModelSummary.read(yaml: yaml())
        XCTAssertEqual(s.firstStage, .vqModel); XCTAssertFalse(s.hasTextEncoder)
        XCTAssertEqual(s.unetInChannels, 6); XCTAssertEqual(s.unetOutChannels, 3)
        let config = try CompVisModelConfig(yaml: yaml())
        XCTAssertEqual(config.condName, "Identity"); XCTAssertEqual(config.conditioningKey, "concat")   // from concat_mode
        let bundle = try ModelBundle.load(checkpoint: checkpoint, yaml: yaml())
        XCTAssertEqual(bundle.schedulerConfig.className, "DDIMScheduler")
        XCTAssertEqual(bundle.schedulerConfig.betaStart, 0.0015); XCTAssertEqual(bundle.schedulerConfig.betaEnd, 0.0155)
        XCTAssertEqual(bundle.vaeScaleFactor, 4)
        XCTAssertThrowsError(try LatentDiffusionPipeline(bundle: bundle).sample(SamplingOptions(steps: 1), generator: TorchGenerator(seed: 0))) { e in
            XCTAssertEqual(e as? PipelineError, .wrongModelKind(model: checkpoint.path, kind: .superResolution, task: .sample))
        }
        let all = try cases()
        XCTAssertEqual(all.count, 3)
        for c in all {
            let image = try upscale(bundle, c)
            XCTAssertEqual(image.width, c.width, c.name); XCTAssertEqual(image.height, c.height, c.name)
            let want = try ImageIO.loadRGB(path: dir.appendingPathComponent(c.name + ".png").path)
            let db = psnr(image.pixels, want.pixels)
            print("PSNR compvis-bsr-sr \(c.name): \(db) dB")
            XCTAssertGreaterThanOrEqual(db, 45, c.name)
        }
        // The threshold separates: another seed is far from the reference.
        let c = try XCTUnwrap(all.first { $0.name == "ddim_eta1" })
        let other = try upscale(bundle, c, seed: c.seed + 1)
        XCTAssertLessThan(psnr(other.pixels, try ImageIO.loadRGB(path: dir.appendingPathComponent(c.name + ".png").path).pixels), 30)
    }

    /// torch.nn.Identity as the cond stage means "concatenate the low-res image": with any other conditioning key
    /// the YAML is refused with a message (before any weight is read).
    func testIdentityNeedsConcat() throws {
        for (key, value) in [("conditioning_key", "crossattn" as Any), ("conditioning_key", "hybrid"), ("concat_mode", false)] {
            var y = try yaml()
            var model = try XCTUnwrap(y["model"] as? [String: Any]), params = try XCTUnwrap(model["params"] as? [String: Any])
            params[key] = value; model["params"] = params; y["model"] = model
            XCTAssertThrowsError(try CompVisModelConfig(yaml: y), "\(key)") { e in
                XCTAssertTrue("\(e)".contains("torch.nn.Identity is supported with conditioning_key concat only"), "\(e)")
            }
            XCTAssertThrowsError(try ModelBundle.load(checkpoint: checkpoint, yaml: y))
        }
        var y = try yaml()
        var model = try XCTUnwrap(y["model"] as? [String: Any]), params = try XCTUnwrap(model["params"] as? [String: Any])
        params["conditioning_key"] = "concat"; model["params"] = params; y["model"] = model
        XCTAssertEqual(try CompVisModelConfig(yaml: y).conditioningKey, "concat")
    }
}
