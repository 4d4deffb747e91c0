// Tests CLIPTokenizer against transformers 5.x CLIPTokenizer ids (Fixtures/clip_prompts.jsonl,
// tools/fixtures/tokenizers.py) for the bundled OpenCLIP vocabulary and for SD 1.x / SD 2.x style tokenizer folders.
import Foundation
import XCTest
@testable import Tokenizers

/// One line of clip_prompts.jsonl: prompt, ids of the directly built tokenizer, and where they differ the ids of the
/// SD 1.x / SD 2.x folders; `*_77` are padded/truncated ids for a subset.
struct CLIPPromptRow: Decodable {
    let p: String
    let ids: [Int]
    let sd1: [Int]?
    let sd2: [Int]?
    let sd1_77: [Int]?
    let sd2_77: [Int]?
    func ids(for name: String) -> [Int] { (name == "sd1" ? sd1 : sd2) ?? ids }
    func padded(for name: String) -> [Int]? { name == "sd1" ? sd1_77 : sd2_77 }
}

final class CLIPTokenizerTests: XCTestCase {
    static let shared = Result { try CLIPTokenizer.openCLIPDefault() }

    func tokenizer() throws -> CLIPTokenizer { try Self.shared.get() }

    func testOpenCLIPVocabularyMatchesTransformers() throws {
        let meta = try Fixtures.json("clip_vocab.json")
        let url = try XCTUnwrap(CLIPTokenizer.bundledOpenCLIPVocabularyURL)
        let (vocab, merges) = try CLIPTokenizer.openCLIPVocabulary(gzipFile: url)
        XCTAssertEqual(vocab.count, (meta["vocab_size"] as? NSNumber)?.intValue)
        XCTAssertEqual(merges.count, (meta["merges"] as? NSNumber)?.intValue)
        let byID = vocab.sorted { $0.value < $1.value }
        XCTAssertEqual(byID.map(\.value), Array(0..<vocab.count), "ids are not contiguous")
        XCTAssertEqual(String(format: "%016llx", fnv1a64(byID.map(\.key))), meta["vocab_fnv1a64"] as? String)
        XCTAssertEqual(String(format: "%016llx", fnv1a64(merges.map { "\($0.0) \($0.1)" })), meta["merges_fnv1a64"] as? String)
        let sample = try XCTUnwrap(meta["sample"] as? [String: Any])
        for (token, id) in sample { XCTAssertEqual(vocab[token], (id as? NSNumber)?.intValue, token) }
    }

    func testPromptsMatchTransformers() throws {
        let tok = try tokenizer()
        let rows = try Fixtures.jsonLines("clip_prompts.jsonl", as: CLIPPromptRow.self)
        XCTAssertGreaterThanOrEqual(rows.count, 1000)
        var failures = 0
        for row in rows {
            let prompt = row.p, expected = row.ids
            let ids = tok.encode(prompt)
            if ids != expected {
                failures += 1
                if failures <= 10 { XCTFail("prompt \(prompt.debugDescription): got \(ids), expected \(expected)") }
            }
            let padded = tok(prompt)
            XCTAssertEqual(padded.count, 77)
            XCTAssertEqual(padded, [49406] + Array(expected.prefix(75)) + [49407] + Array(repeating: 49407, count: max(0, 75 - expected.count)))
        }
        XCTAssertEqual(failures, 0)
    }

    /// Writes vocab.json/merges.txt from the bundled vocabulary (as the fixture script does) next to the
    /// SD 1.x / SD 2.x tokenizer_config.json and special_tokens_map.json fixtures, and loads the folder.
    func testDiffusersTokenizerFolders() throws {
        let url = try XCTUnwrap(CLIPTokenizer.bundledOpenCLIPVocabularyURL)
        let (vocab, merges) = try CLIPTokenizer.openCLIPVocabulary(gzipFile: url)
        let dir = try Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        try JSONSerialization.data(withJSONObject: vocab).write(to: dir.appendingPathComponent("vocab.json"))
        try ("#version: 0.2\n" + merges.map { "\($0.0) \($0.1)" }.joined(separator: "\n") + "\n")
            .write(to: dir.appendingPathComponent("merges.txt"), atomically: true, encoding: .utf8)
        let rows = try Fixtures.jsonLines("clip_prompts.jsonl", as: CLIPPromptRow.self)
        for (name, padID) in [("sd1", 49407), ("sd2", 0)] {
            for file in ["tokenizer_config.json", "special_tokens_map.json"] {
                let target = dir.appendingPathComponent(file)
                try? FileManager.default.removeItem(at: target)
                try FileManager.default.copyItem(at: Fixtures.url("clip_configs/\(name)/\(file)"), to: target)
            }
            let tok = try CLIPTokenizer(folder: dir)
            XCTAssertEqual(tok.padTokenID, padID)
            XCTAssertEqual(tok.modelMaxLength, 77)
            var checkedPadded = 0
            for row in rows {
                let prompt = row.p
                XCTAssertEqual(tok.encode(prompt), row.ids(for: name), "\(name): \(prompt.debugDescription)")
                if let padded = row.padded(for: name) {
                    XCTAssertEqual(tok(prompt), padded, "\(name) padded: \(prompt.debugDescription)")
                    checkedPadded += 1
                }
            }
            XCTAssertGreaterThan(checkedPadded, 20)
        }
    }

    func testSpecialTokensAndMaxLength() throws {
        let tok = try tokenizer()
        XCTAssertEqual(tok("", maxLength: 5), [49406, 49407, 49407, 49407, 49407])
        XCTAssertEqual(tok("a photo of a cat", maxLength: 4), [49406, 320, 1125, 49407])
        let sd2 = try CLIPTokenizer.openCLIPDefault(padToken: "!")
        XCTAssertEqual(sd2("", maxLength: 4), [49406, 49407, 0, 0])
    }

    func testBadFilesThrow() throws {
        let dir = try Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let vocab = dir.appendingPathComponent("vocab.json"), merges = dir.appendingPathComponent("merges.txt")
        XCTAssertThrowsError(try CLIPTokenizer(vocabularyJSON: vocab, merges: merges))
        try "[1, 2]".write(to: vocab, atomically: true, encoding: .utf8)
        try "#version: 0.2\na b\n".write(to: merges, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try CLIPTokenizer(vocabularyJSON: vocab, merges: merges))
        try #"{"a": 0, "b": 1, "ab": 2, "<|startoftext|>": 3, "<|endoftext|>": 4}"#.write(to: vocab, atomically: true, encoding: .utf8)
        XCTAssertNoThrow(try CLIPTokenizer(vocabularyJSON: vocab, merges: merges))
        try "#version: 0.2\na b c\n".write(to: merges, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try CLIPTokenizer(vocabularyJSON: vocab, merges: merges))
        try "#version: 0.2\na x\n".write(to: merges, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try CLIPTokenizer(vocabularyJSON: vocab, merges: merges))
        try #"{"a": 0}"#.write(to: vocab, atomically: true, encoding: .utf8)
        try "".write(to: merges, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try CLIPTokenizer(vocabularyJSON: vocab, merges: merges)) // no special tokens
        XCTAssertThrowsError(try Gzip.decompress(Data("not gzip".utf8)))
    }
}
