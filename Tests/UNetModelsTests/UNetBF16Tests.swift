import Checkpoints
import Foundation
import NeuralNetwork
import TensorCore
import XCTest
@testable import UNetModels

// bfloat16 weights (a file storage type here: loaded into float32 parameters, since this CPU has no bf16 arithmetic) against
// tools/fixtures/unet_bf16.py: PyTorch with the same bf16-rounded weights and float32 compute must agree to float32
// parity (1e-4 relative); the documented bound is then the error of that rounding against the float32 model, which
// the test also checks is no larger than PyTorch's own bf16 inference error on the same model.
final class UNetBF16Tests: XCTestCase {
    func testBF16WeightsMatchTorchAndStayWithinItsBF16Error() throws {
        let refs = try fixtureTensors("bf16_references.safetensors")
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("ldm-bf16-\(UUID().uuidString).safetensors")
        defer { try? FileManager.default.removeItem(at: tmp) }
        for name in ["sd1", "sd2"] {
            let dir = fixturesURL.appendingPathComponent(name)
            let config = try Data(contentsOf: dir.appendingPathComponent("config.json"))
            let f32 = try UNet2DConditionModel(configData: config)
            _ = try f32.load(CheckpointFile.open(dir.appendingPathComponent("diffusion_pytorch_model.safetensors")).tensors, component: name)
            try f32.save(to: tmp, dtype: .bfloat16)
            let model = try UNet2DConditionModel(configData: config)
            let report = try model.load(CheckpointFile.open(tmp).tensors, component: name)
            XCTAssertEqual(report.unexpected, [])

            let io = try fixtureTensors("\(name)/io.safetensors")
            let labels = io["class_labels"].map { $0.toArray().map { Int($0) } }
            let out = try GradMode.noGrad {
                try model(sample: io["sample"]!, timestep: io["timestep"]!.toArray(), encoderHiddenStates: io["encoder_hidden_states"],
                          classLabels: labels)
            }
            let sameWeights = parity(out, try XCTUnwrap(refs["\(name).bf16_weights"]))
            let f32Out = try XCTUnwrap(io["out"]).toArray(), ours = out.toArray()
            let ourError = zip(ours, f32Out).map { abs($0 - $1) }.max() ?? 0
            let torchError = zip(try XCTUnwrap(refs["\(name).bf16_compute"]).toArray(), f32Out).map { abs($0 - $1) }.max() ?? 0
            let scale = f32Out.map(abs).max() ?? 1
            print("UNet bf16 \(name): vs torch (same bf16 weights) \(sameWeights); vs float32 \(ourError / scale) relative, torch bf16 inference \(torchError / scale)")
            XCTAssertLessThanOrEqual(ourError, torchError, "\(name): bf16 weights should be no less accurate than torch's bf16 inference")
            XCTAssertLessThanOrEqual(ourError / scale, 0.02, "\(name): documented bound (docs/status.md)")
        }
    }
}
