// CompVis' own LDM-BERT text-to-image format end to end (tools/fixtures/compvis_ldm_bert.py): a tiny CompVis
// LatentDiffusion checkpoint (model.ckpt: UNetModel + KL first stage + BERTEmbedder) with its YAML (the shape of
// txt2img-1p4B-eval.yaml; parsed copy txt2img-tiny.json) and vocab.txt beside it, against images from CompVis' own
// DDIMSampler / PLMSSampler driven as its scripts/txt2img.py (uc of "" when scale != 1, one [uc, c] batch,
// decode_first_stage, clamp((x + 1) / 2)). Ours: ModelBundle.load(checkpoint:yaml:) + LDMTextToImagePipeline, the
// torch generator; then the same file converted by `ldm convert` into a diffusers LDMTextToImagePipeline folder.
import Checkpoints
import Foundation
import Pipelines
import TensorCore
import Tokenizers
import XCTest
@testable import CompVis

final class CompVisLDMBertTests: XCTestCase {
    let dir = fixtures.appendingPathComponent("compvis-ldm-bert")
    var checkpoint: URL { dir.appendingPathComponent("model.ckpt") }

    func yaml() throws -> [String: Any] {
        try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent("txt2img-tiny.json"))) as? [String: Any])
    }

    func cases() throws -> [PipelineCase] {
        try JSONDecoder().decode([PipelineCase].self, from: Data(contentsOf: dir.appendingPathComponent("cases.json")))
    }

    func reference(_ name: String) throws -> [UInt8] {
        try XCTUnwrap(try CheckpointFile.open(dir.appendingPathComponent("outputs.safetensors")).tensors[name], name).floats()
            .map { UInt8((min(max($0, 0), 1) * 255).rounded(.toNearestOrEven)) }
    }

    func tempDir() throws -> URL {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("compvis-ldm-bert-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: d) }
        return d
    }

    func generate(_ bundle: ModelBundle, _ c: PipelineCase) throws -> [UInt8] {
        let p = PromptOptions(prompt: c.prompt ?? "", guidanceScale: try XCTUnwrap(c.cfg), width: c.width, height: c.height)
        let o = SamplingOptions(sampler: c.sampler, steps: c.steps, eta: c.eta ?? 0, batchSize: c.batch)
        let r = try LDMTextToImagePipeline(bundle: bundle).textToImage(p, o, generator: TorchGenerator(seed: c.seed))
        XCTAssertEqual(r.images.count, c.batch, c.name)
        XCTAssertEqual(r.images.first?.width, c.width, c.name); XCTAssertEqual(r.images.first?.height, c.height, c.name)
        return r.images.flatMap(\.pixels)
    }

    func testYAMLCheckpointMatchesCompVisSamplers() throws {
        let s = try ModelSummary.read(yaml: yaml())
        XCTAssertTrue(s.hasTextEncoder); XCTAssertTrue(s.hasLDMBert); XCTAssertEqual(s.firstStage, .autoencoderKL)
        let bundle = try ModelBundle.load(checkpoint: checkpoint, yaml: yaml())     // vocab.txt beside model.ckpt
        let bert = try XCTUnwrap(bundle.bert)
        XCTAssertEqual(bert.config.dModel, 32); XCTAssertEqual(bert.config.encoderLayers, 1)
        XCTAssertEqual(bert.config.encoderFFNDim, 128); XCTAssertEqual(bert.config.vocabSize, 22)
        XCTAssertEqual(bundle.bertMaxLength, 77)
        XCTAssertNil(bundle.textEncoder)
        XCTAssertEqual(bundle.schedulerConfig.className, "DDIMScheduler")
        let all = try cases()
        XCTAssertEqual(all.count, 4)
        for c in all {
            let db = psnr(try generate(bundle, c), try reference(c.name))
            print("PSNR compvis-ldm-bert \(c.name): \(db) dB")
            XCTAssertGreaterThanOrEqual(db, 45, c.name)
        }
        // The threshold separates: another seed is far from the reference.
        var c = try XCTUnwrap(all.first { $0.name == "ddim_eta1" })
        c = PipelineCase(name: c.name, kind: c.kind, shape: c.shape, sampler: c.sampler, prompt: c.prompt, negative_prompt: nil,
                         steps: c.steps, seed: c.seed + 1, width: c.width, height: c.height, batch: c.batch, cfg: c.cfg, strength: nil, eta: c.eta)
        XCTAssertLessThan(psnr(try generate(bundle, c), try reference(c.name)), 30)
    }

    /// `ldm convert` of the CompVis file gives a diffusers LDMTextToImagePipeline folder (vqvae, bert, tokenizer,
    /// unet, scheduler) that loads and makes the same images. The YAML's scale_factor (0.6) is not in the checkpoint:
    /// the converter writes the 1p4B model's 0.18215, which this test replaces as a user would.
    func testConvertedFolderMakesTheSameImages() throws {
        let out = try tempDir().appendingPathComponent("pipeline")
        var options = ConvertOptions(target: .diffusers)
        options.bertVocabulary = dir.appendingPathComponent("vocab.txt")
        let lines = try Converter.convert(input: checkpoint, output: out, options: options)
        // Only LatentDiffusion's schedule buffers stay behind (every cond_stage_model tensor has a bert/ name).
        XCTAssertEqual(lines.filter { $0.contains("not converted") },
                       ["not converted (no diffusers equivalent in the layout mapping): 3 tensors: alphas_cumprod, alphas_cumprod_prev, betas"],
                       lines.joined(separator: "\n"))
        let index = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: out.appendingPathComponent("model_index.json"))) as? [String: Any])
        XCTAssertEqual(index["_class_name"] as? String, "LDMTextToImagePipeline")
        XCTAssertEqual(Set(index.keys.filter { !$0.hasPrefix("_") }), ["bert", "scheduler", "tokenizer", "unet", "vqvae"])
        let bertTensors = try CheckpointFile.open(out.appendingPathComponent("bert/model.safetensors")).tensors
        XCTAssertEqual(bertTensors.count, 19)      // embeddings, final norm, to_logits, 13 per layer
        XCTAssertNotNil(bertTensors["model.layers.0.self_attn.q_proj.weight"])
        let vae = out.appendingPathComponent("vqvae/config.json")
        var cfg = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: vae)) as? [String: Any])
        XCTAssertEqual(cfg["scaling_factor"] as? Double, 0.18215)
        cfg["scaling_factor"] = 0.6
        try JSONSerialization.data(withJSONObject: cfg).write(to: vae)

        let folder = try ModelBundle.load(out)
        XCTAssertNotNil(folder.bert); XCTAssertNil(folder.bertMaxLength)
        let yamlBundle = try ModelBundle.load(checkpoint: checkpoint, yaml: yaml())
        for c in try cases() where c.name == "ddim_cfg5" || c.name == "plms" {
            XCTAssertEqual(try generate(folder, c), try generate(yamlBundle, c), c.name)
        }
        // And back: the folder converts to CompVis names that are the checkpoint's own (BERT included).
        let back = try tempDir().appendingPathComponent("back.safetensors")
        try Converter.convert(input: out, output: back, options: ConvertOptions(target: .compvis))
        let original = try CheckpointFile.open(checkpoint).tensors, again = try CheckpointFile.open(back).tensors
        let bertNames = original.keys.filter { $0.hasPrefix(BERTLayout.compvisPrefix) }
        XCTAssertEqual(bertNames.count, 19)
        for k in bertNames { XCTAssertEqual(try again[k]?.floats(), try original[k]?.floats(), k) }
    }

    /// Without the WordPiece vocabulary, or without the YAML, loading refuses with what to pass.
    func testRefusals() throws {
        let d = try tempDir()
        let lone = d.appendingPathComponent("model.ckpt")
        try FileManager.default.copyItem(at: checkpoint, to: lone)
        XCTAssertThrowsError(try ModelBundle.load(checkpoint: lone, yaml: yaml())) { e in
            XCTAssertEqual(e as? PipelineError, .missingBERTVocabulary(checkpoint: lone.path, given: nil))
        }
        XCTAssertNoThrow(try ModelBundle.load(checkpoint: lone, yaml: yaml(), bertVocabulary: dir.appendingPathComponent("vocab.txt")))
        XCTAssertThrowsError(try ModelBundle.load(checkpoint: lone, yaml: yaml(), bertVocabulary: d.appendingPathComponent("nope.txt")))
        XCTAssertThrowsError(try ModelBundle.load(lone)) { e in XCTAssertEqual(e as? PipelineError, .ldmBertNeedsConfig(lone.path)) }
        XCTAssertThrowsError(try ModelSummary.read(lone)) { e in XCTAssertEqual(e as? PipelineError, .ldmBertNeedsConfig(lone.path)) }
        // The UNet's context_dim must be BERT's n_embed.
        var y = try yaml()
        var model = try XCTUnwrap(y["model"] as? [String: Any]), params = try XCTUnwrap(model["params"] as? [String: Any])
        var cond = try XCTUnwrap(params["cond_stage_config"] as? [String: Any]), cp = try XCTUnwrap(cond["params"] as? [String: Any])
        cp["n_embed"] = 48; cond["params"] = cp; params["cond_stage_config"] = cond; model["params"] = params; y["model"] = model
        XCTAssertThrowsError(try ModelSummary.read(yaml: y)) { e in XCTAssertTrue("\(e)".contains("context_dim"), "\(e)") }
        cp["n_embed"] = 32; cp["use_tokenizer"] = false; cond["params"] = cp; params["cond_stage_config"] = cond; model["params"] = params; y["model"] = model
        XCTAssertThrowsError(try ModelBundle.load(checkpoint: checkpoint, yaml: y)) { e in XCTAssertTrue("\(e)".contains("use_tokenizer"), "\(e)") }
    }
}
