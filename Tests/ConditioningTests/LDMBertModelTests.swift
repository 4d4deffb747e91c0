import Checkpoints
import Foundation
import NeuralNetwork
import TensorCore
import XCTest
@testable import Conditioning

// Parity with diffusers LDMBertModel on a tiny random model (tools/fixtures/text_encoders.py).

final class LDMBertModelTests: XCTestCase {
    func testParity() throws {
        let dir = fixturesURL.appendingPathComponent("ldmbert")
        let model = try LDMBertModel(configData: Data(contentsOf: dir.appendingPathComponent("config.json")))
        let report = try model.load(CheckpointFile.open(dir.appendingPathComponent("model.safetensors")).tensors, component: "LDMBert")
        XCTAssertEqual(report.unexpected, [])
        let io = try fixtureTensors("ldmbert/io.safetensors")
        let flat = try XCTUnwrap(io["input_ids"]).toArray().map { Int($0) }
        let out = try GradMode.noGrad { try model(inputIDs: [Array(flat[0..<77]), Array(flat[77...])]) }
        assertParity(out, try XCTUnwrap(io["last_hidden_state"]), "LDMBert")
        XCTAssertThrowsError(try model(inputIDs: [[120]]))
        XCTAssertThrowsError(try model(inputIDs: [[Int](repeating: 1, count: 78)]))
        XCTAssertThrowsError(try LDMBertConfig.decode(Data(#"{"d_model": 0}"#.utf8)))
    }
}
