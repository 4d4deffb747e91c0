import Checkpoints
import Foundation
import NeuralNetwork
import TensorCore
import XCTest
@testable import Conditioning

// CompVis SpatialRescaler against the reference module (tools/fixtures/spatial_rescaler.py): odd sizes, where
// F.interpolate(scale_factor=0.5) maps coordinates by 2 rather than by in / out; with and without the channel mapper.
final class SpatialRescalerTests: XCTestCase {
    struct Case: Decodable {
        struct Config: Decodable { let n_stages: Int; let method: String; let multiplier: Float; let in_channels: Int; let out_channels: Int?; let bias: Bool? }
        let name: String, config: Config, output_shape: [Int]
    }

    func testMatchesCompVisModule() throws {
        let dir = fixturesURL.appendingPathComponent("spatial_rescaler")
        let cases = try JSONDecoder().decode([Case].self, from: Data(contentsOf: dir.appendingPathComponent("cases.json")))
        let file = try CheckpointFile.open(dir.appendingPathComponent("tensors.safetensors"))
        XCTAssertEqual(cases.count, 3)
        for c in cases {
            let cfg = c.config
            let m = try SpatialRescaler(stages: cfg.n_stages, method: try XCTUnwrap(SpatialRescaler.Method(rawValue: cfg.method)),
                                        multiplier: cfg.multiplier, inChannels: cfg.in_channels, outChannels: cfg.out_channels,
                                        bias: cfg.bias ?? false)
            let prefix = c.name + "."
            var records: [String: TensorRecord] = [:]
            for (k, v) in file.tensors where k.hasPrefix(prefix + "cond_stage_model.") {
                records[String(k.dropFirst(prefix.count))] = v
            }
            _ = try m.load(mapKeys(records, SpatialRescaler.compVisKeyRules), component: c.name)
            let x = try file.tensors[prefix + "input"]!.tensor().float32()
            let ref = try file.tensors[prefix + "output"]!.tensor().float32()
            let y = try GradMode.noGrad { try m(x) }
            XCTAssertEqual(y.shape, c.output_shape, c.name)
            let err = zip(y.toArray(), ref.toArray()).map { abs($0 - $1) }.max() ?? .infinity
            print("SpatialRescaler \(c.name): max abs err \(err)")
            XCTAssertLessThanOrEqual(err, 1e-5, c.name)
        }
    }

    func testRejectsBadConfigurationsAndInputs() throws {
        XCTAssertThrowsError(try SpatialRescaler(stages: -1))
        XCTAssertThrowsError(try SpatialRescaler(multiplier: 0))
        let m = try SpatialRescaler(stages: 3, inChannels: 3, outChannels: 2)
        XCTAssertThrowsError(try m(Tensor(zeros: [1, 3, 4, 4])))   // 4 -> 2 -> 1 -> 0 pixels
        XCTAssertThrowsError(try m(Tensor(zeros: [1, 5, 16, 16]))) // wrong channel count
        XCTAssertThrowsError(try m(Tensor(zeros: [3, 16, 16])))
    }
}
