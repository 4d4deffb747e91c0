// diffusers folders written with variant="fp16" and max_shard_size (tools/fixtures/sdxl_variants.py: every component
// as `<weights>.fp16-0000N-of-0000M.safetensors` shards with a `<weights>.safetensors.index.fp16.json` weight map, as
// diffusers' and transformers' save_pretrained write them) load to the same weights as the plain folder they were
// saved from, and give the same image.
import Checkpoints
import Foundation
import NeuralNetwork
import Pipelines
import TensorCore
import XCTest

final class SDXLVariantFolderTests: XCTestCase {
    static let sharded = fixtures.appendingPathComponent("sdxl-variants/tiny-sdxl-fp16-sharded")
    static let plain = fixtures.appendingPathComponent("sdxl/tiny-sdxl")

    func testShardedFP16FolderLoadsTheSameWeights() throws {
        let folder = try DiffusersFolder(url: Self.sharded)
        for name in ["unet", "vae", "text_encoder", "text_encoder_2"] {
            let c = try XCTUnwrap(folder.component(name), name)
            XCTAssertEqual(c.variant, "fp16", name)
            XCTAssertGreaterThan(c.weightFiles.count, 1, "\(name): expected shards")
        }
        let a = try ModelBundle.load(Self.sharded), b = try ModelBundle.load(Self.plain)
        guard case .kl(let va) = a.firstStage, case .kl(let vb) = b.firstStage else { return XCTFail("no AutoencoderKL") }
        let pairs: [(String, Module?, Module?)] = [("unet", a.unet, b.unet), ("vae", va, vb), ("text_encoder", a.textEncoder, b.textEncoder),
                                                   ("text_encoder_2", a.textEncoder2, b.textEncoder2)]
        for (name, x, y) in pairs {
            let px = try XCTUnwrap(x, name).namedParameters, py = Dictionary(try XCTUnwrap(y, name).namedParameters, uniquingKeysWith: { p, _ in p })
            XCTAssertEqual(px.count, py.count, name)
            XCTAssertEqual(px.filter { py[$0.0]?.toArray() != $0.1.toArray() }.map(\.0), [], name)
        }
        let p = PromptOptions(prompt: "a cat", guidanceScale: 5, width: 16, height: 16)
        let run = { (m: ModelBundle) in
            try StableDiffusionPipeline(bundle: m).textToImage(p, SamplingOptions(sampler: "euler", steps: 2), generator: TorchGenerator(seed: 0)).images.flatMap(\.pixels)
        }
        XCTAssertEqual(try run(a), try run(b))
        // The whole sharded folder as one checkpoint (ldm inspect / convert): the shards merge to the plain folder's tensors.
        let merged = try CheckpointFile.open(Self.sharded, variant: "fp16").tensors
        let plain = try CheckpointFile.open(Self.plain).tensors
        XCTAssertEqual(Set(merged.keys), Set(plain.keys))
        for (k, r) in plain { XCTAssertEqual(try merged[k]?.rawData(), try r.rawData(), k) }
    }
}
