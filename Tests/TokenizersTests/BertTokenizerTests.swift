// Tests BertTokenizer against transformers 5.x BertTokenizer (tokenizers BertNormalizer + BertPreTokenizer +
// WordPiece) on Fixtures/bert_prompts.jsonl with the fixture vocabulary Fixtures/bert_vocab.txt, and the character
// classes against the reference's per-code-point behaviour (Fixtures/bert_unicode.json); see tools/fixtures/tokenizers.py.
import Foundation
import XCTest
@testable import Tokenizers

struct BertPromptRow: Decodable {
    let p: String
    let ids: [Int]
    let ids77: [Int]?
}

/// bert_unicode.json: runs of "clean/chinese/punctuation" classes over all code points (surrogates skipped), and the
/// reference's strip-accents / lower-case / NFC output for every code point it changes.
struct ReferenceUnicode: Decodable {
    let runs: [[Run]]
    let strip: [String: String]
    let lower: [String: String]
    let nfc: [String: String]
    enum Run: Decodable {
        case start(UInt32), classes(String)
        init(from decoder: Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let v = try? c.decode(UInt32.self) { self = .start(v) } else { self = .classes(try c.decode(String.self)) }
        }
    }
}

final class BertTokenizerTests: XCTestCase {
    func tokenizer() throws -> BertTokenizer { try BertTokenizer(vocabularyFile: Fixtures.url("bert_vocab.txt")) }

    func testPromptsMatchTransformers() throws {
        let tok = try tokenizer()
        let rows = try Fixtures.jsonLines("bert_prompts.jsonl", as: BertPromptRow.self)
        XCTAssertGreaterThan(rows.count, 200)
        var padded = 0
        for row in rows {
            XCTAssertEqual(tok.encode(row.p), row.ids, row.p.debugDescription)
            let expected = [tok.clsTokenID] + row.ids.prefix(75) + [tok.sepTokenID]
            XCTAssertEqual(tok(row.p), expected + Array(repeating: tok.padTokenID, count: 77 - expected.count))
            if let ids77 = row.ids77 {
                XCTAssertEqual(tok(row.p), ids77, row.p.debugDescription)
                padded += 1
            }
        }
        XCTAssertGreaterThan(padded, 10)
        XCTAssertTrue(rows.contains { $0.ids.contains(tok.unknownTokenID) })
    }

    func testCharacterClassesMatchReference() throws {
        let data = try Data(contentsOf: Fixtures.url("bert_unicode.json"))
        let ref = try JSONDecoder().decode(ReferenceUnicode.self, from: data)
        var runs: [(UInt32, [Character])] = []
        for r in ref.runs {
            guard r.count == 2, case .start(let s) = r[0], case .classes(let k) = r[1] else { return XCTFail("bad run") }
            runs.append((s, Array(k)))
        }
        func hex(_ s: [Unicode.Scalar]) -> String { s.map { String($0.value, radix: 16) }.joined(separator: " ") }
        var mismatches: [String] = []
        var runIndex = 0
        for v in UInt32(0)..<0x110000 {
            guard let c = Unicode.Scalar(v) else { continue }
            while runIndex + 1 < runs.count && runs[runIndex + 1].0 <= v { runIndex += 1 }
            let k = runs[runIndex].1
            let clean: Character = (v == 0 || v == 0xFFFD || BertUnicode.isControl(c)) ? "R" : BertUnicode.isWhitespace(c) ? "W" : "K"
            let punct: Character = BertUnicode.isPunctuation(c) ? "P" : c.properties.isWhitespace ? "S" : "-"
            if clean != k[0] || (k[1] == "C") != BertUnicode.isChineseChar(c) || punct != k[2] {
                mismatches.append(String(v, radix: 16))
            }
            let key = String(v, radix: 16)
            let lower = BertUnicode.lowercase(c)
            if hex(lower) != (ref.lower[key] ?? key) { mismatches.append("lower " + key) }
            if c.properties.age != nil || ref.strip[key] != nil {
                let stripped = BertUnicode.nfd([c]).filter { !BertUnicode.isNonspacingMark($0) }
                let hangul = (0xAC00...0xD7A3).contains(v) && v % 97 != 0
                if !hangul && hex(stripped) != (ref.strip[key] ?? key) { mismatches.append("strip " + key) }
                let composed = CLIPTokenizer.normalize([c])
                let expectedNFC = (ref.nfc[key] ?? key).split(separator: " ").compactMap { UInt32($0, radix: 16).flatMap(Unicode.Scalar.init) }
                let expectedCLIP = c.properties.isWhitespace ? [" "] : expectedNFC.flatMap(BertUnicode.lowercase)
                if composed != expectedCLIP { mismatches.append("nfc " + key) }
            }
        }
        XCTAssertEqual(mismatches.count, 0, "first mismatches: \(mismatches.prefix(20))")
    }

    func testSpecialTokensAndTruncation() throws {
        let tok = try tokenizer()
        XCTAssertEqual(tok("", maxLength: 4), [tok.clsTokenID, tok.sepTokenID, tok.padTokenID, tok.padTokenID])
        XCTAssertEqual(tok.encode("[CLS]"), [tok.clsTokenID])
        XCTAssertEqual(tok.encode(String(repeating: "a", count: 101)), [tok.unknownTokenID])
        XCTAssertEqual(tok("photo photo photo", maxLength: 4).count, 4)
    }

    func testBadVocabularyThrows() throws {
        let dir = try Fixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("vocab.txt")
        XCTAssertThrowsError(try BertTokenizer(vocabularyFile: url))
        try "".write(to: url, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try BertTokenizer(vocabularyFile: url))
        try "[PAD]\n[UNK]\n[CLS]\nhello\n".write(to: url, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try BertTokenizer(vocabularyFile: url)) // no [SEP]
        try Data([0xFF, 0xFE, 0x00]).write(to: url)
        XCTAssertThrowsError(try BertTokenizer(vocabularyFile: url))
    }
}
