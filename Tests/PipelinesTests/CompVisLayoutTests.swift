// CompVis' layout-to-image format end to end (tools/fixtures/compvis_layout.py): a tiny CompVis LatentDiffusion of
// models/ldm/layout2img-openimages256/config.yaml's shape (cond_stage_key coordinates_bbox, BERTEmbedder
// use_tokenizer false on vocab 300 / max_seq_len 14 = 4 objects + crop, crossattn UNet, VQModelInterface f = 4;
// model.ckpt float16, layout-tiny.yaml / its parsed copy layout-tiny.json), layouts in the `ldm layout` JSON format,
// against CompVis' own DDIMSampler driven as notebook_helpers.py does (c = BERTEmbedder(taming builder tokens), no
// guidance, decode with quantization, clamp((x + 1) / 2)). Ours: the code `ldm layout --config --model --objects`
// runs (LayoutObject.parseList, ModelBundle.load(checkpoint:yaml:), LayoutToImagePipeline) with the torch generator.
import Checkpoints
import Foundation
import Imaging
import Pipelines
import TensorCore
import Tokenizers
import UNetModels
import XCTest
@testable import CompVis

final class CompVisLayoutTests: XCTestCase {
    struct Case: Decodable {
        let name, objects: String
        let tokens: [Int]
        let steps: Int
        let seed: UInt64
        let batch: Int
        let eta: Double
        let width, height: Int
    }

    let dir = fixtures.appendingPathComponent("compvis-layout")
    var checkpoint: URL { dir.appendingPathComponent("model.ckpt") }

    func yaml() throws -> [String: Any] {
        try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent("layout-tiny.json"))) as? [String: Any])
    }

    func cases() throws -> [Case] { try JSONDecoder().decode([Case].self, from: Data(contentsOf: dir.appendingPathComponent("cases.json"))) }

    func reference(_ name: String) throws -> [Float] {
        try XCTUnwrap(try CheckpointFile.open(dir.appendingPathComponent("outputs.safetensors")).tensors[name], name).floats()
    }

    func layout(_ file: String, builder: ObjectsBoundingBoxConditionalBuilder) throws -> [LayoutObject] {
        try LayoutObject.parseList(Data(contentsOf: dir.appendingPathComponent(file)), classNames: OpenImagesCategories.names(),
                                   objectClasses: builder.noObjectClasses, maxObjects: builder.noMaxObjects)
    }

    func testYAMLCheckpointMatchesCompVisDDIM() throws {
        let config = try CompVisModelConfig(yaml: yaml())
        XCTAssertTrue(config.isLayout)
        let builder = try config.layoutBuilder()
        XCTAssertEqual(builder.noMaxObjects, 4)
        XCTAssertEqual(builder.noTokens, 300)
        XCTAssertTrue(builder.encodeCrop)
        XCTAssertEqual(builder.noObjectClasses, 340)
        let s = try ModelSummary.read(yaml: yaml())
        XCTAssertTrue(s.isLayout)
        XCTAssertFalse(s.hasTextEncoder)
        XCTAssertFalse(s.hasLDMBert)
        XCTAssertEqual(s.firstStage, .vqModel)
        let bundle = try ModelBundle.load(checkpoint: checkpoint, yaml: yaml())     // no vocabulary needed
        XCTAssertNil(bundle.bertTokenizer)
        XCTAssertEqual(bundle.bert?.config.maxPositionEmbeddings, 14)
        XCTAssertEqual(bundle.vaeScaleFactor, 4)
        XCTAssertEqual(bundle.defaultImageSize, 32)
        XCTAssertThrowsError(try LatentDiffusionPipeline(bundle: bundle).sample(SamplingOptions(steps: 1), generator: TorchGenerator(seed: 0))) { e in
            XCTAssertEqual(e as? PipelineError, .wrongModelKind(model: checkpoint.path, kind: .layout, task: .sample))
        }
        let pipe = try LayoutToImagePipeline(bundle: bundle)
        let all = try cases()
        XCTAssertEqual(all.count, 3)
        for c in all {
            let tokens = try pipe.tokens(layout(c.objects, builder: pipe.builder))
            XCTAssertEqual(tokens, c.tokens, c.name)
            let o = SamplingOptions(steps: c.steps, eta: c.eta, batchSize: c.batch)
            let z = try pipe.sampleLatents(tokens: tokens, o, width: c.width, height: c.height, generator: TorchGenerator(seed: c.seed))
            XCTAssertEqual(z.shape, [c.batch, 3, c.height / 4, c.width / 4])
            let zRef = try reference(c.name + "_latents")
            let zScale = zRef.map(abs).max() ?? 1
            let zErr = zip(z.toArray(), zRef).map { abs($0 - $1) }.max() ?? .infinity
            let image = try decodeLatents(z, firstStage: bundle.firstStage).decoded                     // (B, 3, H, W) in [-1, 1]
            let want = try reference(c.name)                                                             // (B, H, W, 3) in [0, 1]
            let (h, w) = (c.height, c.width)
            var got = [Float](repeating: 0, count: want.count)
            for b in 0..<c.batch { for ch in 0..<3 { for y in 0..<h { for x in 0..<w {
                got[((b * h + y) * w + x) * 3 + ch] = min(max((image[((b * 3 + ch) * h + y) * w + x] + 1) / 2, 0), 1)
            } } } }
            let err = zip(got, want).map { abs($0 - $1) }.max() ?? .infinity
            let mse = zip(got, want).map { Double(($0 - $1) * ($0 - $1)) }.reduce(0, +) / Double(want.count)
            let db = mse == 0 ? Double.infinity : 10 * log10(1 / mse)
            print("compvis-layout \(c.name): latents max abs error \(zErr) (max |z| \(zScale)), image max abs error \(err), PSNR \(db) dB")
            XCTAssertLessThan(zErr / zScale, 1e-4, c.name)
            XCTAssertGreaterThanOrEqual(db, 45, c.name)
        }
        // The thresholds separate: another layout with the same seed is far from the reference.
        let c = all[0]
        let other = try pipe.sampleLatents(tokens: pipe.tokens(layout("objects-four.json", builder: pipe.builder)),
                                           SamplingOptions(steps: c.steps), generator: TorchGenerator(seed: c.seed))
        let zRef = try reference(c.name + "_latents")
        XCTAssertGreaterThan((zip(other.toArray(), zRef).map { abs($0 - $1) }.max() ?? 0) / (zRef.map(abs).max() ?? 1), 1e-2)
    }

    /// The released model's config (models/ldm/layout2img-openimages256/config.yaml): UNet as diffusers'
    /// create_unet_diffusers_config_from_ldm derives it, except the heads, which diffusers leaves at its default
    /// (attention_head_dim None -> 8 heads) while CompVis' num_head_channels 32 means channels / 32 heads per block;
    /// the layout tokenizer of its BERTEmbedder (vocab 8192, max_seq_len 92 = 30 objects + crop).
    func testReleasedConfig() throws {
        let file = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent("layout2img-openimages256.json"))) as? [String: Any])
        let yaml = try XCTUnwrap(file["yaml"] as? [String: Any])
        var reference = try XCTUnwrap(file["expected_unet"] as? [String: Any])
        XCTAssertTrue(reference["attention_head_dim"] is NSNull)
        reference["attention_head_dim"] = nil
        reference["_class_name"] = "UNet2DConditionModel"
        var want = try UNetConfig.decode(JSONSerialization.data(withJSONObject: reference))
        let config = try CompVisModelConfig(yaml: yaml)
        let got = config.unet
        for i in 0..<4 { XCTAssertEqual(got.transformerHeads(i) * 32, got.blockOutChannels[i]) }
        want.attentionHeadDim = got.attentionHeadDim; want.numAttentionHeads = got.numAttentionHeads
        XCTAssertEqual(got, want)
        XCTAssertTrue(config.isLayout); XCTAssertEqual(config.conditioningKey, "crossattn")
        let builder = try config.layoutBuilder()
        XCTAssertEqual(builder, try ObjectsBoundingBoxConditionalBuilder())      // Open Images: 340 classes, 30 objects, 8192 tokens, crop
        let bert = try config.bertConfig()
        XCTAssertEqual(bert.dModel, 512); XCTAssertEqual(bert.encoderLayers, 16); XCTAssertEqual(bert.vocabSize, 8192)
        XCTAssertEqual(bert.maxPositionEmbeddings, 92)
        let s = try ModelSummary.read(yaml: yaml)
        XCTAssertTrue(s.isLayout); XCTAssertEqual(s.firstStage, .vqModel); XCTAssertFalse(s.hasTextEncoder)
        XCTAssertEqual(config.sampleSize, 64)
        // Token ids for anything else than layouts, and layouts without token ids, are refused by name.
        func edited(_ f: (inout [String: Any]) -> Void) -> [String: Any] {
            var y = yaml, m = y["model"] as! [String: Any], p = m["params"] as! [String: Any]
            f(&p); m["params"] = p; y["model"] = m; return y
        }
        XCTAssertThrowsError(try CompVisModelConfig(yaml: edited { $0["cond_stage_key"] = "caption" })) { e in
            XCTAssertTrue("\(e)".contains("supported for layouts only"), "\(e)")
        }
        XCTAssertThrowsError(try CompVisModelConfig(yaml: edited { $0["conditioning_key"] = "concat" })) { e in
            XCTAssertTrue("\(e)".contains("must have conditioning_key crossattn"), "\(e)")
        }
        XCTAssertThrowsError(try CompVisModelConfig(yaml: edited {
            var c = $0["cond_stage_config"] as! [String: Any], p = c["params"] as! [String: Any]
            p["use_tokenizer"] = true; c["params"] = p; $0["cond_stage_config"] = c
        })) { e in XCTAssertTrue("\(e)".contains("use_tokenizer: false only"), "\(e)") }
        XCTAssertThrowsError(try CompVisModelConfig(yaml: edited {
            var c = $0["cond_stage_config"] as! [String: Any], p = c["params"] as! [String: Any]
            p["max_seq_len"] = 91; c["params"] = p; $0["cond_stage_config"] = c
        }).layoutBuilder()) { e in XCTAssertTrue("\(e)".contains("3 tokens per object"), "\(e)") }
        var layout2img = yaml, model = try XCTUnwrap(yaml["model"] as? [String: Any])
        model["target"] = "ldm.models.diffusion.ddpm.Layout2ImgDiffusion"; layout2img["model"] = model
        XCTAssertTrue(try CompVisModelConfig(yaml: layout2img).isLayout)
    }

    func testLayoutFilesAreValidated() throws {
        let names = try OpenImagesCategories.names()
        func parse(_ s: String, classes: Int = 340, max: Int = 30) throws -> [LayoutObject] {
            try LayoutObject.parseList(Data(s.utf8), classNames: names, objectClasses: classes, maxObjects: max)
        }
        func fails(_ s: String, _ message: String, max: Int = 30, file: StaticString = #filePath, line: UInt = #line) {
            XCTAssertThrowsError(try parse(s, max: max), file: file, line: line) { e in
                XCTAssertTrue("\(e)".contains(message), "\(e)", file: file, line: line)
            }
        }
        let ok = try parse(#"{"objects": [{"class": "tortoise", "box": [0, 0.25, 0.5, 1], "group_of": true}, {"class": 339, "box": [0.1, 0.1, 0.2, 0.2]}]}"#)
        XCTAssertEqual(ok, [LayoutObject(classNumber: 0, box: [0, 0.25, 0.5, 1], groupOf: true), LayoutObject(classNumber: 339, box: [0.1, 0.1, 0.2, 0.2])])
        XCTAssertEqual(LayoutObject.encodeList(ok), #"[{"class": 0, "box": [0.0, 0.25, 0.5, 1.0], "group_of": true}, {"class": 339, "box": [0.1, 0.1, 0.2, 0.2]}]"#)
        XCTAssertEqual(try parse(LayoutObject.encodeList(ok)), ok)
        XCTAssertEqual(try parse("[]"), [])
        fails("[{\"class\": 1, \"box\": [0, 0, 1, 1]", "not valid JSON")
        fails(#"{"class": 1, "box": [0, 0, 1, 1]}"#, "expected a JSON list")
        fails(#"[{"class": 340, "box": [0, 0, 1, 1]}]"#, "class 340 is outside 0..<340")
        fails(#"[{"class": -1, "box": [0, 0, 1, 1]}]"#, "outside 0..<340")
        fails(#"[{"class": 1.5, "box": [0, 0, 1, 1]}]"#, "not an integer")
        fails(#"[{"class": true, "box": [0, 0, 1, 1]}]"#, "class must be a number or a name")
        fails(#"[{"class": "Unicorn", "box": [0, 0, 1, 1]}]"#, "unknown class name \"Unicorn\"")
        fails(#"[{"box": [0, 0, 1, 1]}]"#, "no \"class\"")
        fails(#"[{"class": 1, "box": [0, 0, 1.5, 1]}]"#, "reaches outside [0, 1]")
        fails(#"[{"class": 1, "box": [0, 0, 1]}]"#, "four numbers")
        fails(#"[{"class": 1, "box": [0.6, 0, 0.5, 1]}]"#, "empty or inverted")
        fails(#"[{"class": 1, "box": [0.5, 0.2, 0.5, 1]}]"#, "empty or inverted")
        fails(#"[{"class": 1, "box": [0, 0, "1", 1]}]"#, "box values must be numbers")
        fails(#"[{"class": 1, "bbox": [0, 0, 1, 1]}]"#, "unknown key \"bbox\"")
        fails(#"[{"class": 1, "box": [0, 0, 1, 1], "inside": 1}]"#, "\"inside\" must be true or false")
        fails(#"[{"class": 1, "box": [0, 0, 1, 1]}, {"class": 2, "box": [0, 0, 1, 1]}, {"class": 3, "box": [0, 0, 1, 1]}]"#,
              "3 objects, more than the model's 2", max: 2)
        fails(#"[1]"#, "objects[0]: expected an object")
    }
}

extension GenerationCLITests {
    /// `ldm layout --config layout.yaml --model model.ckpt --objects objects.json` on the tiny CompVis layout model:
    /// the image is the library's; bad layouts, models and outputs fail with a message and a non-zero status.
    func testLayoutRunsCompVisLayout() throws {
        let dir = try tempDir()
        let src = fixtures.appendingPathComponent("compvis-layout")
        let model = src.appendingPathComponent("model.ckpt").path, yaml = src.appendingPathComponent("layout-tiny.yaml").path
        let out = dir.appendingPathComponent("layout.png")
        func layout(_ objects: String, _ output: URL, _ extra: [String] = []) throws -> (Int32, String) {
            try run(["layout", "--model", model, "--config", yaml, "--objects", objects, "--steps", "2", "--seed", "9", "--quiet",
                     "--output", output.path] + extra)
        }
        let (s, e) = try layout(src.appendingPathComponent("objects-two.json").path, out)
        XCTAssertEqual(s, 0, e)
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: src.appendingPathComponent("layout-tiny.json"))) as? [String: Any])
        let pipe = try LayoutToImagePipeline(bundle: try ModelBundle.load(checkpoint: src.appendingPathComponent("model.ckpt"), yaml: json))
        let objects = try LayoutObject.parseList(Data(contentsOf: src.appendingPathComponent("objects-two.json")), classNames: OpenImagesCategories.names(),
                                                 objectClasses: 340, maxObjects: 4)
        let want = try pipe.layoutToImage(objects, SamplingOptions(steps: 2), generator: TorchGenerator(seed: 9))
        let got = try ImageIO.loadRGB(path: out.path)
        XCTAssertEqual(got.width, 32); XCTAssertEqual(got.pixels, want.images[0].pixels)
        let recorded = GenerationParameters(parsing: try XCTUnwrap(try ImageIO.load(path: out.path).text("parameters"))).extra
        XCTAssertEqual(recorded.first { $0.key == "Layout objects" }?.value, "2")
        // The layout itself, as JSON that --objects reads back to the same objects (names become class numbers).
        let layoutText = try XCTUnwrap(recorded.first { $0.key == "Layout" }?.value)
        XCTAssertEqual(try LayoutObject.parseList(Data(layoutText.utf8), classNames: [], objectClasses: 340, maxObjects: 4), objects)

        // An existing output is kept without --overwrite.
        let before = try Data(contentsOf: out)
        let (s1, e1) = try layout(src.appendingPathComponent("objects-four.json").path, out)
        XCTAssertNotEqual(s1, 0); XCTAssertTrue(e1.contains("exists"), e1)
        XCTAssertEqual(try Data(contentsOf: out), before)
        let (s2, e2) = try layout(src.appendingPathComponent("objects-four.json").path, out, ["--overwrite"])
        XCTAssertEqual(s2, 0, e2)
        XCTAssertNotEqual(try Data(contentsOf: out), before)

        func bad(_ text: String, _ message: String, line: UInt = #line) throws {
            let f = dir.appendingPathComponent("bad-\(line).json")
            try Data(text.utf8).write(to: f)
            let target = dir.appendingPathComponent("never-\(line).png")
            let (s, e) = try layout(f.path, target)
            XCTAssertNotEqual(s, 0, line: line); XCTAssertTrue(e.contains(message), e, line: line)
            XCTAssertFalse(FileManager.default.fileExists(atPath: target.path), line: line)
        }
        try bad("not json", "not valid JSON")
        try bad(#"[{"class": 400, "box": [0, 0, 1, 1]}]"#, "outside 0..<340")
        try bad(#"[{"class": 1, "box": [0, 0, 2, 1]}]"#, "outside [0, 1]")
        try bad(#"[{"class": 1, "box": [0.5, 0, 0.2, 1]}]"#, "inverted")
        try bad(String(repeating: #"{"class": 1, "box": [0, 0, 1, 1]},"#, count: 5).dropLast().description.wrappedInBrackets, "more than the model's 4")
        // A flag takes class + 340 * bits beyond this tiny model's 300-token vocabulary: refused before loading.
        try bad(#"[{"class": 1, "box": [0, 0, 1, 1], "inside": true}]"#, "outside 0..<300")
        let (s3, e3) = try layout(dir.appendingPathComponent("missing.json").path, dir.appendingPathComponent("m.png"))
        XCTAssertNotEqual(s3, 0); XCTAssertTrue(e3.contains("missing.json"), e3)
        // Other models are refused, and other commands refuse the layout model.
        let (s4, e4) = try run(["layout", "--model", fixtures.appendingPathComponent("compvis-bsr-sr/model.ckpt").path, "--config",
                                fixtures.appendingPathComponent("compvis-bsr-sr/bsr-tiny.yaml").path, "--objects",
                                src.appendingPathComponent("objects-two.json").path, "--output", dir.appendingPathComponent("x.png").path])
        XCTAssertNotEqual(s4, 0); XCTAssertTrue(e4.contains("not a layout-to-image model"), e4)
        let (s5, e5) = try run(["txt2img", "--model", model, "--config", yaml, "--prompt", "a cat", "--output", dir.appendingPathComponent("t.png").path])
        XCTAssertNotEqual(s5, 0); XCTAssertTrue(e5.contains("use `ldm layout`"), e5)
        let (s6, e6) = try run(["sample", "--model", model, "--config", yaml, "--output", dir.appendingPathComponent("u.png").path])
        XCTAssertNotEqual(s6, 0); XCTAssertTrue(e6.contains("use `ldm layout`"), e6)
    }
}

private extension String {
    var wrappedInBrackets: String { "[" + self + "]" }
}
