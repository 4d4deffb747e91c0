// `ldm bench lcm`: seconds per 512x512 image for the few-step recipe (issue 18): an SD-1.5-shaped UNet sampled with
// diffusers' LCMScheduler for 4 steps at guidance 1 (the LCM-LoRA recipe: one UNet pass per step, batch 1) and the SD
// VAE decode, against diffusers doing the same (tools/bench/torch_models.py part sd15-lcm4) in the same run.
// Random weights (the default SD-1.5 / SD VAE configs); the text encoder (one pass per image, ~1% of the time) is
// left out on both sides.
import ArgumentParser
import Autoencoders
import Diffusion
import Foundation
import Pipelines
import TensorCore
import UNetModels

struct BenchLCM: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "lcm", abstract: "SD-1.5 UNet + LCM 4 steps + VAE decode, one 512x512 image (random weights), against diffusers.")
    @Option(help: "Repetitions (median, after one warm-up image).") var reps = 1
    func validate() throws { guard reps >= 1 else { throw ValidationError("--reps must be at least 1") } }
    func run() throws {
        try BenchModels.run(parts: [("SD-1.5 UNet + LCM 4 steps + VAE decode, 512x512, s/image", "sd15-lcm4", "sd15-lcm4")], reps: reps)
    }

    /// The measured side of part sd15-lcm4 (run by `bench part`).
    static func ours(reps: Int) throws -> Double {
        let g = TorchGenerator(seed: 0)
        let unet = try UNet2DConditionModel.random(config: .stableDiffusion15, seed: 0)
        let vae = AutoencoderKL.randomStableDiffusion(seed: 0)
        let context = Tensor.randn([1, 77, 768], generator: g)
        var failure: Error?
        let seconds = BenchSupport.median(reps) {
            do {
                let s = try LCMScheduler(config: ModelBundle.stableDiffusionScheduler)
                try s.setTimesteps(4)
                let shape = [1, 4, 64, 64]
                var x = Tensor.randn(shape, generator: g)
                for i in s.timesteps.indices {
                    let eps = try unet(sample: x, timestep: Float(s.timesteps[i]), encoderHiddenStates: context)
                    x = try s.step(modelOutput: eps, stepIndex: i, sample: x, noise: g)
                }
                _ = try vae.decodeScaled(x, tiled: .never)
            } catch { failure = error }
        }
        if let failure { throw failure }
        return seconds
    }
}
