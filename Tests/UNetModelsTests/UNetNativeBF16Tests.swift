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
        if let reason = NativeBF16.unavailableReason {
            print("UNetNativeBF16Tests skipped: \(reason)")
            throw XCTSkip(reason)
        }
        let refs = try fixtureTensors("bf16_references.safetensors")
        // Every 3x3 convolution on oneDNN's direct bf16 kernel (float32 Winograd and F(2x2, 3x3) bf16 off): within
        // torch's bf16 error. Then every eligible one on F(2x2, 3x3) bf16 (WinogradF2BF16) at any size, which these
        // 8x8 fixtures never take by default: its error is about twice the direct kernel's per convolution, and on
        // these tiny models (16-64 channels, where the largest element's error is what is measured) it can exceed
        // torch's (sd2: 0.0131 against 0.0114), so it is held to twice torch's here; at the size where it runs by
        // default see testFullSizeSD15ErrorWithinTorchBF16Error. (Not to twice ours with the direct kernel: on models
        // this small the largest element moves unpredictably with any one rounding; adding the residuals in the GEMMs'
        // accumulators took sd1's direct error from 0.0135 to 0.0094 and its F(2x2, 3x3) one from 0.0135 to 0.0215.)
        for name in ["sd1", "sd2"] {
            let (_, io, call) = try fixtureUNet(name)
            let f32Out = try XCTUnwrap(io["out"]).toArray(), scale = f32Out.map(abs).max() ?? 1
            let error = { (f2: Bool) -> Float in
                let out = try GradMode.noGrad {
                    try WinogradF2BF16.with(enabled: f2, minTiles: 1) { try Winograd.withDisabled { try ComputePrecision.bf16.run { try call() } } }
                }
                return zip(out.toArray(), f32Out).map { abs($0 - $1) }.max()! / scale
            }
            let (direct, f2) = (try error(false), try error(true))
            let torchError = zip(try XCTUnwrap(refs["\(name).bf16_compute"]).toArray(), f32Out).map { abs($0 - $1) }.max()! / scale
            print("UNet native bf16 \(name): vs float32 \(direct) relative (F(2x2, 3x3) bf16 everywhere: \(f2)), torch bf16 inference \(torchError)")
            XCTAssertGreaterThan(direct, 0, "\(name): bf16 compute should differ from float32 (did it run in bf16?)")
            XCTAssertLessThanOrEqual(direct, torchError, "\(name): native bf16 should be no less accurate than torch's bf16 inference")
            XCTAssertLessThanOrEqual(f2, 2 * torchError, "\(name): F(2x2, 3x3) bf16")
        }
    }

    /// `storeLowerPrecisionWeightsInBFloat16` (the bf16 model of `ldm bench unet`): every Linear/Conv2d weight becomes
    /// bf16, nothing else, and the native bf16 UNet's output is unchanged (its kernels round float32 weights to the
    /// same bf16 values; Winograd off, whose float32 path would see the rounded weights).
    func testBF16StoredWeightsGiveTheSameNativeOutput() throws {
        if let reason = NativeBF16.unavailableReason {
            print("UNetNativeBF16Tests skipped: \(reason)")
            throw XCTSkip(reason)
        }
        let dir = fixturesURL.appendingPathComponent("sd1")
        let model = try UNet2DConditionModel(configData: try Data(contentsOf: dir.appendingPathComponent("config.json")))
        _ = try model.load(CheckpointFile.open(dir.appendingPathComponent("diffusion_pytorch_model.safetensors")).tensors, component: "sd1")
        let io = try fixtureTensors("sd1/io.safetensors")
        let run = {
            try GradMode.noGrad {
                try Winograd.withDisabled { // and F(2x2, 3x3) bf16 at every size, which reads both weights alike
                    try WinogradF2BF16.with(enabled: true, minTiles: 1) { try ComputePrecision.bf16.run {
                        try model(sample: io["sample"]!, timestep: io["timestep"]!.toArray(), encoderHiddenStates: io["encoder_hidden_states"])
                    } }
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

    /// The full-size SD-1.5 UNet (random diffusers weights) of tools/bench/unet_bf16_error.py, in the folder named by
    /// LDM_SD15_BF16_ERROR (3.4 GB, not in the repository; skipped without it): our bf16 error against float32 (the
    /// default paths, float32 Winograd F(4x4, 3x3) replacing F(2x2, 3x3) bf16, and oneDNN's direct bf16 kernel), each
    /// no larger than PyTorch's bf16 model's, by the largest element and by the relative L2 norm.
    func testFullSizeSD15ErrorWithinTorchBF16Error() throws {
        guard NativeBF16.available, let path = ProcessInfo.processInfo.environment["LDM_SD15_BF16_ERROR"] else {
            let reason = NativeBF16.unavailableReason ?? "LDM_SD15_BF16_ERROR (a folder written by tools/bench/unet_bf16_error.py) not set"
            print("UNetNativeBF16Tests.testFullSizeSD15ErrorWithinTorchBF16Error skipped: \(reason)")
            throw XCTSkip(reason)
        }
        let dir = URL(fileURLWithPath: path)
        let model = try UNet2DConditionModel(configData: try Data(contentsOf: dir.appendingPathComponent("config.json")))
        _ = try model.load(CheckpointFile.open(dir.appendingPathComponent("diffusion_pytorch_model.safetensors")).tensors, component: "unet")
        let io = try CheckpointFile.open(dir.appendingPathComponent("io.safetensors")).tensors.mapValues { try $0.tensor().float32() }
        let f32Out = try XCTUnwrap(io["out"]).toArray(), torchOut = try XCTUnwrap(io["bf16_compute"]).toArray()
        let scale = f32Out.map(abs).max() ?? 1, norm = f32Out.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot()
        func errors(_ y: [Float]) -> (Float, Double) {
            var maxError: Float = 0, sum = 0.0
            for (a, b) in zip(y, f32Out) {
                maxError = max(maxError, abs(a - b))
                sum += Double(a - b) * Double(a - b)
            }
            return (maxError / scale, sum.squareRoot() / norm)
        }
        let torch = errors(torchOut)
        for (mode, f2, winograd) in [("default", true, true), ("float32 Winograd", false, true), ("direct bf16", false, false)] {
            let run = {
                try ComputePrecision.bf16.run {
                    try model(sample: io["sample"]!, timestep: io["timestep"]!.toArray(), encoderHiddenStates: io["encoder_hidden_states"])
                }
            }
            let out = try GradMode.noGrad { try WinogradF2BF16.with(enabled: f2) { try winograd ? run() : Winograd.withDisabled(run) } }
            let ours = errors(out.toArray())
            print("SD-1.5 UNet bf16, \(mode): max \(ours.0) L2 \(ours.1); torch bf16 max \(torch.0) L2 \(torch.1)")
            XCTAssertLessThanOrEqual(ours.0, torch.0, mode)
            XCTAssertLessThanOrEqual(ours.1, torch.1, mode)
        }
    }
}
