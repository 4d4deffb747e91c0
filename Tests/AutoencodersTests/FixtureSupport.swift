// Fixture access for the Autoencoders tests: files written by tools/fixtures/autoencoders.py (diffusers 0.42.1).
import Checkpoints
import Foundation
import NeuralNetwork
import TensorCore
import XCTest

let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")

/// The reference inputs/outputs of a fixture model (`<name>/io.safetensors`).
func referenceTensors(_ name: String) throws -> [String: Tensor] {
    let file = try CheckpointFile.open(fixtures.appendingPathComponent(name).appendingPathComponent("io.safetensors"))
    return try file.tensors.mapValues { try $0.tensor() }
}

extension Dictionary where Key == String, Value == Tensor {
    func get(_ key: String, file: StaticString = #filePath, line: UInt = #line) throws -> Tensor {
        try XCTUnwrap(self[key], "reference tensor \(key) missing", file: file, line: line)
    }
}

/// Asserts max |a - ref| <= 1e-4 * max(1, max |ref|) and returns the error (printed for the report).
@discardableResult
func assertParity(_ a: Tensor, _ ref: Tensor, _ what: String, tolerance: Float = 1e-4,
                  file: StaticString = #filePath, line: UInt = #line) -> Float {
    XCTAssertEqual(a.shape, ref.shape, "\(what): shape", file: file, line: line)
    guard a.shape == ref.shape else { return .infinity }
    let x = a.toArray(), y = ref.toArray()
    var err: Float = 0, scale: Float = 1
    for i in x.indices { err = max(err, abs(x[i] - y[i])); scale = max(scale, abs(y[i])) }
    XCTAssertFalse(err.isNaN, "\(what): NaN", file: file, line: line)
    XCTAssertLessThanOrEqual(err, tolerance * scale, "\(what): max abs error \(err) (max |ref| \(scale))", file: file, line: line)
    print("parity \(what): max abs error \(err) (max |ref| \(scale))")
    return err
}
