// Issue 15: model folders as diffusers 0.42 + transformers 5 `save_pretrained` write them (tools/fixtures/modern_layouts.py):
// tokenizer/ with tokenizer.json + tokenizer_config.json only, CLIPTextModel weights without "text_model.", a WordPiece
// tokenizer.json whose ids have a gap. Token ids must equal transformers', txt2img images diffusers' (PSNR >= 45 dB on
// the 8-bit images, as PipelineParityTests). The SD 1.x and LDM-BERT cases pair a modern tokenizer/ with the weights of
// tiny-sd / ldm-text2img (the generator ran diffusers on the same assembly); the SD 2.x case is a whole saved folder.
import Checkpoints
import Foundation
import Pipelines
import TensorCore
import Tokenizers
import XCTest

let modern = fixtures.appendingPathComponent("modern")

final class ModernLayoutTests: XCTestCase {
    static let cases: [PipelineCase] = (try? JSONDecoder().decode([PipelineCase].self,
                                         from: Data(contentsOf: modern.appendingPathComponent("cases.json")))) ?? []
    static let outputs: [String: TensorRecord] = (try? CheckpointFile.open(modern.appendingPathComponent("outputs.safetensors")).tensors) ?? [:]

    func tokens() throws -> [String: [String: [Int]]] {
        try JSONDecoder().decode([String: [String: [Int]]].self, from: Data(contentsOf: modern.appendingPathComponent("tokens.json")))
    }

    /// A temporary copy of `weights` whose tokenizer/ is `tokenizer` only.
    func assemble(_ weights: URL, tokenizer: URL) throws -> URL {
        let fm = FileManager.default
        let d = fm.temporaryDirectory.appendingPathComponent("ldm-modern-\(UUID().uuidString)")
        try fm.copyItem(at: weights, to: d)
        addTeardownBlock { try? fm.removeItem(at: d) }
        try fm.removeItem(at: d.appendingPathComponent("tokenizer"))
        try fm.copyItem(at: tokenizer, to: d.appendingPathComponent("tokenizer"))
        return d
    }

    func reference(_ name: String) throws -> [UInt8] {
        try XCTUnwrap(Self.outputs[name], "fixture \(name) missing").floats().map { UInt8((min(max($0, 0), 1) * 255).rounded(.toNearestOrEven)) }
    }

    func checkImages(_ c: PipelineCase, _ r: GenerationResult, file: StaticString = #filePath, line: UInt = #line) throws {
        let ours = r.images.flatMap(\.pixels), ref = try reference(c.name)
        XCTAssertEqual(ours.count, ref.count, c.name, file: file, line: line)
        guard ours.count == ref.count else { return }
        let p = psnr(ours, ref)
        print("PSNR modern \(c.name): \(p) dB")
        XCTAssertGreaterThanOrEqual(p, 45, c.name, file: file, line: line)
    }

    func runStableDiffusion(_ folder: URL, kind: String) throws {
        let pipe = try StableDiffusionPipeline(bundle: ModelBundle.load(folder))
        let all = Self.cases.filter { $0.kind == kind }
        XCTAssertEqual(all.count, 2, kind)
        for c in all {
            let r = try pipe.textToImage(
                PromptOptions(prompt: c.prompt ?? "", negativePrompt: c.negative_prompt ?? "", guidanceScale: c.cfg ?? 7.5,
                              width: c.width, height: c.height),
                SamplingOptions(sampler: c.sampler, steps: c.steps, eta: c.eta ?? 0, batchSize: c.batch), generator: TorchGenerator(seed: c.seed))
            try checkImages(c, r)
        }
    }

    // MARK: - Point 1: CLIP tokenizer.json

    func testCLIPTokenizerFromTokenizerJSONOnly() throws {
        let t = try tokens()
        for (folder, key) in [("sd1", "sd1"), ("sd1-string-merges", "sd1"), ("sd1-added", "sd1-added"), ("sd2", "sd2")] {
            let dir = modern.appendingPathComponent(folder).appendingPathComponent("tokenizer")
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir.appendingPathComponent("vocab.json").path))
            let tok = try CLIPTokenizer(folder: dir)
            let expected = try XCTUnwrap(t[key], key)
            XCTAssertEqual(expected.count, 3)
            for (text, ids) in expected { XCTAssertEqual(tok(text, maxLength: 77), ids, "\(folder): \(text)") }
        }
        // The added token has an id past the BPE vocabulary and is matched after normalization ("<CAT-TOY>").
        let added = try CLIPTokenizer(folder: modern.appendingPathComponent("sd1-added/tokenizer"))
        XCTAssertEqual(added.vocabulary["<cat-toy>"], 521)
        // SD 2.x pads with "!" (id 0).
        XCTAssertEqual(try CLIPTokenizer(folder: modern.appendingPathComponent("sd2/tokenizer")).padTokenID, 0)
    }

    func testCLIPTokenizerJSONErrorsAreClear() throws {
        let fm = FileManager.default
        let d = fm.temporaryDirectory.appendingPathComponent("ldm-tokjson-\(UUID().uuidString)")
        try fm.createDirectory(at: d, withIntermediateDirectories: true)
        defer { try? fm.removeItem(at: d) }
        XCTAssertThrowsError(try CLIPTokenizer(folder: d)) { XCTAssertTrue("\($0)".contains("no tokenizer.json"), "\($0)") }
        let src = try String(contentsOf: modern.appendingPathComponent("sd1/tokenizer/tokenizer.json"), encoding: .utf8)
        let bad = src.replacingOccurrences(of: "[\n        \"c\",\n        \"a\"\n      ]", with: "\"c a x\"")
        XCTAssertNotEqual(bad, src)
        try bad.write(to: d.appendingPathComponent("tokenizer.json"), atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try CLIPTokenizer(folder: d)) { XCTAssertTrue("\($0)".contains("merge 0"), "\($0)") }
        try "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"a\": 0}}}".write(to: d.appendingPathComponent("tokenizer.json"), atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try CLIPTokenizer(folder: d)) { XCTAssertTrue("\($0)".contains("needs BPE"), "\($0)") }
    }

    func testSD1ModernTokenizerFolderMatchesDiffusers() throws {
        let folder = try assemble(fixtures.appendingPathComponent("tiny-sd"), tokenizer: modern.appendingPathComponent("sd1/tokenizer"))
        try runStableDiffusion(folder, kind: "sd1")
    }

    func testSD2ModernFolderMatchesDiffusers() throws {
        try runStableDiffusion(modern.appendingPathComponent("sd2"), kind: "sd2")
    }

    // MARK: - Point 2: WordPiece ids with a gap

    func testWordPieceTokenizerJSONWithGapMatchesTransformers() throws {
        let dir = modern.appendingPathComponent("ldm-bert/tokenizer")
        let tok = try BertTokenizer(folder: dir)
        XCTAssertEqual(tok.vocabulary["a"], 21, "the last duplicate keeps its id")
        XCTAssertFalse(tok.vocabulary.values.contains(5), "the first duplicate's id is a gap")
        let expected = try XCTUnwrap(try tokens()["ldm-bert"])
        XCTAssertEqual(expected.count, 2)
        for (text, ids) in expected { XCTAssertEqual(tok(text, maxLength: 77), ids, text) }
        // The same vocabulary as a vocab.txt with the repeated line gives the same ids.
        let fm = FileManager.default
        let txt = fm.temporaryDirectory.appendingPathComponent("ldm-vocab-\(UUID().uuidString).txt")
        defer { try? fm.removeItem(at: txt) }
        var lines = try String(contentsOf: ldmText.appendingPathComponent("pipeline/tokenizer/vocab.txt"), encoding: .utf8)
            .split(separator: "\n").map(String.init)
        lines[lines.count - 1] = "a"
        try (lines.joined(separator: "\n") + "\n").write(to: txt, atomically: true, encoding: .utf8)
        let fromText = try BertTokenizer(vocabularyFile: txt)
        for (text, ids) in expected { XCTAssertEqual(fromText(text, maxLength: 77), ids, text) }
    }

    func testLDMBertModernTokenizerFolderMatchesDiffusers() throws {
        let folder = try assemble(ldmText.appendingPathComponent("pipeline"), tokenizer: modern.appendingPathComponent("ldm-bert/tokenizer"))
        let pipe = try LDMTextToImagePipeline(bundle: ModelBundle.load(folder))
        let c = try XCTUnwrap(Self.cases.first { $0.kind == "ldm-bert" })
        let r = try pipe.textToImage(PromptOptions(prompt: c.prompt ?? "", guidanceScale: try XCTUnwrap(c.cfg), width: c.width, height: c.height),
                                     SamplingOptions(sampler: c.sampler, steps: c.steps, eta: c.eta ?? 0, batchSize: c.batch),
                                     generator: TorchGenerator(seed: c.seed))
        try checkImages(c, r)
    }
}
