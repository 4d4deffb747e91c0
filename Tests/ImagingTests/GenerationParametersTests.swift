// AUTOMATIC1111 infotext parsing/formatting, checked against webui's own regex-based parser
// (parse_generation_parameters, run by tools/fixtures/imaging.py).
import Foundation
import XCTest
@testable import Imaging

final class GenerationParametersTests: XCTestCase {
    func testParseMatchesWebUIParser() throws {
        for c in try Fixtures.list("infotext") {
            let text = try XCTUnwrap(c["text"] as? String)
            let p = GenerationParameters(parsing: text)
            XCTAssertEqual(p.prompt, c["prompt"] as? String, text)
            XCTAssertEqual(p.negativePrompt, c["negative_prompt"] as? String, text)
            let pairs = try XCTUnwrap(c["pairs"] as? [[String]])
            XCTAssertEqual(p.fields.map { [$0.key, $0.value] }, pairs.map { $0[0] == "CFG scale" ? [$0[0], GenerationParameters.formatNumber(Double($0[1]) ?? .nan)] : $0 }, text)
        }
    }

    func testTypedFieldsAndRoundTrip() throws {
        let text = try XCTUnwrap((try Fixtures.list("infotext")).first?["text"] as? String)
        let p = GenerationParameters(parsing: text)
        XCTAssertEqual(p.steps, 20); XCTAssertEqual(p.sampler, "Euler a"); XCTAssertEqual(p.cfgScale, 7)
        XCTAssertEqual(p.seed, 42); XCTAssertEqual(p.width, 512); XCTAssertEqual(p.height, 512)
        XCTAssertEqual(p.modelHash, "6ce0161689"); XCTAssertEqual(p.model, "v1-5-pruned-emaonly")
        XCTAssertEqual(p.extraValue("Lora hashes"), "a: 1, b: 2")
        XCTAssertEqual(p.text, text, "format(parse(x)) reproduces webui's text")
        XCTAssertEqual(GenerationParameters(parsing: p.text), p)
    }

    func testFormatting() {
        let p = GenerationParameters(prompt: "cat", steps: 50, sampler: "DDIM", cfgScale: 7.5, seed: 3,
                                     width: 640, height: 384, extra: [.init("Note", "a, b\nc \"q\"")])
        XCTAssertEqual(p.text, "cat\nSteps: 50, Sampler: DDIM, CFG scale: 7.5, Seed: 3, Size: 640x384, Note: \"a, b\\nc \\\"q\\\"\"")
        XCTAssertEqual(GenerationParameters(parsing: p.text), p)
        let plain = GenerationParameters(parsing: "only a prompt")
        XCTAssertEqual(plain.prompt, "only a prompt"); XCTAssertNil(plain.steps); XCTAssertTrue(plain.extra.isEmpty)
        XCTAssertEqual(GenerationParameters(parsing: "").prompt, "")
    }
}
