import Checkpoints
import Foundation
import NeuralNetwork
import TensorCore
import XCTest
@testable import UNetModels

// Loading of the fixtures written by tools/fixtures/unet.py.

let fixturesURL = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")

func fixtureTensors(_ relativePath: String) throws -> [String: Tensor] {
    let file = try CheckpointFile.open(fixturesURL.appendingPathComponent(relativePath))
    return try file.tensors.mapValues { try $0.tensor().float32() }
}

/// Max |a - b| and the tolerance 1e-4 * max(1, max|ref|).
func parity(_ out: Tensor, _ ref: Tensor, file: StaticString = #filePath, line: UInt = #line) -> Float {
    XCTAssertEqual(out.shape, ref.shape, file: file, line: line)
    let a = out.toArray(), b = ref.toArray()
    guard a.count == b.count else { return .infinity }
    let err = zip(a, b).map { abs($0 - $1) }.max() ?? 0
    let tol = 1e-4 * max(1, b.map(abs).max() ?? 0)
    XCTAssertLessThanOrEqual(err, tol, file: file, line: line)
    return err
}

/// The fixture UNet `name` (sd1, sd2) loaded from tools/fixtures/unet.py's files, its inputs and outputs, and a
/// forward call of it on those inputs.
func fixtureUNet(_ name: String) throws -> (model: UNet2DConditionModel, io: [String: Tensor], call: () throws -> Tensor) {
    let dir = fixturesURL.appendingPathComponent(name)
    let model = try UNet2DConditionModel(configData: try Data(contentsOf: dir.appendingPathComponent("config.json")))
    _ = try model.load(CheckpointFile.open(dir.appendingPathComponent("diffusion_pytorch_model.safetensors")).tensors, component: name)
    let io = try fixtureTensors("\(name)/io.safetensors")
    let labels = io["class_labels"].map { $0.toArray().map { Int($0) } }
    let call = {
        try model(sample: io["sample"]!, timestep: io["timestep"]!.toArray(), encoderHiddenStates: io["encoder_hidden_states"],
                  classLabels: labels)
    }
    return (model, io, call)
}
