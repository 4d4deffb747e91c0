import Checkpoints
import Foundation
import NeuralNetwork
import TensorCore
import XCTest

// Loading of the fixtures written by tools/fixtures/training.py.

let fixturesURL = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")

func fixtureTensors(_ relativePath: String) throws -> [String: Tensor] {
    let file = try CheckpointFile.open(fixturesURL.appendingPathComponent(relativePath))
    return try file.tensors.mapValues { try $0.tensor().float32() }
}

/// Max relative error max|a - b| / max(|b|, floor) and an assertion against `tol`.
@discardableResult
func assertClose(_ a: [Float], _ b: [Float], tol: Float, floor: Float = 1e-6, _ what: String,
                 file: StaticString = #filePath, line: UInt = #line) -> Float {
    XCTAssertEqual(a.count, b.count, what, file: file, line: line)
    let scale = max(b.map(abs).max() ?? 0, floor)
    let err = zip(a, b).map { abs($0 - $1) }.max() ?? 0
    XCTAssertLessThanOrEqual(err / scale, tol, "\(what): rel err \(err / scale)", file: file, line: line)
    return err / scale
}

func tempDirectory(_ name: String) throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("ldm-training-\(name)-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}
