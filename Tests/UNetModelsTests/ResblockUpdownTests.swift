import Checkpoints
import Foundation
import NeuralNetwork
import TensorCore
import XCTest
@testable import UNetModels
@testable import CompVis

// CompVis UNetModel(resblock_updown=True) (the zoo's lsun_churches LDM): ResBlock(down/up=True) resamplers, loaded
// from CompVis names through the YAML translation and the key table, against the CompVis module and the diffusers
// UNet2DModel (ResnetDownsampleBlock2D / ResnetUpsampleBlock2D, Attn blocks with downsample_type / upsample_type
// "resnet") run by tools/fixtures/unet_resblock_updown.py, with and without use_scale_shift_norm.

final class ResblockUpdownTests: XCTestCase {
    func run(_ name: String, scaleShift: Bool) throws {
        let yamlData = try Data(contentsOf: fixturesURL.appendingPathComponent("compvis_updown_\(name).json"))
        let yaml = try XCTUnwrap(JSONSerialization.jsonObject(with: yamlData) as? [String: Any])
        var dict = try CompVisUNetConfig.diffusersConfig(yaml)
        XCTAssertEqual(dict["down_block_types"] as? [String], ["ResnetDownsampleBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D"])
        XCTAssertEqual(dict["up_block_types"] as? [String], ["ResnetUpsampleBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D"])
        XCTAssertEqual(dict["downsample_type"] as? String, "resnet")
        XCTAssertEqual(dict["upsample_type"] as? String, "resnet")
        XCTAssertEqual(dict["resnet_time_scale_shift"] as? String, scaleShift ? "scale_shift" : "default")
        // openaimodel's GroupNorm(32) is patched to 4 groups in the fixture's tiny model.
        dict["norm_num_groups"] = 4; dict["attn_norm_num_groups"] = 4
        let config = try UNetConfig.decode(JSONSerialization.data(withJSONObject: dict))
        XCTAssertEqual((0..<3).map(config.resnetDownsample), [true, true, false])
        XCTAssertEqual((0..<3).map(config.resnetUpsample), [true, true, false])

        let map = try CompVisUNetKeyMap(config: config)
        XCTAssertEqual(map.diffusersName("input_blocks.2.0.in_layers.2.weight"), "down_blocks.0.downsamplers.0.conv1.weight")
        XCTAssertEqual(map.diffusersName("input_blocks.4.0.emb_layers.1.bias"), "down_blocks.1.downsamplers.0.time_emb_proj.bias")
        XCTAssertEqual(map.diffusersName("output_blocks.1.1.out_layers.3.weight"), "up_blocks.0.upsamplers.0.conv2.weight")
        XCTAssertEqual(map.diffusersName("output_blocks.3.2.in_layers.0.bias"), "up_blocks.1.upsamplers.0.norm1.bias")
        XCTAssertEqual(map.compVisName("up_blocks.1.upsamplers.0.norm2.weight"), "output_blocks.3.2.out_layers.0.weight")

        let records = try CheckpointFile.open(fixturesURL.appendingPathComponent("compvis_updown_\(name).safetensors")).tensors
        let model = try UNet2DModel(config: config)
        let down = try XCTUnwrap(model.downBlocks[0].resnetDownsampler)
        XCTAssertNil(model.downBlocks[0].downsampler)
        XCTAssertEqual(down.resample, .down)
        XCTAssertEqual(down.scaleShift, scaleShift)
        XCTAssertEqual(model.upBlocks[1].resnetUpsampler?.resample, .up)
        XCTAssertNil(model.upBlocks[2].resnetUpsampler)
        let unused = try map.load(records, into: model)
        XCTAssertEqual(unused, [])

        let io = try fixtureTensors("compvis_updown_\(name)_io.safetensors")
        let out = try GradMode.noGrad { try model(sample: try XCTUnwrap(io["sample"]), timestep: [10, 981]) }
        for ref in ["out_compvis", "out_diffusers"] {
            let r = try XCTUnwrap(io[ref])
            let scale = r.toArray().map(abs).max() ?? 1
            let err = zip(out.toArray(), r.toArray()).map { abs($0 - $1) }.max() ?? .infinity
            XCTAssertEqual(out.shape, r.shape)
            XCTAssertLessThanOrEqual(err / scale, 1e-4, "\(name) vs \(ref)")
            print("resblock_updown \(name) vs \(ref): max rel error \(err / scale)")
        }
    }

    func testScaleShiftNorm() throws { try run("scale_shift", scaleShift: true) }
    func testDefaultNorm() throws { try run("default", scaleShift: false) }

    /// diffusers semantics: DownBlock2D / UpBlock2D keep conv resampling whatever downsample_type says; a bad type is refused.
    func testBlockTypeSemantics() throws {
        let base: [String: Any] = ["_class_name": "UNet2DModel", "block_out_channels": [8, 8], "layers_per_block": 1,
                                   "norm_num_groups": 8, "attention_head_dim": 8, "downsample_type": "resnet", "upsample_type": "resnet",
                                   "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["UpBlock2D", "AttnUpBlock2D"]]
        let c = try UNetConfig.decode(JSONSerialization.data(withJSONObject: base))
        XCTAssertEqual([c.resnetDownsample(0), c.resnetUpsample(0)], [false, false])
        let m = try UNet2DModel(config: c)
        XCTAssertNotNil(m.downBlocks[0].downsampler)
        XCTAssertNotNil(m.upBlocks[0].upsampler)
        var bad = base
        bad["downsample_type"] = "fir"
        XCTAssertThrowsError(try UNetConfig.decode(JSONSerialization.data(withJSONObject: bad))) {
            XCTAssertTrue("\($0)".contains("downsample_type"), "\($0)")
        }
        // With a SpatialTransformer UNet (UNet2DConditionModel) diffusers has no resnet resampling: refused.
        let p: [String: Any] = ["model_channels": 32, "in_channels": 4, "out_channels": 4, "channel_mult": [1, 2],
                                "attention_resolutions": [2], "num_res_blocks": 1, "num_heads": 4, "use_spatial_transformer": true,
                                "context_dim": 16, "resblock_updown": true]
        XCTAssertThrowsError(try CompVisUNetConfig.diffusersConfig(unetParams: p)) { XCTAssertTrue("\($0)".contains("resblock_updown"), "\($0)") }
    }
}
