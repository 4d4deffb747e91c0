// CompVis' semantic-synthesis format end to end (tools/fixtures/compvis_semantic.py): a tiny CompVis LatentDiffusion
// of models/ldm/semantic_synthesis256/config.yaml's shape (cond_stage SpatialRescaler n_stages 2, 5 labels -> 3
// channels, concat via concat_mode, VQModelInterface f = 4, UNet 6 -> 3 channels; model.ckpt float16,
// semantic-tiny.yaml / its parsed copy semantic-tiny.json) against CompVis' own DDIMSampler with c =
// SpatialRescaler.encode(np.eye(5)[labels]) concatenated to x. Ours: ModelBundle.load(checkpoint:yaml:) +
// ImageIO.loadLabelMap + LatentDiffusionPipeline.semanticSynthesis, the code `ldm semantic --config --model` runs.
import Checkpoints
import Foundation
import Imaging
import Pipelines
import TensorCore
import XCTest
@testable import CompVis

final class CompVisSemanticSynthesisTests: XCTestCase {
    struct Case: Decodable {
        let name, labels: String; let steps: Int; let seed: UInt64; let eta: Double; let sampler: String?; let batch: Int
        let outputs: [String]; let width, height: Int
    }

    let dir = fixtures.appendingPathComponent("compvis-semantic")
    var checkpoint: URL { dir.appendingPathComponent("model.ckpt") }

    func yaml() throws -> [String: Any] {
        try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent("semantic-tiny.json"))) as? [String: Any])
    }

    /// The YAML with model.params[key] (or, with `cond`/`unet`, cond_stage_config.params / unet_config.params) changed.
    func yaml(set key: String, _ value: Any?, in section: String? = nil) throws -> [String: Any] {
        var y = try yaml()
        var model = try XCTUnwrap(y["model"] as? [String: Any]), params = try XCTUnwrap(model["params"] as? [String: Any])
        if let section {
            var s = try XCTUnwrap(params[section] as? [String: Any]), p = try XCTUnwrap(s["params"] as? [String: Any])
            p[key] = value; s["params"] = p; params[section] = s
        } else {
            params[key] = value
        }
        model["params"] = params; y["model"] = model
        return y
    }

    func cases() throws -> [Case] { try JSONDecoder().decode([Case].self, from: Data(contentsOf: dir.appendingPathComponent("cases.json"))) }

    func labels(_ name: String) throws -> GrayImage { try ImageIO.loadLabelMap(path: dir.appendingPathComponent(name).path) }

    func run(_ bundle: ModelBundle, _ c: Case, labels map: GrayImage? = nil, seed: UInt64? = nil) throws -> GenerationResult {
        try LatentDiffusionPipeline(bundle: bundle).semanticSynthesis(
            map ?? labels(c.labels), SamplingOptions(sampler: c.sampler, steps: c.steps, eta: c.eta, batchSize: c.batch),
            generator: TorchGenerator(seed: seed ?? c.seed))
    }

    func synthesize(_ bundle: ModelBundle, _ c: Case, labels map: GrayImage? = nil, seed: UInt64? = nil) throws -> [RGBImage] {
        try run(bundle, c, labels: map, seed: seed).images
    }

    func reference(_ file: String) throws -> RGBImage { try ImageIO.loadRGB(path: dir.appendingPathComponent(file).path) }

    func testYAMLCheckpointMatchesCompVisDDIM() throws {
        let s = try ModelSummary.read(yaml: yaml())
        XCTAssertEqual(s.firstStage, .vqModel); XCTAssertFalse(s.hasTextEncoder)
        XCTAssertEqual(s.unetInChannels, 6); XCTAssertEqual(s.unetOutChannels, 3)
        let g = try XCTUnwrap(s.semanticSynthesis)
        XCTAssertEqual(g.labelCount, 5); XCTAssertEqual(g.conditionChannels, 3); XCTAssertEqual(g.stages, 2)
        XCTAssertEqual(g.firstStageFactor, 4); XCTAssertEqual(g.unetDownsamplings, 0); XCTAssertEqual(g.sizeMultiple, 4)
        let config = try CompVisModelConfig(yaml: yaml())
        XCTAssertEqual(config.condName, "SpatialRescaler"); XCTAssertEqual(config.conditioningKey, "concat")   // from concat_mode
        let bundle = try ModelBundle.load(checkpoint: checkpoint, yaml: yaml())
        XCTAssertNotNil(bundle.spatialRescaler); XCTAssertEqual(bundle.semanticSynthesis, g)
        XCTAssertEqual(bundle.schedulerConfig.betaStart, 0.0015); XCTAssertEqual(bundle.schedulerConfig.betaEnd, 0.006)
        let all = try cases()
        XCTAssertEqual(all.count, 3)
        let refs = try CheckpointFile.open(dir.appendingPathComponent("reference.safetensors"))
        for c in all {
            let result = try run(bundle, c)
            // The latents before decoding (f32 parity of the whole sampling loop: SpatialRescaler, concat, UNet, DDIM).
            let want = try XCTUnwrap(refs.tensors[c.name + ".latents"]).tensor().float32().toArray()
            XCTAssertEqual(result.latents.count, want.count, c.name)
            let err = zip(result.latents, want).map { abs($0 - $1) }.max() ?? .infinity
            let scale = want.map { abs($0) }.max() ?? 1
            print("compvis-semantic \(c.name): latents max abs error \(err) (max |latent| \(scale))")
            XCTAssertLessThanOrEqual(err, 1e-3 * scale, c.name)
            let images = result.images
            XCTAssertEqual(images.count, c.outputs.count, c.name)
            for (image, file) in zip(images, c.outputs) {
                XCTAssertEqual(image.width, c.width, c.name); XCTAssertEqual(image.height, c.height, c.name)
                let want = try reference(file)
                let db = psnr(image.pixels, want.pixels)
                let maxErr = zip(image.pixels, want.pixels).map { abs(Int($0) - Int($1)) }.max() ?? 0
                print("PSNR compvis-semantic \(file): \(db) dB, max error \(maxErr) levels")
                XCTAssertGreaterThanOrEqual(db, 45, file)
            }
        }
        // The threshold separates: another seed, or another label map, is far from the reference.
        let c = try XCTUnwrap(all.first { $0.name == "ddim_eta0" })
        let want = try reference(c.outputs[0]).pixels
        let otherSeed = try synthesize(bundle, c, seed: c.seed + 1)[0]
        XCTAssertLessThan(psnr(otherSeed.pixels, want), 30)
        var shifted = try labels(c.labels)
        shifted.pixels = shifted.pixels.map { ($0 + 1) % 5 }
        let otherLabels = try synthesize(bundle, c, labels: shifted)[0]
        let db = psnr(otherLabels.pixels, want)
        print("PSNR compvis-semantic ddim_eta0 with the labels shifted by one: \(db) dB")
        XCTAssertLessThan(db, 40)
    }

    /// Grayscale, palette (8- and 4-bit) and interlaced label maps give the indices PIL's np.array gives.
    func testLabelMapsDecodeToTheirIndices() throws {
        let gray = try labels("labels.png")
        XCTAssertEqual(gray.width, 32); XCTAssertEqual(gray.height, 32)
        XCTAssertEqual(Set(gray.pixels), [0, 1, 2, 3, 4])
        XCTAssertEqual(try labels("labels-palette.png"), gray)
        XCTAssertEqual(try labels("labels-adam7.png"), gray)
        // The palette file's colours are not its indices.
        XCTAssertNotEqual(try ImageIO.loadMask(path: dir.appendingPathComponent("labels-palette.png").path).pixels, gray.pixels)
        let wide = try labels("labels-wide.png")
        XCTAssertEqual(wide.width, 64); XCTAssertEqual(wide.height, 32); XCTAssertEqual(Set(wide.pixels), [0, 1, 2, 3, 4])
        // An 8-bit gray PNG of our own encoder, with every value.
        let all = try GrayImage(width: 16, height: 16, pixels: (0..<256).map { UInt8($0) })
        XCTAssertEqual(try ImageIO.decodeLabelMap(PNGCodec.encode(all)), all)
        // Gray stored as RGB is accepted, colour is not; JPEG is refused.
        let grayRGB = try RGBImage(width: 2, height: 1, pixels: [7, 7, 7, 9, 9, 9])
        XCTAssertEqual(try ImageIO.decodeLabelMap(PNGCodec.encode(grayRGB)).pixels, [7, 9])
        let colour = try RGBImage(width: 2, height: 1, pixels: [7, 7, 7, 9, 8, 9])
        XCTAssertThrowsError(try ImageIO.decodeLabelMap(PNGCodec.encode(colour), name: "c.png")) { e in
            XCTAssertTrue("\(e)".contains("pixel (1, 0) has colour (9, 8, 9)"), "\(e)")
        }
        XCTAssertThrowsError(try ImageIO.decodeLabelMap([0xFF, 0xD8, 0xFF, 0xE0, 0, 16] + Array(repeating: 0, count: 32), name: "c.jpg")) { e in
            XCTAssertTrue("\(e)".contains("must be a PNG"), "\(e)")
        }
        var bytes = try PNGCodec.encode(all)
        let idat = try XCTUnwrap((0..<(bytes.count - 4)).first { Array(bytes[$0..<($0 + 4)]) == Array("IDAT".utf8) })
        bytes[idat + 6] ^= 0xFF                                // inside the image data: a CRC error, not a crash
        XCTAssertThrowsError(try ImageIO.decodeLabelMap(bytes)) { e in XCTAssertTrue("\(e)".contains("CRC error in chunk IDAT"), "\(e)") }
        XCTAssertThrowsError(try ImageIO.decodeLabelMap(Array(try PNGCodec.encode(all).prefix(60))))
    }

    /// Label values, sizes and offsets are checked with messages naming the file and the value.
    func testLabelAndSizeChecks() throws {
        let g = try XCTUnwrap(try ModelSummary.read(yaml: yaml()).semanticSynthesis)
        var map = try labels("labels.png")
        XCTAssertEqual(try g.labels(map, name: "m.png"), map)
        map.pixels[3 * 32 + 5] = 255
        XCTAssertThrowsError(try g.labels(map, name: "m.png")) { e in
            XCTAssertTrue("\(e)".contains("m.png: pixel (5, 3) has class index 255"), "\(e)")
            XCTAssertTrue("\(e)".contains("5 labels"), "\(e)")
            XCTAssertTrue("\(e)".contains("a label offset of 1 maps it to 0"), "\(e)")
        }
        // taming's shift_segmentation: + 1 on uint8, 255 -> 0.
        var small = try GrayImage(width: 4, height: 1, pixels: [255, 0, 1, 3])
        XCTAssertEqual(try g.labels(small, offset: 1, name: "s.png").pixels, [0, 1, 2, 4])
        XCTAssertThrowsError(try g.labels(small, offset: 2, name: "s.png")) { e in
            XCTAssertTrue("\(e)".contains("s.png: pixel (3, 0) has class index 5 (3 in the file, label offset 2)"), "\(e)")
        }
        XCTAssertThrowsError(try g.labels(small, offset: 256, name: "s.png"))
        small.pixels = [9, 9, 9, 0]
        XCTAssertThrowsError(try g.labels(small, name: "s.png")) { e in XCTAssertTrue("\(e)".contains("2 other pixels"), "\(e)") }
        XCTAssertNoThrow(try g.checkSize(width: 36, height: 8))
        XCTAssertThrowsError(try g.checkSize(width: 30, height: 32)) { e in XCTAssertTrue("\(e)".contains("width 30 is not a multiple of 4"), "\(e)") }

        let bundle = try ModelBundle.load(checkpoint: checkpoint, yaml: yaml())
        let pipe = LatentDiffusionPipeline(bundle: bundle)
        XCTAssertThrowsError(try pipe.semanticSynthesis(map, SamplingOptions(steps: 1), generator: TorchGenerator(seed: 0)))
        let odd = try GrayImage(width: 30, height: 32, pixels: Array(repeating: 0, count: 960))
        XCTAssertThrowsError(try pipe.semanticSynthesis(odd, SamplingOptions(steps: 1), generator: TorchGenerator(seed: 0)))
        XCTAssertThrowsError(try pipe.sample(SamplingOptions(steps: 1), generator: TorchGenerator(seed: 0))) { e in
            XCTAssertEqual(e as? PipelineError, .wrongModelKind(model: checkpoint.path, kind: bundle.kind, task: .sample))
            XCTAssertEqual(bundle.kind.tasks, [.semantic])
        }
        XCTAssertThrowsError(try pipe.upscale(try RGBImage(width: 32, height: 32), SamplingOptions(steps: 1), generator: TorchGenerator(seed: 0))) { e in
            XCTAssertEqual(e as? PipelineError, .wrongModelKind(model: checkpoint.path, kind: bundle.kind, task: .upscale))
        }
        // A super-resolution model is not a semantic-synthesis one.
        let bsr = fixtures.appendingPathComponent("compvis-bsr-sr")
        let bsrYAML = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: bsr.appendingPathComponent("bsr-tiny.json"))) as? [String: Any])
        XCTAssertNil(try ModelSummary.read(yaml: bsrYAML).semanticSynthesis)
        let sr = try ModelBundle.load(checkpoint: bsr.appendingPathComponent("model.ckpt"), yaml: bsrYAML)
        XCTAssertThrowsError(try LatentDiffusionPipeline(bundle: sr).semanticSynthesis(try labels("labels.png"), SamplingOptions(steps: 1),
                                                                                      generator: TorchGenerator(seed: 0))) { e in
            XCTAssertTrue("\(e)".contains("is not a semantic-synthesis model"), "\(e)")
        }
    }

    /// YAMLs that do not fit the checkpoint or the UNet are refused with a message, before sampling.
    func testMismatchedConfigsAreRefused() throws {
        let refusals: [([String: Any], String)] = [
            (try yaml(set: "conditioning_key", "crossattn"), "SpatialRescaler is supported with conditioning_key concat only"),
            (try yaml(set: "concat_mode", false), "SpatialRescaler is supported with conditioning_key concat only"),
            (try yaml(set: "cond_stage_forward", "encode"), "cond_stage_forward"),
            (try yaml(set: "method", "bicubic", in: "cond_stage_config"), "method bicubic is not supported"),
            (try yaml(set: "out_channels", nil, in: "cond_stage_config"), "without out_channels"),
            (try yaml(set: "out_channels", 4, in: "cond_stage_config"), "in_channels must be the first stage's 3 latent channels + SpatialRescaler out_channels 4 = 7"),
            (try yaml(set: "in_channels", 7, in: "unet_config"), "in_channels 7"),
            (try yaml(set: "n_stages", 1, in: "cond_stage_config"), "maps a 4-pixel side to 2, but the latents are 1"),
        ]
        for (y, message) in refusals {
            XCTAssertThrowsError(try ModelSummary.read(yaml: y), message) { e in XCTAssertTrue("\(e)".contains(message), "\(message): \(e)") }
            XCTAssertThrowsError(try ModelBundle.load(checkpoint: checkpoint, yaml: y), message) { e in XCTAssertTrue("\(e)".contains(message), "\(message): \(e)") }
        }
        // Strict weights: the YAML's rescaler must be the checkpoint's (a bias it lacks, another label count).
        XCTAssertThrowsError(try ModelBundle.load(checkpoint: checkpoint, yaml: yaml(set: "bias", true, in: "cond_stage_config"))) { e in
            XCTAssertTrue("\(e)".contains("channel_mapper.bias"), "\(e)")
        }
        var y = try yaml(set: "in_channels", 6, in: "cond_stage_config")
        XCTAssertNoThrow(try ModelSummary.read(yaml: y))
        XCTAssertThrowsError(try ModelBundle.load(checkpoint: checkpoint, yaml: y)) { e in XCTAssertTrue("\(e)".contains("channel_mapper.weight"), "\(e)") }
        // With a UNet that downsamples once, sizes must divide by f * 2.
        y = try yaml(set: "channel_mult", [1, 1], in: "unet_config")
        XCTAssertEqual(try ModelSummary.read(yaml: y).semanticSynthesis?.sizeMultiple, 8)
    }
}
