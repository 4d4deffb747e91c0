// The block names of diffusers' config.json (DiffusersBlocks/BlockTypes.swift) and the default-decoding helper
// (NeuralNetwork/ConfigDecoding.swift) as the UNet and VAE configurations use them: names round-trip as the strings
// diffusers writes, an unimplemented name is kept and refused by validate(), absent or null keys take the default.
import Autoencoders
import DiffusersBlocks
import Foundation
import NeuralNetwork
import UNetModels
import XCTest

final class BlockNameTests: XCTestCase {
    func testNamesRoundTrip() throws {
        for t in DownBlockType.implemented { XCTAssertEqual(DownBlockType(rawValue: t.rawValue), t) }
        for t in UpBlockType.implemented { XCTAssertEqual(UpBlockType(rawValue: t.rawValue), t) }
        for t in MidBlockType.implemented { XCTAssertEqual(MidBlockType(rawValue: t.rawValue), t) }
        for t in ResampleType.implemented { XCTAssertEqual(ResampleType(rawValue: t.rawValue), t) }
        XCTAssertEqual(DownBlockType(rawValue: "CrossAttnDownBlock2D"), .crossAttnDownBlock2D)
        XCTAssertEqual(UpBlockType(rawValue: "AttnUpDecoderBlock2D"), .attnUpDecoderBlock2D)
        XCTAssertEqual(MidBlockType(rawValue: "UNetMidBlock2DCrossAttn"), .unetMidBlock2DCrossAttn)
        XCTAssertEqual(DownBlockType(rawValue: "SimpleCrossAttnDownBlock2D"), .other("SimpleCrossAttnDownBlock2D"))
        XCTAssertEqual(Set(DownBlockType.implemented.map(\.rawValue)).count, DownBlockType.implemented.count)
        XCTAssertEqual(Set(UpBlockType.implemented.map(\.rawValue)).count, UpBlockType.implemented.count)
    }

    /// The SD 1.x config encodes its block names as diffusers' strings and decodes back to the same config.
    func testUNetConfigEncodesNames() throws {
        let config = UNetConfig.stableDiffusion15
        let data = try JSONEncoder().encode(config)
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
        XCTAssertEqual(json["down_block_types"] as? [String], ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"])
        XCTAssertEqual(json["mid_block_type"] as? String, "UNetMidBlock2DCrossAttn")
        XCTAssertEqual(json["downsample_type"] as? String, "conv")
        XCTAssertEqual(try UNetConfig.decode(data), config)
    }

    /// A name this package does not implement decodes, and validate() names it (UNet: while decoding, as before).
    func testUnimplementedNamesAreRefusedByName() throws {
        let unet = #"{"_class_name": "UNet2DModel", "down_block_types": ["DownBlock2D", "SkipDownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"], "block_out_channels": [32, 64]}"#
        XCTAssertThrowsError(try UNetConfig.decode(Data(unet.utf8))) {
            XCTAssertEqual("\($0)", "UNet config: unsupported down block SkipDownBlock2D")
        }
        let resample = #"{"_class_name": "UNet2DModel", "block_out_channels": [32, 64], "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "downsample_type": "fir"}"#
        XCTAssertThrowsError(try UNetConfig.decode(Data(resample.utf8))) { XCTAssertTrue("\($0)".contains("downsample_type fir"), "\($0)") }
        let vae = #"{"block_out_channels": [32], "down_block_types": ["AttnSkipDownBlock2D"], "up_block_types": ["UpDecoderBlock2D"]}"#
        let config = try JSONDecoder().decode(AutoencoderKLConfig.self, from: Data(vae.utf8))
        XCTAssertEqual(config.downBlockTypes, [.other("AttnSkipDownBlock2D")])
        XCTAssertThrowsError(try config.validate()) { XCTAssertEqual("\($0)", "unsupported down block type AttnSkipDownBlock2D") }
        // A UNet block in a VAE config is refused as well.
        var mixed = AutoencoderKLConfig()
        mixed.downBlockTypes = [.crossAttnDownBlock2D]
        XCTAssertThrowsError(try mixed.validate()) { XCTAssertEqual("\($0)", "unsupported down block type CrossAttnDownBlock2D") }
    }

    /// Absent and null keys take the reference default; a value of the wrong type is an error, not the default.
    func testDefaultsForAbsentAndNullKeys() throws {
        let absent = try JSONDecoder().decode(VQModelConfig.self, from: Data("{}".utf8))
        XCTAssertEqual(absent, VQModelConfig())
        let null = try JSONDecoder().decode(VQModelConfig.self, from: Data(#"{"in_channels": null, "num_vq_embeddings": null, "down_block_types": null}"#.utf8))
        XCTAssertEqual(null, VQModelConfig())
        let given = try JSONDecoder().decode(VQModelConfig.self, from: Data(#"{"in_channels": 1, "num_vq_embeddings": 16}"#.utf8))
        XCTAssertEqual(given.inChannels, 1)
        XCTAssertEqual(given.numVqEmbeddings, 16)
        XCTAssertThrowsError(try JSONDecoder().decode(VQModelConfig.self, from: Data(#"{"in_channels": "three"}"#.utf8)))
        XCTAssertThrowsError(try JSONDecoder().decode(AutoencoderKLConfig.self, from: Data(#"{"down_block_types": [3]}"#.utf8)))
        let unet = try UNetConfig.decode(Data(#"{"_class_name": "UNet2DConditionModel", "cross_attention_dim": 768, "norm_eps": null}"#.utf8))
        XCTAssertEqual(unet.normEps, 1e-5)
        XCTAssertEqual(unet, UNetConfig.stableDiffusion15)
    }
}
