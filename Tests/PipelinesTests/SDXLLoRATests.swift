// SDXL LoRAs against diffusers 0.42 + peft (tools/fixtures/sdxl_lora.py) on the tiny SDXL folder: a PEFT file written
// by StableDiffusionXLPipeline.save_lora_weights (unet., text_encoder., text_encoder_2., adapter configs in the
// metadata) and the same LoRA under kohya names, once with diffusers module paths and once with Stability's sgm UNet
// names (lora_unet_input_blocks_4_1_..., lora_te1_, lora_te2_), give diffusers' load_lora_weights + fuse_lora(0.7)
// image; all three files describe the same deltas; keys that name no module of the model are errors.
import Checkpoints
import Foundation
import Pipelines
import TensorCore
import XCTest

final class SDXLLoRATests: XCTestCase {
    let dir = fixtures.appendingPathComponent("sdxl-lora")

    func freshBundle() throws -> ModelBundle { try ModelBundle.load(fixtures.appendingPathComponent("sdxl/tiny-sdxl")) }

    func generate(_ bundle: ModelBundle) throws -> [UInt8] {
        let pipe = try StableDiffusionPipeline(bundle: bundle)
        return try pipe.textToImage(PromptOptions(prompt: "a cat", negativePrompt: "a dog", guidanceScale: 5, width: 16, height: 16),
                                    SamplingOptions(sampler: "euler", steps: 3), generator: TorchGenerator(seed: 0)).images[0].pixels
    }

    func reference(_ name: String) throws -> [UInt8] {
        let f = try CheckpointFile.open(dir.appendingPathComponent("outputs.safetensors"))
        return try XCTUnwrap(f.tensors[name], name).floats().map { UInt8((min(max($0, 0), 1) * 255).rounded(.toNearestOrEven)) }
    }

    func lora(_ name: String) throws -> LoRAFile { try LoRAFile(url: dir.appendingPathComponent(name)) }

    func testMergedImagesMatchDiffusers() throws {
        let bundle = try freshBundle()
        let base = try generate(bundle)
        let dbBase = psnr(base, try reference("base"))
        print("PSNR base: \(dbBase) dB")
        XCTAssertGreaterThanOrEqual(dbBase, 45)
        for (file, ref) in [("peft.safetensors", "peft_fused"), ("kohya_diffusers.safetensors", "kohya_diffusers_fused"),
                            ("kohya_sgm.safetensors", "kohya_sgm_fused")] {
            let applied = try bundle.mergeLoRAs([(try lora(file), 0.7)])
            let changed = applied.changedParameters
            XCTAssertTrue(changed.contains { $0.hasPrefix("text_encoder.") }, file)
            XCTAssertTrue(changed.contains { $0.hasPrefix("text_encoder_2.") }, file)
            XCTAssertTrue(changed.contains { $0.hasPrefix("unet.") && $0.hasSuffix("conv1.weight") }, file)
            let ours = try generate(bundle)
            XCTAssertNotEqual(ours, base, "\(file) changes nothing visible")
            let db = psnr(ours, try reference(ref))
            print("PSNR \(ref): \(db) dB")
            XCTAssertGreaterThanOrEqual(db, 45, file)
            bundle.unmergeLoRAs()
        }
    }

    func testPEFTAndKohyaNamesGiveTheSameDeltas() throws {
        let shapes = try freshBundle().loraTargets.mapValues(\.shape)
        let peft = try LoRA.deltas(try lora("peft.safetensors"), baseShapes: shapes, weight: 0.5)
        XCTAssertEqual(peft.count, 176)   // 352 PEFT tensors (lora_A, lora_B); 528 kohya tensors (down, up, alpha)
        XCTAssertEqual(peft.keys.filter { $0.hasPrefix("text_encoder_2.") }.count, 15)   // 3 layers x (q, k, v, out, fc1)
        for file in ["kohya_diffusers.safetensors", "kohya_sgm.safetensors"] {
            let kohya = try LoRA.deltas(try lora(file), baseShapes: shapes, weight: 0.5)
            XCTAssertEqual(Set(peft.keys), Set(kohya.keys), file)
            var worst: Float = 0
            for (k, v) in peft { worst = max(worst, zip(v, kohya[k] ?? []).map { abs($0 - $1) }.max() ?? .infinity) }
            XCTAssertLessThanOrEqual(worst, 1e-6, file)
        }
    }

    func testUnknownSDXLKeysAreErrors() throws {
        let shapes = try freshBundle().loraTargets.mapValues(\.shape)
        let r = try XCTUnwrap(try lora("kohya_sgm.safetensors").records["lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q.lora_down.weight"])
        for key in ["lora_unet_input_blocks_40_1_transformer_blocks_0_attn1_to_q.lora_down.weight",   // no such block
                    "lora_te3_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight",         // no third encoder
                    "lora_te2_text_model_encoder_layers_9_self_attn_q_proj.lora_down.weight",         // 3 layers only
                    "text_encoder_2.text_model.encoder.layers.7.self_attn.q_proj.lora_A.weight"] {
            let file = LoRAFile(url: URL(fileURLWithPath: "/tmp/bad.safetensors"), records: [key: r])
            XCTAssertThrowsError(try LoRA.deltas(file, baseShapes: shapes, weight: 1), key) { e in
                XCTAssertTrue("\(e)".contains(String(key.prefix(20))), "\(e)")
            }
        }
    }
}
