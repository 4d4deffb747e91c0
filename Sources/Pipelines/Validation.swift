// Input checks shared by the pipelines and the `ldm` generation commands, made before any model is loaded
// (diffusers' StableDiffusionPipeline.check_inputs / StableDiffusionImg2ImgPipeline.check_inputs). File checks are
// the command line's (ldm FileChecks.swift).
import Foundation

public enum Validation {
    /// Image sizes: positive multiples of `multiple` (8 for Stable Diffusion: the VAE factor and the UNet's /8 grid).
    public static func checkSize(width: Int, height: Int, multiple: Int = 8) throws {
        for (name, v) in [("width", width), ("height", height)] {
            guard v > 0 else { throw PipelineError.invalidArgument(name: name, value: "\(v)", why: "must be > 0, got \(v)") }
            guard v % multiple == 0 else { throw PipelineError.invalidArgument(name: name, value: "\(v)", why: "must be a multiple of \(multiple), got \(v)") }
            guard v <= 16384 else { throw PipelineError.invalidArgument(name: name, value: "\(v)", why: "\(v) is larger than 16384") }
        }
    }

    public static func checkSteps(_ steps: Int) throws {
        guard steps >= 1 else { throw PipelineError.invalidArgument(name: "steps", value: "\(steps)", why: "must be >= 1, got \(steps)") }
        guard steps <= 1000 else { throw PipelineError.invalidArgument(name: "steps", value: "\(steps)", why: "must be <= 1000 (num_train_timesteps), got \(steps)") }
    }

    public static func checkStrength(_ s: Double) throws {
        guard s.isFinite, s >= 0, s <= 1 else { throw PipelineError.invalidArgument(name: "strength", value: "\(s)", why: "must be in [0, 1], got \(s)") }
    }

    public static func checkGuidance(_ g: Double) throws {
        guard g.isFinite else { throw PipelineError.invalidArgument(name: "cfg scale", value: "\(g)", why: "must be a finite number, got \(g)") }
    }

    public static func checkEta(_ eta: Double) throws {
        guard eta.isFinite, eta >= 0 else { throw PipelineError.invalidArgument(name: "eta", value: "\(eta)", why: "must be a finite number >= 0, got \(eta)") }
    }

    public static func checkBatchSize(_ n: Int) throws {
        guard n >= 1, n <= 64 else { throw PipelineError.invalidArgument(name: "batch size", value: "\(n)", why: "must be in 1...64, got \(n)") }
    }

    /// img2img: diffusers raises when strength leaves no denoising step.
    public static func checkImg2ImgSteps(steps: Int, strength: Double) throws {
        guard min(Int(Double(steps) * strength), steps) >= 1 else {
            throw PipelineError.invalidArgument(name: "strength", value: "\(strength)",
                                                why: "\(strength) with \(steps) steps leaves no denoising step (steps * strength must be >= 1)")
        }
    }

    public static func checkMaskSize(image: (width: Int, height: Int), mask: (width: Int, height: Int)) throws {
        guard image == mask else {
            throw PipelineError.maskSizeMismatch(maskWidth: mask.width, maskHeight: mask.height, imageWidth: image.width, imageHeight: image.height)
        }
    }
}
