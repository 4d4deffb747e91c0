// PromptParser.parseAttention against the examples in the docstring of `parse_prompt_attention`,
// AUTOMATIC1111/stable-diffusion-webui modules/prompt_parser.py (doctest outputs produced by the web UI itself,
// run there with `python modules/prompt_parser.py`), and WeightedPrompt against the rules of
// modules/sd_hijack_clip.py `tokenize_line`.
import XCTest
@testable import Tokenizers

/// One line of webui_prompts.jsonl: parse_prompt_attention output and, for some prompts, tokenize_line's chunks and
/// multipliers (stored without their trailing EOS / 1.0 run) and token count, from the web UI's own functions run by
/// tools/fixtures/tokenizers.py --webui with the transformers CLIPTokenizer.
struct WebUIPromptRow: Decodable {
    struct Pair: Decodable {
        let text: String
        let weight: Double
        init(from decoder: Decoder) throws {
            var c = try decoder.unkeyedContainer()
            text = try c.decode(String.self)
            weight = try c.decode(Double.self)
        }
    }
    let p: String
    let parsed: [Pair]
    let chunks: [[Int]]?
    let mults: [[Double]]?
    let count: Int?
}

final class PromptParserTests: XCTestCase {
    private func assertParsed(_ prompt: String, _ expected: [(String, Double)], file: StaticString = #filePath, line: UInt = #line) {
        let got = PromptParser.parseAttention(prompt)
        XCTAssertEqual(got.map(\.text), expected.map(\.0), prompt, file: file, line: line)
        // exact: the Swift Doubles are multiplied in the same order as the Python floats
        XCTAssertEqual(got.map(\.weight), expected.map(\.1), prompt, file: file, line: line)
    }

    func testWebUIDocstringExamples() {
        assertParsed("normal text", [("normal text", 1.0)])
        assertParsed("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)])
        assertParsed("(unbalanced", [("unbalanced", 1.1)])
        assertParsed(#"\(literal\]"#, [("(literal]", 1.0)])
        assertParsed("(unnecessary)(parens)", [("unnecessaryparens", 1.1)])
        assertParsed("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", [
            ("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
            (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1),
        ])
    }

    func testMatchesWebUIFunctions() throws {
        let tok = try CLIPTokenizerTests.shared.get()
        let rows = try Fixtures.jsonLines("webui_prompts.jsonl", as: WebUIPromptRow.self)
        XCTAssertGreaterThan(rows.count, 300)
        var chunked = 0
        for row in rows {
            let parsed = PromptParser.parseAttention(row.p)
            XCTAssertEqual(parsed.map(\.text), row.parsed.map(\.text), row.p.debugDescription)
            XCTAssertEqual(parsed.map(\.weight), row.parsed.map(\.weight), row.p.debugDescription)
            guard let chunks = row.chunks, let mults = row.mults, let count = row.count else { continue }
            chunked += 1
            let weighted = tok.weightedPrompt(row.p)
            XCTAssertEqual(weighted.chunks, chunks.map { $0 + Array(repeating: tok.eosTokenID, count: 77 - $0.count) }, row.p)
            XCTAssertEqual(weighted.weights, mults.map { $0.map(Float.init) + Array(repeating: Float(1), count: 77 - $0.count) }, row.p)
            XCTAssertEqual(weighted.tokenCount, count, row.p)
        }
        XCTAssertGreaterThan(chunked, 60)
        XCTAssertTrue(rows.contains { ($0.chunks?.count ?? 0) > 2 })
    }

    func testBreakEscapesAndEdgeCases() {
        let parsed = PromptParser.parseAttention("a cat  BREAK\tdog (x BREAK y)")
        XCTAssertEqual(parsed.map(\.text), ["a cat", "BREAK", "dog ", "x", "BREAK", "y"])
        XCTAssertEqual(parsed.map(\.isBreak), [false, true, false, false, false, false]) // BREAK in brackets: -1.1
        XCTAssertEqual(PromptParser.parseAttention("BREAKfast xBREAK").map(\.text), ["BREAKfast xBREAK"])
        XCTAssertEqual(PromptParser.parseAttention(""), [PromptParser.Fragment("", 1.0)])
        XCTAssertEqual(PromptParser.parseAttention(#"a\\b\c"#).map(\.text), [#"a\bc"#])
        XCTAssertEqual(PromptParser.parseAttention("x) y] :1.5) z:").map(\.text), ["x) y] :1.5) z:"])
        XCTAssertEqual(PromptParser.parseAttention("(x:1.2.3)").map(\.text), ["x:1.2.3)"]) // web UI raises here
        XCTAssertEqual(PromptParser.parseAttention("(x:-.5)").map(\.weight), [-0.5])
        XCTAssertEqual(PromptParser.parseAttention("[[x]]").map(\.weight), [1 / 1.1 * (1 / 1.1)])
    }

    func testChunksAndWeights() throws {
        let tok = try CLIPTokenizerTests.shared.get()
        let short = tok.weightedPrompt("a (cat:1.5)")
        XCTAssertEqual(short.chunks, [tok("a cat")])
        XCTAssertEqual(short.weights, [[1, 1, 1.5] + [Float](repeating: 1, count: 74)])
        XCTAssertEqual(short.tokenCount, 2)

        // 80 one-token words: 75 in the first chunk, 5 in the second
        let long = tok.weightedPrompt(Array(repeating: "cat", count: 80).joined(separator: " "))
        XCTAssertEqual(long.chunks.count, 2)
        XCTAssertEqual(long.chunks[1], tok(Array(repeating: "cat", count: 5).joined(separator: " ")))
        XCTAssertEqual(long.tokenCount, 80)
        XCTAssertTrue(long.weights.allSatisfy { $0 == [Float](repeating: 1, count: 77) })

        let broken = tok.weightedPrompt("a cat BREAK a dog")
        XCTAssertEqual(broken.chunks, [tok("a cat"), tok("a dog")])
        XCTAssertEqual(broken.tokenCount, 77)

        // comma back-tracking: 70 words, a comma, 10 words -> the 4 words after the comma that still fit move
        let words = Array(repeating: "cat", count: 70).joined(separator: " ") + ", " + Array(repeating: "dog", count: 10).joined(separator: " ")
        let wrapped = tok.weightedPrompt(words)
        XCTAssertEqual(wrapped.chunks[0], tok(Array(repeating: "cat", count: 70).joined(separator: " ") + ","))
        XCTAssertEqual(wrapped.chunks[1], tok(Array(repeating: "dog", count: 10).joined(separator: " ")))
        let unwrapped = tok.weightedPrompt(words, commaPaddingBacktrack: 0)
        XCTAssertEqual(unwrapped.chunks[0], tok(Array(repeating: "cat", count: 70).joined(separator: " ") + ", dog dog dog dog"))

        let empty = tok.weightedPrompt("")
        XCTAssertEqual(empty.chunks, [tok("")])
        XCTAssertEqual(empty.tokenCount, 0)

        let sd2 = try CLIPTokenizer.openCLIPDefault(padToken: "!")
        XCTAssertEqual(sd2.weightedPrompt("a cat").chunks, [sd2("a cat")]) // EOS then pad 0
        XCTAssertEqual(sd2.weightedPrompt("[a] cat").weights[0][1], Float(1 / 1.1))
    }
}
