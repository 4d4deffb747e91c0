// diffusers LDMTextToImagePipeline (LDM-BERT text-to-image) end to end (tools/fixtures/ldm_text2img.py): a tiny
// random-weight pipeline folder in the layout of CompVis/ldm-text2im-large-256 (vqvae = AutoencoderKL f=8, bert,
// BertTokenizer, UNet2DConditionModel, DDIM), diffusers' output_type="np" images for fixed seeds (DDIM eta 0 / eta 1,
// DDPM, PLMS, the folder's scheduler at 48x32, guidance 1 (none), 0.5 and above 1, a batch of 2); ours through the torch
// generator must match at PSNR >= 45 dB on the 8-bit images, as the Stable Diffusion parity tests.
import Checkpoints
import Foundation
import Pipelines
import TensorCore
import Tokenizers
import XCTest

let ldmText = fixtures.appendingPathComponent("ldm-text2img")

enum LDMTextShared {
    static let bundle: Result<ModelBundle, Error> = Result { try ModelBundle.load(ldmText.appendingPathComponent("pipeline")) }
    static let cases: [PipelineCase] = (try? JSONDecoder().decode([PipelineCase].self,
                                         from: Data(contentsOf: ldmText.appendingPathComponent("cases.json")))) ?? []
    static let outputs: [String: TensorRecord] = (try? CheckpointFile.open(ldmText.appendingPathComponent("outputs.safetensors")).tensors) ?? [:]
}

final class LDMTextToImageTests: XCTestCase {
    var folder: URL { ldmText.appendingPathComponent("pipeline") }

    func copyOfFixture() throws -> URL {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("ldm-text-\(UUID().uuidString)")
        try FileManager.default.copyItem(at: folder, to: d)
        addTeardownBlock { try? FileManager.default.removeItem(at: d) }
        return d
    }

    func testTokenizerMatchesTransformers() throws {
        let tokens = try JSONDecoder().decode([String: [Int]].self, from: Data(contentsOf: ldmText.appendingPathComponent("tokens.json")))
        XCTAssertEqual(tokens.count, 4)
        let tok = try XCTUnwrap(try LDMTextShared.bundle.get().bertTokenizer)
        // The same vocabulary from tokenizer.json alone (what transformers 5 writes without vocab.txt).
        let copy = try copyOfFixture()
        try FileManager.default.removeItem(at: copy.appendingPathComponent("tokenizer/vocab.txt"))
        let fromJSON = try BertTokenizer(folder: copy.appendingPathComponent("tokenizer"))
        XCTAssertEqual(fromJSON.vocabulary, tok.vocabulary)
        for (text, ids) in tokens {
            XCTAssertEqual(tok(text, maxLength: 77), ids, text)
            XCTAssertEqual(fromJSON(text, maxLength: 77), ids, text)
        }
    }

    func testFolderIsReadAsLDMBert() throws {
        let s = try ModelSummary.read(folder)
        XCTAssertTrue(s.hasTextEncoder); XCTAssertTrue(s.hasLDMBert)
        XCTAssertEqual(s.firstStage, .autoencoderKL, "the `vqvae` component is an AutoencoderKL, as in ldm-text2im-large-256")
        let b = try LDMTextShared.bundle.get()
        XCTAssertNotNil(b.bert); XCTAssertNil(b.textEncoder)
        XCTAssertEqual(b.defaultImageSize, 32)
        XCTAssertEqual(b.schedulerConfig.className, "DDIMScheduler")
        XCTAssertThrowsError(try StableDiffusionPipeline(bundle: b))
        XCTAssertThrowsError(try LatentDiffusionPipeline(bundle: b).sample(SamplingOptions(steps: 1), generator: TorchGenerator(seed: 0)))
    }

    /// Loading is strict: a config that asks for a third encoder layer finds its weights missing.
    func testMissingBertWeightsFail() throws {
        let copy = try copyOfFixture()
        let cfg = copy.appendingPathComponent("bert/config.json")
        var json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: cfg)) as? [String: Any])
        json["encoder_layers"] = 3
        try JSONSerialization.data(withJSONObject: json).write(to: cfg)
        XCTAssertThrowsError(try ModelBundle.load(copy)) { e in
            XCTAssertTrue("\(e)".contains("model.layers.2."), "\(e)")
        }
    }

    func testTextToImageMatchesDiffusers() throws {
        let pipe = try LDMTextToImagePipeline(bundle: LDMTextShared.bundle.get())
        let all = LDMTextShared.cases
        XCTAssertEqual(all.count, 5)
        for c in all {
            let p = PromptOptions(prompt: c.prompt ?? "", guidanceScale: try XCTUnwrap(c.cfg), width: c.width, height: c.height)
            let o = SamplingOptions(sampler: c.sampler, steps: c.steps, eta: c.eta ?? 0, batchSize: c.batch)
            let r = try pipe.textToImage(p, o, generator: TorchGenerator(seed: c.seed))
            XCTAssertEqual(r.images.count, c.batch, c.name)
            XCTAssertEqual(r.images.first?.width, c.width, c.name); XCTAssertEqual(r.images.first?.height, c.height, c.name)
            let ours = r.images.flatMap(\.pixels)
            let ref = try XCTUnwrap(LDMTextShared.outputs[c.name], c.name).floats()
                .map { UInt8((min(max($0, 0), 1) * 255).rounded(.toNearestOrEven)) }
            XCTAssertEqual(ours.count, ref.count, c.name)
            guard ours.count == ref.count else { continue }
            let db = psnr(ours, ref)
            print("PSNR ldm-text2img \(c.name): \(db) dB")
            XCTAssertGreaterThanOrEqual(db, 45, c.name)
        }
        // The threshold separates: another seed's image is far from the reference.
        let c = try XCTUnwrap(all.first { $0.name == "ddim_eta1" })
        let other = try pipe.textToImage(PromptOptions(prompt: c.prompt ?? "", guidanceScale: c.cfg ?? 1),
                                         SamplingOptions(sampler: c.sampler, steps: c.steps, eta: c.eta ?? 0), generator: TorchGenerator(seed: c.seed + 1))
        let ref = try XCTUnwrap(LDMTextShared.outputs[c.name]).floats().map { UInt8((min(max($0, 0), 1) * 255).rounded(.toNearestOrEven)) }
        XCTAssertLessThan(psnr(other.images[0].pixels, ref), 30)
    }

    /// Guidance 1 makes no unconditional pass (the negative prompt then changes nothing); any other scale guides.
    func testGuidanceOnlyAwayFromOne() throws {
        let pipe = try LDMTextToImagePipeline(bundle: LDMTextShared.bundle.get())
        func image(_ cfg: Double, _ negative: String) throws -> [UInt8] {
            try pipe.textToImage(PromptOptions(prompt: "a red cube", negativePrompt: negative, guidanceScale: cfg),
                                 SamplingOptions(sampler: "ddim", steps: 2), generator: TorchGenerator(seed: 1)).images[0].pixels
        }
        XCTAssertEqual(try image(1, ""), try image(1, "blue sky"))
        XCTAssertNotEqual(try image(0.5, ""), try image(0.5, "blue sky"))
        XCTAssertNotEqual(try image(0.5, ""), try image(1, ""))
        XCTAssertThrowsError(try pipe.textToImage(PromptOptions(prompt: "a", emphasis: .original), SamplingOptions(steps: 1),
                                                  generator: TorchGenerator(seed: 0)))
    }
}
