// The generation commands' few-step options end to end through the built `ldm` executable: LCM defaults for a
// LatentConsistencyModelPipeline folder (Fixtures/tiny-lcm; sampler lcm, 4 steps, cfg 8.5, announced on stderr) and
// --timestep-spacing, against the diffusers images of tools/fixtures/few_step_pipelines.py; --lora, --lora-dir and
// <lora:NAME:WEIGHT> prompt tags against the diffusers LoRA images of tools/fixtures/lora.py.
import Checkpoints
import Foundation
import Imaging
import Pipelines
import XCTest

final class FewStepCLITests: LDMCommandTestCase {
    /// The 8-bit pixels of a diffusers reference image of few_step_outputs.safetensors.
    func reference(_ name: String) throws -> [UInt8] {
        let file = try CheckpointFile.open(fixtures.appendingPathComponent("few_step_outputs.safetensors"))
        return try XCTUnwrap(file.tensors[name]).floats().map { UInt8((min(max($0, 0), 1) * 255).rounded(.toNearestOrEven)) }
    }

    func testLCMModelDefaults() throws {
        let out = try tempDir().appendingPathComponent("lcm.png")
        let (s, e) = try run(["txt2img", "--model", fixtures.appendingPathComponent("tiny-lcm").path, "--prompt", "the dog",
                              "--seed", "60", "--width", "16", "--height", "16", "--output", out.path])
        XCTAssertEqual(s, 0, e)
        XCTAssertTrue(e.contains("latent consistency model: using sampler lcm, 4 steps, cfg scale 8.5"), e)
        let p = try parameters(out)
        XCTAssertEqual(p.steps, 4); XCTAssertEqual(p.sampler, "LCM"); XCTAssertEqual(p.cfgScale, 8.5)
        XCTAssertGreaterThanOrEqual(psnr(try ImageIO.loadRGB(path: out.path).pixels, try reference("lcm_pipeline_4_8.5")), 45)
        // explicit values are kept and not announced
        let (s2, e2) = try run(["txt2img", "--model", fixtures.appendingPathComponent("tiny-lcm").path, "--prompt", "the dog",
                                "--seed", "61", "--steps", "2", "--cfg-scale", "3", "--sampler", "lcm", "--output", out.path, "--overwrite"])
        XCTAssertEqual(s2, 0, e2)
        XCTAssertFalse(e2.contains("latent consistency model: using"), e2)
        XCTAssertEqual(try parameters(out).steps, 2)
    }

    func testTimestepSpacingOption() throws {
        let dir = try tempDir()
        let out = dir.appendingPathComponent("turbo.png")
        let (s, e) = try run(["txt2img", "--model", fixtures.appendingPathComponent("tiny-sd").path, "--prompt", "a cat",
                              "--seed", "43", "--steps", "1", "--sampler", "euler-a", "--cfg-scale", "0",
                              "--timestep-spacing", "trailing", "--output", out.path, "--quiet"])
        XCTAssertEqual(s, 0, e)
        XCTAssertEqual(try parameters(out).extraValue("Timestep spacing"), "trailing")
        XCTAssertGreaterThanOrEqual(psnr(try ImageIO.loadRGB(path: out.path).pixels, try reference("sd_euler-a_trailing_1_cfg0")), 45)
        let bad = dir.appendingPathComponent("bad.png")
        for (args, message) in [(["--timestep-spacing", "sideways"], "timestep spacing must be one of"),
                                (["--timestep-spacing", "trailing", "--sampler", "lcm"], "does not apply to LCMScheduler")] {
            let (status, err) = try run(["txt2img", "--model", fixtures.appendingPathComponent("tiny-sd").path, "--prompt", "a",
                                         "--steps", "1", "--output", bad.path, "--quiet"] + args)
            XCTAssertNotEqual(status, 0, "\(args)")
            XCTAssertTrue(err.contains(message), "\(args): \(err)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: bad.path))
        }
    }

    func testLoRAOptionsAndPromptTags() throws {
        let dir = try tempDir(), loraDir = fixtures.appendingPathComponent("lora")
        let sd = fixtures.appendingPathComponent("tiny-sd").path
        let common = ["--model", sd, "--sampler", "euler-a", "--steps", "3", "--cfg-scale", "7.5", "--seed", "70",
                      "--width", "16", "--height", "16", "--quiet"]
        func reference(_ name: String) throws -> [UInt8] {
            let f = try CheckpointFile.open(loraDir.appendingPathComponent("outputs.safetensors"))
            return try XCTUnwrap(f.tensors[name]).floats().map { UInt8((min(max($0, 0), 1) * 255).rounded(.toNearestOrEven)) }
        }
        let a = dir.appendingPathComponent("a.png")
        let (s1, e1) = try run(["txt2img", "--prompt", "a cat", "--lora", loraDir.appendingPathComponent("peft.safetensors").path + ":0.7",
                                "--output", a.path] + common)
        XCTAssertEqual(s1, 0, e1)
        XCTAssertGreaterThanOrEqual(psnr(try ImageIO.loadRGB(path: a.path).pixels, try reference("peft_fused")), 45)
        XCTAssertEqual(try parameters(a).extraValue("Lora hashes"), "peft: bee6ed689f55")

        let b = dir.appendingPathComponent("b.png")
        let (s2, e2) = try run(["txt2img", "--prompt", "a cat<lora:kohya:0.7>", "--lora-dir", loraDir.path, "--output", b.path] + common)
        XCTAssertEqual(s2, 0, e2)
        XCTAssertGreaterThanOrEqual(psnr(try ImageIO.loadRGB(path: b.path).pixels, try reference("kohya_fused")), 45)
        let pb = try parameters(b)
        XCTAssertEqual(pb.prompt, "a cat<lora:kohya:0.7>", "the web UI records the prompt with its tags")
        XCTAssertEqual(pb.extraValue("Lora hashes"), "kohya: f7ba08452bf9")

        let bad = dir.appendingPathComponent("bad.png")
        for (args, message) in [(["--prompt", "a", "--lora", dir.appendingPathComponent("none.safetensors").path], "does not exist"),
                                (["--prompt", "a <lora:kohya:1>"], "no --lora-dir"),
                                (["--prompt", "a <lora:absent:1>", "--lora-dir", loraDir.path], "LoRA 'absent' not found"),
                                (["--prompt", "a <lora:kohya:much>", "--lora-dir", loraDir.path], "expected <lora:NAME:WEIGHT>"),
                                (["--prompt", "a", "--lora", loraDir.appendingPathComponent("outputs.safetensors").path], "no known LoRA format")] {
            let (status, err) = try run(["txt2img", "--model", sd, "--steps", "1", "--output", bad.path, "--quiet"] + args)
            XCTAssertNotEqual(status, 0, "\(args)")
            XCTAssertTrue(err.contains(message), "\(args): \(err)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: bad.path))
        }

        // a LoRA named *lcm* is an LCM-LoRA: sampler lcm, 4 steps, cfg 1 unless given
        let lcm = dir.appendingPathComponent("lcm-lora-sd15.safetensors")
        try FileManager.default.copyItem(at: loraDir.appendingPathComponent("kohya.safetensors"), to: lcm)
        let c = dir.appendingPathComponent("c.png")
        let (s3, e3) = try run(["txt2img", "--model", sd, "--prompt", "a cat", "--seed", "1", "--lora", lcm.path, "--output", c.path])
        XCTAssertEqual(s3, 0, e3)
        XCTAssertTrue(e3.contains("LCM-LoRA: using sampler lcm, 4 steps, cfg scale 1.0"), e3)
        let pc = try parameters(c)
        XCTAssertEqual(pc.steps, 4); XCTAssertEqual(pc.sampler, "LCM"); XCTAssertEqual(pc.cfgScale, 1)
    }
}
