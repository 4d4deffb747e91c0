import Checkpoints
import Foundation
import NeuralNetwork
import TensorCore
import XCTest
@testable import UNetModels

// The UNet under --precision bf16 with native bf16 compute (oneDNN's avx512_core_bf16 / amx kernels for convolutions
// and linear layers) against the float32 reference of tools/fixtures/unet_bf16.py: its error must be no larger than
// PyTorch's own bf16 inference error on the same model (the fixture's bf16_compute). Skipped, with the reason
// printed, where the ISA level in use has no native bf16.
final class UNetNativeBF16Tests: XCTestCase {
    func testNativeBF16ComputeStaysWithinTorchBF16Error() throws {
        guard NativeBF16.available else {
            let reason = "no native bf16 at ISA level \(CPUFeatures.active.name) (detected \(CPUFeatures.detected.name))"
            print("UNetNativeBF16Tests skipped: \(reason)")
            throw XCTSkip(reason)
        }
        let refs = try fixtureTensors("bf16_references.safetensors")
        for name in ["sd1", "sd2"] {
            let (_, io, call) = try fixtureUNet(name)
            // Winograd off for every convolution, so that all of them run on the bf16 kernels.
            let out = try GradMode.noGrad { try Winograd.withDisabled { try ComputePrecision.bf16.run { try call() } } }
            let f32Out = try XCTUnwrap(io["out"]).toArray(), ours = out.toArray()
            let ourError = zip(ours, f32Out).map { abs($0 - $1) }.max() ?? 0
            let torchError = zip(try XCTUnwrap(refs["\(name).bf16_compute"]).toArray(), f32Out).map { abs($0 - $1) }.max() ?? 0
            let scale = f32Out.map(abs).max() ?? 1
            let ourMean = zip(ours, f32Out).map { abs($0 - $1) }.reduce(0, +) / Float(ours.count)
            let torchMean = zip(try XCTUnwrap(refs["\(name).bf16_compute"]).toArray(), f32Out).map { abs($0 - $1) }.reduce(0, +) / Float(ours.count)
            print("UNet native bf16 \(name): vs float32 \(ourError / scale) relative (mean \(ourMean / scale)), torch bf16 inference \(torchError / scale) (mean \(torchMean / scale))")
            XCTAssertGreaterThan(ourError, 0, "\(name): bf16 compute should differ from float32 (did it run in bf16?)")
            XCTAssertLessThanOrEqual(ourError, torchError, "\(name): native bf16 should be no less accurate than torch's bf16 inference")
        }
    }

    /// `storeLowerPrecisionWeightsInBFloat16` (the bf16 model of `ldm bench unet`): every Linear/Conv2d weight becomes
    /// bf16, nothing else, and the native bf16 UNet's output is unchanged (its kernels round float32 weights to the
    /// same bf16 values; Winograd off, whose float32 path would see the rounded weights).
    func testBF16StoredWeightsGiveTheSameNativeOutput() throws {
        guard NativeBF16.available else {
            let reason = "no native bf16 at ISA level \(CPUFeatures.active.name) (detected \(CPUFeatures.detected.name))"
            print("UNetNativeBF16Tests skipped: \(reason)")
            throw XCTSkip(reason)
        }
        let dir = fixturesURL.appendingPathComponent("sd1")
        let model = try UNet2DConditionModel(configData: try Data(contentsOf: dir.appendingPathComponent("config.json")))
        _ = try model.load(CheckpointFile.open(dir.appendingPathComponent("diffusion_pytorch_model.safetensors")).tensors, component: "sd1")
        let io = try fixtureTensors("sd1/io.safetensors")
        let run = {
            try GradMode.noGrad {
                try Winograd.withDisabled {
                    try ComputePrecision.bf16.run {
                        try model(sample: io["sample"]!, timestep: io["timestep"]!.toArray(), encoderHiddenStates: io["encoder_hidden_states"])
                    }
                }
            }
        }
        let before = try run().toArray()
        let f32Bytes = model.namedParameters.reduce(0) { $0 + $1.1.count * 4 }
        let freed = model.storeLowerPrecisionWeightsInBFloat16()
        let after = try run().toArray()
        let bf16 = model.namedParameters.filter { $0.1.dtype == .bfloat16 }
        XCTAssertFalse(bf16.isEmpty)
        XCTAssertEqual(freed, bf16.reduce(0) { $0 + $1.1.count * 2 })
        XCTAssertGreaterThan(freed, f32Bytes / 4, "most of a UNet's parameters are Linear/Conv2d weights")
        for (name, t) in bf16 { XCTAssertTrue(name.hasSuffix("weight") && (t.rank == 2 || t.rank == 4), name) }
        for (name, t) in model.namedParameters where t.dtype == .float32 && name.hasSuffix("weight") {
            XCTAssertLessThan(t.rank, 2, "\(name) should be bf16")
        }
        XCTAssertEqual(after, before)
    }
}
