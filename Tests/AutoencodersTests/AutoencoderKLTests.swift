// Parity of AutoencoderKL (encode moments, posterior sample / KL, decode, tiled encode/decode) with diffusers on tiny
// random-weight models, configuration decoding, and strict loading errors.
@testable import Autoencoders
import Checkpoints
import Foundation
import NeuralNetwork
import TensorCore
import XCTest

final class AutoencoderKLTests: XCTestCase {
    func checkModel(_ name: String) throws -> (AutoencoderKL, [String: Tensor]) {
        let m = try AutoencoderKL.load(folder: fixtures.appendingPathComponent(name))
        let ref = try referenceTensors(name)
        let post = try m.encode(try ref.get("x"), tiled: .never)
        assertParity(post.mean, try ref.get("mean"), "\(name) mean")
        assertParity(post.logvar, try ref.get("logvar"), "\(name) logvar")
        assertParity(post.std, try ref.get("std"), "\(name) std")
        assertParity(post.sample(generator: TorchGenerator(seed: 7)), try ref.get("sample_seed7"), "\(name) sample(seed 7)")
        assertParity(post.kl(), try ref.get("kl"), "\(name) kl")
        assertParity(try m.decode(try ref.get("z"), tiled: .never), try ref.get("decoded"), "\(name) decode")
        return (m, ref)
    }

    func testKLf4WithAttention() throws {
        let (m, _) = try checkModel("kl_f4")
        XCTAssertEqual(m.downsamplingFactor, 4)
        XCTAssertNotNil(m.encoder.midBlock.attention)
    }

    func testKLf8WithAttention() throws {
        let (m, _) = try checkModel("kl_f8")
        XCTAssertEqual(m.downsamplingFactor, 8)
    }

    func testKLWithoutMidAttentionOrQuantConv() throws {
        let (m, _) = try checkModel("kl_noattn")
        XCTAssertNil(m.decoder.midBlock.attention)
        XCTAssertNil(m.quantConv)
        XCTAssertNil(m.postQuantConv)
        XCTAssertEqual(m.decoder.upBlocks[0].resnets.count, 3)   // layers_per_block + 1
    }

    func testTiledMatchesDiffusersAndDiffersFromUntiled() throws {
        let m = try AutoencoderKL.load(folder: fixtures.appendingPathComponent("kl_f4"))
        let ref = try referenceTensors("kl_f4")
        let xb = try ref.get("x_big"), zb = try ref.get("z_big")
        XCTAssertEqual(m.tiling.tileSampleMinSize, 16)
        XCTAssertEqual(m.tileLatentMinSize, 4)
        // .auto leaves a 32x32 image whole (below the area threshold); .always tiles it as diffusers' enable_tiling.
        XCTAssertFalse(m.shouldTileDecode(zb, .auto))
        XCTAssertTrue(m.shouldTileDecode(zb, .always))
        XCTAssertFalse(m.shouldTileDecode(try ref.get("z"), .always))   // a single tile: nothing to tile
        let untiled = try m.decode(zb, tiled: .never), tiled = try m.decode(zb, tiled: .always)
        assertParity(untiled, try ref.get("decoded_big_untiled"), "kl_f4 decode 32x32 untiled")
        assertParity(tiled, try ref.get("decoded_big_tiled"), "kl_f4 decode 32x32 tiled")
        let moments = try m.encode(xb, tiled: .always).parameters
        assertParity(moments, try ref.get("moments_big_tiled"), "kl_f4 encode 32x32 tiled")
        assertParity(try m.encode(xb, tiled: .never).parameters, try ref.get("moments_big_untiled"), "kl_f4 encode 32x32 untiled")
        // The tiled-vs-untiled figure: tiles of 16 px with 4 px blending on a 32 px image of a random-weight model.
        let d = (tiled - untiled).abs()
        let maxDiff = d.toArray().max() ?? 0, meanDiff = d.mean().item
        let rms = untiled.square().mean().item.squareRoot()
        print("tiled vs untiled decode (kl_f4, 1x4x8x8 -> 32x32, tile 16 px, blend 4 px): max abs \(maxDiff), mean abs \(meanDiff), output rms \(rms)")
        XCTAssertGreaterThan(maxDiff, 0)          // tiling really happened
        XCTAssertLessThan(meanDiff, 0.5 * rms)    // and stays a perturbation of the untiled image
        // The same figure without mid-block attention (local receptive field): kl_noattn, f = 2, 16 px tiles.
        let n = try AutoencoderKL.load(folder: fixtures.appendingPathComponent("kl_noattn"))
        let zn = Tensor.randn([1, 3, 16, 16], generator: TorchGenerator(seed: 5))
        let un = try n.decode(zn, tiled: .never), tn = try n.decode(zn, tiled: .always)
        let dn = (tn - un).abs(), rmsN = un.square().mean().item.squareRoot()
        print("tiled vs untiled decode (kl_noattn, 1x3x16x16 -> 32x32, tile 16 px, blend 4 px): max abs \(dn.toArray().max() ?? 0), mean abs \(dn.mean().item), output rms \(rmsN)")
        XCTAssertGreaterThan(dn.toArray().max() ?? 0, 0)
        XCTAssertLessThan(dn.mean().item, 0.5 * rmsN)
        // Auto mode with a lowered area threshold tiles.
        m.tiling.autoTileArea = 16 * 16
        XCTAssertTrue(m.shouldTileDecode(zb, .auto))
        assertParity(try m.decode(zb), try ref.get("decoded_big_tiled"), "kl_f4 decode 32x32 auto (tiled)")
    }

    func testSlicingGivesTheBatchedResult() throws {
        let m = try AutoencoderKL.load(folder: fixtures.appendingPathComponent("kl_f4"))
        let z = Tensor.randn([2, 4, 4, 4], generator: TorchGenerator(seed: 3))
        let x = Tensor.randn([2, 3, 16, 16], generator: TorchGenerator(seed: 4))
        let batched = try m.decode(z), moments = try m.encode(x).parameters
        m.useSlicing = true
        assertParity(try m.decode(z), batched, "sliced decode vs batched")
        assertParity(try m.encode(x).parameters, moments, "sliced encode vs batched")
        assertParity(try m.decode(z.narrow(0, 1, 1)), batched.narrow(0, 1, 1).contiguous(), "second entry alone")
    }

    func testConfigDecodingAndDefaults() throws {
        let c = try AutoencoderKLConfig.load(fixtures.appendingPathComponent("kl_f8/config.json"))
        XCTAssertEqual(c.blockOutChannels, [8, 8, 16, 16])
        XCTAssertEqual(c.normNumGroups, 4)
        XCTAssertEqual(c.scalingFactor, 0.18215)
        XCTAssertNil(c.shiftFactor)
        let json = #"{"_class_name": "AutoencoderKL", "sample_size": [768, 768], "shift_factor": 0.0609, "scaling_factor": 0.3611, "force_upcast": false}"#
        let d = try JSONDecoder().decode(AutoencoderKLConfig.self, from: Data(json.utf8))
        XCTAssertEqual(d.sampleSize, 768)
        XCTAssertEqual(d.shiftFactor, 0.0609)
        XCTAssertEqual(d.layersPerBlock, 1)     // diffusers default
        XCTAssertEqual(d.blockOutChannels, [64])
        let bad = #"{"block_out_channels": [8, 16], "down_block_types": ["DownEncoderBlock2D"], "norm_num_groups": 4}"#
        let cfg = try JSONDecoder().decode(AutoencoderKLConfig.self, from: Data(bad.utf8))
        XCTAssertThrowsError(try AutoencoderKL(config: cfg)) { XCTAssertTrue("\($0)".contains("down_block_types"), "\($0)") }
        var odd = AutoencoderKLConfig(); odd.blockOutChannels = [10]; odd.normNumGroups = 4
        XCTAssertThrowsError(try AutoencoderKL(config: odd)) { XCTAssertTrue("\($0)".contains("norm_num_groups"), "\($0)") }
        XCTAssertThrowsError(try AutoencoderKLConfig.load(fixtures.appendingPathComponent("nonexistent.json")))
    }

    func testScaling() throws {
        var c = AutoencoderKLConfig(); c.blockOutChannels = [8]; c.normNumGroups = 4; c.scalingFactor = 0.5; c.shiftFactor = 0.25
        let m = try AutoencoderKL(config: c)
        let z = Tensor([1, 2, 3, 4], shape: [1, 4, 1, 1])
        XCTAssertEqual(m.scale(z).toArray(), [0.375, 0.875, 1.375, 1.875])
        XCTAssertEqual(m.unscale(m.scale(z)).toArray(), z.toArray())
        XCTAssertThrowsError(try m.decode(Tensor(zeros: [1, 3, 2, 2]))) { XCTAssertTrue("\($0)".contains("expected (B, 4, H, W)"), "\($0)") }
        XCTAssertThrowsError(try m.encode(Tensor(zeros: [1, 4, 2, 2]))) { XCTAssertTrue("\($0)".contains("expected (B, 3, H, W)"), "\($0)") }
    }

    func testStrictLoadingReportsMissingAndMisshaped() throws {
        let url = fixtures.appendingPathComponent("kl_f4/diffusion_pytorch_model.safetensors")
        var records = try CheckpointFile.open(url).tensors
        let m = try AutoencoderKL(config: AutoencoderKLConfig.load(fixtures.appendingPathComponent("kl_f4/config.json")))
        records["decoder.conv_out.bias"] = nil
        records["extra.thing"] = records["encoder.conv_in.bias"]
        records["encoder.conv_in.weight"] = records["decoder.conv_out.weight"]
        XCTAssertThrowsError(try m.load(records, component: "vae")) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains("decoder.conv_out.bias"), text)
            XCTAssertTrue(text.contains("encoder.conv_in.weight"), text)
        }
        var full = try CheckpointFile.open(url).tensors
        full["extra.thing"] = full["encoder.conv_in.bias"]
        let report = try m.load(full, component: "vae")
        XCTAssertEqual(report.unexpected, ["extra.thing"])
        XCTAssertThrowsError(try AutoencoderKL.load(folder: fixtures)) { XCTAssertTrue("\($0)".contains("config.json"), "\($0)") }
    }

    /// One SD-architecture decode of a 1x4x16x16 latent (a smoke run of the benchmark model; LDM_VAE_SMOKE=1).
    func testStableDiffusionDecodeSmoke() throws {
        guard ProcessInfo.processInfo.environment["LDM_VAE_SMOKE"] == "1" else { throw XCTSkip("set LDM_VAE_SMOKE=1") }
        let m = AutoencoderKL.randomStableDiffusion(seed: 0)
        let z = Tensor.randn([1, 4, 16, 16], generator: TorchGenerator(seed: 1))
        let start = Date()
        let image = try m.decode(z)
        print("SD VAE decode 1x4x16x16 -> \(image.shape): \(Date().timeIntervalSince(start)) s")
        XCTAssertEqual(image.shape, [1, 3, 128, 128])
        XCTAssertFalse(image.toArray().contains { !$0.isFinite })
    }

    /// The benchmark model builds with the SD architecture (parameter count of diffusers' SD VAE: 83,653,863).
    func testStableDiffusionArchitecture() throws {
        let m = AutoencoderKL.randomStableDiffusion(seed: 0)
        XCTAssertEqual(m.parameterCount, 83_653_863)
        XCTAssertEqual(m.downsamplingFactor, 8)
    }
}
