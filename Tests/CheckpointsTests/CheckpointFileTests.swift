// Tests for CheckpointFile (format detection, EMA view), DiffusersFolder, ModelFamily and the report.
import Foundation
import XCTest
@testable import Checkpoints
import CompVis

final class CheckpointFileTests: XCTestCase {
    func testFormatDetectionGivesSameTensors() throws {
        let st = try CheckpointFile.open(Fixtures.url("reference.safetensors"))
        let ck = try CheckpointFile.open(Fixtures.url("lightning.ckpt"))
        XCTAssertEqual(st.format, .safetensors)
        XCTAssertEqual(ck.format, .torchZip)
        XCTAssertEqual(ck.metadata["global_step"], "5")
        XCTAssertEqual(st.metadata, Fixtures.expected.metadata)
        XCTAssertEqual(Set(st.tensors.keys), Set(ck.tensors.keys))
        for (k, r) in st.tensors { XCTAssertEqual(try r.rawData(), try ck.tensors[k]?.rawData(), k) }
        let mem = try CheckpointFile.open(data: Data(contentsOf: Fixtures.url("lightning_p4.ckpt")))
        try Fixtures.assertMatchesExpected(mem.tensors)
    }

    func testEMASubstitution() throws {
        XCTAssertEqual(EMA.litEmaName("model.diffusion_model.input_blocks.0.0.weight"),
                       "model_ema.diffusion_modelinput_blocks00weight")
        let ck = try CheckpointFile.open(Fixtures.url("lightning.ckpt"))
        XCTAssertEqual(EMA.keyMap(Array(ck.tensors.keys)), ["model.lin.weight": "model_ema.linweight"])
        let ema = try XCTUnwrap(ck.emaTensors)
        XCTAssertNil(ema["model_ema.linweight"])
        XCTAssertNil(ema["model_ema.num_updates"])
        let w = try XCTUnwrap(ema["model.lin.weight"])
        XCTAssertEqual(w.name, "model.lin.weight")
        XCTAssertEqual(Fixtures.hex(try w.rawData()), Fixtures.expected.tensors["model_ema.linweight"]?.hex)
        XCTAssertEqual(Fixtures.hex(try XCTUnwrap(ema["model.emb.weight"]).rawData()), Fixtures.expected.tensors["model.emb.weight"]?.hex)
    }

    func testDiffusersFolder() throws {
        let url = Fixtures.url("diffusers")
        let folder = try DiffusersFolder(url: url)
        XCTAssertEqual(folder.className, "StableDiffusionPipeline")
        XCTAssertEqual(folder.components.map(\.name), ["scheduler", "text_encoder", "tokenizer", "unet", "vae"])
        XCTAssertEqual(folder.component("unet")?.config?["cross_attention_dim"] as? Int, 768)
        XCTAssertEqual(folder.component("scheduler")?.configURL?.lastPathComponent, "scheduler_config.json")
        XCTAssertEqual(folder.component("text_encoder")?.weightFiles.count, 2)
        XCTAssertEqual(folder.component("vae")?.weightFiles.map(\.lastPathComponent), ["diffusion_pytorch_model.safetensors"])
        let fp16 = try DiffusersFolder(url: url, variant: "fp16")
        XCTAssertEqual(fp16.component("vae")?.weightFiles.map(\.lastPathComponent), ["diffusion_pytorch_model.fp16.safetensors"])
        XCTAssertEqual(try fp16.component("vae")?.tensors()["quant_conv.weight"]?.dtype, .F16)
        XCTAssertEqual(fp16.component("unet")?.variant, nil, "falls back to the non-variant file")
        XCTAssertEqual(DiffusersFolder.addVariant("model.safetensors.index.json", "fp16"), "model.safetensors.index.fp16.json")

        let file = try CheckpointFile.open(url)
        XCTAssertEqual(file.format, .diffusersFolder)
        let exp = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: Fixtures.url("diffusers_expected.json"))) as? [String: String])
        XCTAssertEqual(Set(file.tensors.keys), Set(exp.keys))
        for (k, hex) in exp { XCTAssertEqual(Fixtures.hex(try XCTUnwrap(file.tensors[k]).rawData()), hex, k) }
        XCTAssertEqual(ModelFamily.detect(folder).kind, .diffusersPipeline)
        let single = try CheckpointFile.open(url.appendingPathComponent("unet"))
        XCTAssertEqual(Set(single.tensors.keys), ["conv_in.weight", "conv_in.bias"])
    }

    func testModelFamilyRules() {
        let unet = "model.diffusion_model."
        func sd(ctx: Int, inCh: Int = 4, cond: [String: [Int]]) -> [String: [Int]] {
            var s: [String: [Int]] = [unet + "input_blocks.0.0.weight": [320, inCh, 3, 3],
                                      unet + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": [320, ctx],
                                      "first_stage_model.encoder.conv_in.weight": [128, 3, 3, 3]]
            s.merge(cond) { a, _ in a }
            return s
        }
        let clip = ["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": [49408, 768]]
        let openclip = ["cond_stage_model.model.token_embedding.weight": [49408, 1024]]
        XCTAssertEqual(ModelFamily.detect(shapes: sd(ctx: 768, cond: clip)).kind, .sd1)
        let sd2 = ModelFamily.detect(shapes: sd(ctx: 1024, cond: openclip))
        XCTAssertEqual(sd2.kind, .sd2)
        XCTAssertTrue(sd2.description.contains("v-prediction"))
        XCTAssertEqual(ModelFamily.detect(shapes: sd(ctx: 768, inCh: 9, cond: clip)).kind, .sdInpainting)
        XCTAssertEqual(ModelFamily.detect(shapes: sd(ctx: 1280, cond: ["cond_stage_model.transformer.token_emb.weight": [30522, 1280]])).kind, .ldmText)
        XCTAssertEqual(ModelFamily.detect(shapes: sd(ctx: 512, cond: ["cond_stage_model.embedding.weight": [1001, 512]])).kind, .ldmClass)
        XCTAssertEqual(ModelFamily.detect(shapes: [unet + "input_blocks.0.0.weight": [224, 3, 3, 3]]).kind, .ldmUnconditional)
        XCTAssertEqual(ModelFamily.detect(shapes: [unet + "input_blocks.0.0.weight": [160, 6, 3, 3]]).kind, .ldmSuperResolution)
        XCTAssertEqual(ModelFamily.detect(shapes: ["encoder.down.0.block.0.conv1.weight": [128, 128, 3, 3],
                                                   "quant_conv.weight": [8, 8, 1, 1]]).kind, .autoencoderKL)
        XCTAssertEqual(ModelFamily.detect(shapes: ["encoder.down.0.block.0.conv1.weight": [128, 128, 3, 3],
                                                   "quantize.embedding.weight": [8192, 3]]).kind, .autoencoderVQ)
        XCTAssertEqual(ModelFamily.detect(shapes: ["x": [1]]).kind, .unknown)
    }

    func testReport() throws {
        let r = try CheckpointReport.make(path: Fixtures.url("lightning.ckpt").path)
        XCTAssertTrue(r.contains("format: torch zip"), r)
        XCTAssertTrue(r.contains("model.lin.weight_t F32 [4, 3] (strided view)"), r)
        XCTAssertTrue(r.contains("EMA: 1 parameters"), r)
        XCTAssertTrue(r.contains("  model: 20 tensors"), r)
        XCTAssertTrue(r.contains("metadata global_step: 5"), r)
        let d = try CheckpointReport.make(path: Fixtures.url("diffusers").path)
        XCTAssertTrue(d.contains("family: diffusers pipeline (StableDiffusionPipeline; cross-attention 768"), d)
        XCTAssertTrue(d.contains("  unet: 2 tensors, 296 parameters"), d)
    }
}
