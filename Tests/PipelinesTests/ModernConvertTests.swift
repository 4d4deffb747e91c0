// Issue 15 point 3: `ldm convert` on folders saved by transformers 5 (CLIPTextModel weights without "text_model.",
// tools/fixtures/modern_layouts.py) writes the canonical names of the released files: SD 1.x
// cond_stage_model.transformer.text_model.*, SD 2.x cond_stage_model.model.* (open_clip), and text_encoder/
// text_model.* on the way back. Every converted file is recognised by `ldm inspect` (ModelFamily), and
// folder -> CompVis -> diffusers -> CompVis is exact (the generator also loads the CompVis files in diffusers'
// from_single_file). The SD 1.x-with-stock-YAML test: a CompVis file whose text encoder is 32 wide (not ViT-L/14)
// loads with the released v1-inference.yaml and matches diffusers' images.
import Checkpoints
import Conditioning
import Foundation
import Pipelines
import TensorCore
import XCTest
@testable import CompVis

final class ModernConvertTests: XCTestCase {
    func tempDir() throws -> URL {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("ldm-modern-convert-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: d) }
        return d
    }

    /// component/key -> (dtype, shape, bytes) of a diffusers folder's unet, vae and text_encoder, text-encoder keys in
    /// the canonical spelling.
    func weights(_ folder: URL) throws -> [String: (StorageDType, [Int], Data)] {
        var out: [String: (StorageDType, [Int], Data)] = [:]
        let f = try DiffusersFolder(url: folder)
        for name in ["unet", "vae", "text_encoder"] {
            let c = try XCTUnwrap(f.component(name), name)
            for (k, r) in try c.tensors() {
                out[name + "." + (name == "text_encoder" ? CLIPTextKeys.canonical(k) : k)] = (r.dtype, r.shape, try r.rawData())
            }
        }
        return out
    }

    func roundTrip(_ folder: URL, family: ModelFamily.Kind, textPrefix: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let dir = try tempDir()
        let compvis = dir.appendingPathComponent("model.safetensors"), back = dir.appendingPathComponent("back")
        let again = dir.appendingPathComponent("again.safetensors")
        try Converter.convert(input: folder, output: compvis, options: ConvertOptions(target: .compvis))
        let single = try CheckpointFile.open(compvis).tensors
        let text = single.keys.filter { $0.hasPrefix("cond_stage_model.") }
        XCTAssertFalse(text.isEmpty, file: file, line: line)
        XCTAssertEqual(text.filter { !$0.hasPrefix(textPrefix) }, [], "non-canonical text encoder names", file: file, line: line)
        XCTAssertEqual(ModelFamily.detect(single).kind, family, "\(ModelFamily.detect(single))", file: file, line: line)
        XCTAssertTrue(try CheckpointReport.make(path: compvis.path).contains("family: \(family.rawValue)"), file: file, line: line)

        try Converter.convert(input: compvis, output: back, options: ConvertOptions(target: .diffusers))
        let original = try weights(folder), converted = try weights(back)
        XCTAssertEqual(Set(converted.keys), Set(original.keys), file: file, line: line)
        let te = try CheckpointFile.open(back.appendingPathComponent("text_encoder/model.safetensors")).tensors.keys
        XCTAssertTrue(te.allSatisfy { $0.hasPrefix("text_model.") }, "diffusers text_encoder names are canonical", file: file, line: line)
        for (k, a) in original {
            guard let b = converted[k] else { continue }
            XCTAssertTrue(a.0 == b.0 && a.1 == b.1 && a.2 == b.2, "\(k) differs after the round trip", file: file, line: line)
        }
        try Converter.convert(input: back, output: again, options: ConvertOptions(target: .compvis))
        let twice = try CheckpointFile.open(again).tensors
        XCTAssertEqual(Set(twice.keys), Set(single.keys), file: file, line: line)
        for (k, r) in single { XCTAssertEqual(try twice[k]?.rawData(), try r.rawData(), k, file: file, line: line) }
    }

    func testSD1ModernFolderRoundTripIsExactAndRecognised() throws {
        // tiny-sd's text encoder was saved by transformers 5 (no "text_model.").
        let te = try CheckpointFile.open(fixtures.appendingPathComponent("tiny-sd/text_encoder/model.safetensors")).tensors.keys
        XCTAssertTrue(te.contains("embeddings.token_embedding.weight"))
        try roundTrip(fixtures.appendingPathComponent("tiny-sd"), family: .sd1, textPrefix: "cond_stage_model.transformer.text_model.")
    }

    func testSD2ModernFolderRoundTripIsExactAndRecognised() throws {
        try roundTrip(modern.appendingPathComponent("sd2"), family: .sd2, textPrefix: "cond_stage_model.model.")
    }

    /// A file written by an older `ldm convert` (no "text_model.") is still recognised and loads.
    func testTransformers5SpellingInACompVisFileIsRecognised() throws {
        let dir = try tempDir()
        let file = dir.appendingPathComponent("old.safetensors")
        try Converter.convert(input: fixtures.appendingPathComponent("tiny-sd-clip-vocab"), output: file, options: ConvertOptions(target: .compvis))
        var entries: [SafeTensorsEntry] = []
        for (k, r) in try CheckpointFile.open(file).tensors.sorted(by: { $0.key < $1.key }) {
            let name = k.replacingOccurrences(of: "cond_stage_model.transformer.text_model.", with: "cond_stage_model.transformer.")
            entries.append(SafeTensorsEntry(name: name, dtype: r.dtype, shape: r.shape, bytes: try r.rawData()))
        }
        let old = dir.appendingPathComponent("transformers5.safetensors")
        try SafeTensors.write(entries, metadata: [:], to: old)
        let tensors = try CheckpointFile.open(old).tensors
        XCTAssertTrue(tensors.keys.contains("cond_stage_model.transformer.embeddings.token_embedding.weight"))
        XCTAssertEqual(ModelFamily.detect(tensors).kind, .sd1)
        XCTAssertNotNil(try ModelBundle.load(old).textEncoder)
        // Converting it again writes the canonical names, to CompVis as to diffusers.
        let canonical = dir.appendingPathComponent("canonical.safetensors")
        try Converter.convert(input: old, output: canonical, options: ConvertOptions(target: .compvis))
        let names = try CheckpointFile.open(canonical).tensors.keys.filter { $0.hasPrefix("cond_stage_model.") }
        XCTAssertFalse(names.isEmpty)
        XCTAssertTrue(names.allSatisfy { $0.hasPrefix("cond_stage_model.transformer.text_model.") }, "\(names.sorted().prefix(3))")
        let fixed = dir.appendingPathComponent("fixed")
        try Converter.convert(input: old, output: fixed, options: ConvertOptions(target: .diffusers))
        let te = try CheckpointFile.open(fixed.appendingPathComponent("text_encoder/model.safetensors")).tensors.keys
        XCTAssertTrue(te.allSatisfy { $0.hasPrefix("text_model.") })
    }
}
