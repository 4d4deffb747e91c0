import Checkpoints
import Foundation
import NeuralNetwork
import TensorCore
import XCTest
@testable import UNetModels

// The UNet with int8 weights and activations (--precision int8: every Linear/Conv2d but conv_in and conv_out on the
// int8 VNNI kernels) against the float32 reference of tools/fixtures/unet.py's SD1/SD2-shaped fixtures. Its error is
// larger than bf16's: an activation quantised per row or per image has 255 steps over its whole range, where bf16 keeps
// 8 significant bits per value. Measured on a Zen 4 (max |int8 - float32| / max |float32|): sd1 0.0549, sd2 0.0250,
// which is 3.0x and 2.2x PyTorch's own bf16 inference error on the same model (the fixture's bf16_compute: 0.0183,
// 0.0114). The bound is 4x that bf16 error. Skipped, with the reason printed, without AVX512_VNNI at the level in use.
final class UNetInt8Tests: XCTestCase {
    static let timesTorchBF16Error: Float = 4

    func testInt8UNetStaysWithinMeasuredBoundOfFloat32() throws {
        if let why = Int8Compute.unavailableReason {
            print("UNetInt8Tests skipped: \(why)")
            throw XCTSkip(why)
        }
        let refs = try fixtureTensors("bf16_references.safetensors")
        for name in ["sd1", "sd2"] {
            let (model, io, call) = try fixtureUNet(name)
            let run = { try GradMode.noGrad { try call() } }
            let f32 = try run().toArray()
            let report = model.quantizeToInt8(skipping: [ObjectIdentifier(model.convIn), ObjectIdentifier(model.convOut)])
            let linears = model.lowerPrecisionWeights().count
            XCTAssertEqual(report.layers, linears - 2, "\(name): every Linear/Conv2d but conv_in and conv_out")
            XCTAssertNil(model.convIn.int8)
            XCTAssertNil(model.convOut.int8)
            let int8 = try run().toArray()
            let ref = try XCTUnwrap(io["out"]).toArray()
            let scale = ref.map(abs).max() ?? 1
            let ourError = zip(int8, ref).map { abs($0 - $1) }.max()! / scale
            let f32Error = zip(f32, ref).map { abs($0 - $1) }.max()! / scale
            let torchBF16 = zip(try XCTUnwrap(refs["\(name).bf16_compute"]).toArray(), ref).map { abs($0 - $1) }.max()! / scale
            print("UNet int8 \(name): vs float32 \(ourError) relative (our float32 \(f32Error), torch bf16 inference \(torchBF16))")
            XCTAssertGreaterThan(ourError, 10 * f32Error, "\(name): int8 should differ from float32 (did it run in int8?)")
            XCTAssertLessThanOrEqual(ourError, UNetInt8Tests.timesTorchBF16Error * torchBF16, name)
            // Back to float32: the float weights were never changed.
            model.removeInt8Quantization()
            XCTAssertEqual(try run().toArray(), f32)
        }
    }
}
