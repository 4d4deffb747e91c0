// Few-step samplers for consistency-distilled models. Follows diffusers 0.42 LCMScheduler (schedulers/scheduling_lcm.py;
// Luo et al. 2023, "Latent Consistency Models") and TCDScheduler (schedulers/scheduling_tcd.py; Zheng et al. 2024,
// "Trajectory Consistency Distillation"): timesteps taken from the `original_inference_steps`-point distillation grid,
// LCM's boundary-condition scalings c_skip / c_out, denoise and re-noise with the pipeline's generator.
import Foundation
import TensorCore

/// The distillation-grid timesteps and class defaults shared by LCMScheduler and TCDScheduler.
public class ConsistencyScheduler: AlphaScheduler {
    /// `original_inference_steps`: the grid the model was distilled on (default 50).
    public let originalSteps: Int
    let finalAlphaCumprod: Double

    init(config: SchedulerConfig, name: String) throws {
        // LCMScheduler / TCDScheduler __init__ defaults for keys absent from the json (from_config semantics).
        var c = config
        if c.betaStart == nil { c.betaStart = 0.00085 }
        if c.betaEnd == nil { c.betaEnd = 0.012 }
        if c.betaSchedule == nil { c.betaSchedule = "scaled_linear" }
        originalSteps = c.originalInferenceSteps ?? 50
        let n = c.numTrainTimesteps ?? 1000
        guard originalSteps >= 1, originalSteps <= n else {
            throw DiffusionError.invalidConfig("\(name): original_inference_steps \(originalSteps) must be in 1...\(n) (num_train_timesteps)")
        }
        let s = try c.noiseSchedule()
        finalAlphaCumprod = (c.setAlphaToOne ?? true) ? 1 : s.alphasCumprod[0]
        try super.init(config: c, defaultSpacing: .leading)
    }

    /// set_timesteps(num_inference_steps): the grid (1...original) * k - 1, k = train // original, reversed, then
    /// `steps` entries at floor(linspace(0, len, steps, endpoint=False)).
    public override func setTimesteps(_ steps: Int) throws { try setTimesteps(steps, strength: 1) }

    /// set_timesteps(num_inference_steps, strength=...), as LatentConsistencyModelImg2ImgPipeline calls it: the grid
    /// keeps its first int(original * strength) points (the least noisy), and all `steps` are taken from those, so an
    /// img2img run still takes `steps` steps (StableDiffusionImg2ImgPipeline instead cuts the full schedule with
    /// get_timesteps). Refused, as diffusers does, when fewer grid points than steps remain.
    public func setTimesteps(_ steps: Int, strength: Double) throws {
        try validate(steps: steps)
        guard strength.isFinite, strength > 0, strength <= 1 else {
            throw DiffusionError.invalidArgument("strength must be in (0, 1], got \(strength)")
        }
        guard steps <= originalSteps else {
            throw DiffusionError.invalidArgument("num_inference_steps \(steps) cannot be larger than original_inference_steps \(originalSteps)")
        }
        let k = schedule.count / originalSteps
        let points = Int(Double(originalSteps) * strength)
        guard points >= steps else {
            throw DiffusionError.invalidArgument("strength \(strength) leaves int(original_inference_steps \(originalSteps) x strength) = \(points) "
                + "points of the distillation grid for \(steps) steps: lower the steps to at most \(points) or raise the strength to at least "
                + "\(Double(steps) / Double(originalSteps))")
        }
        let grid = (1...points).reversed().map { $0 * k - 1 }
        let stride = Double(grid.count) / Double(steps)
        setSchedule((0..<steps).map { Double(grid[Int((Double($0) * stride).rounded(.down))]) }, steps: steps)
    }

    func alphaPrev(_ t: Double) -> Double { t >= 0 ? alpha(t) : finalAlphaCumprod }

    func clipIfNeeded(_ x: Tensor) -> Tensor { config.clipSample ?? false ? clip(x) : x }
}

public final class LCMScheduler: ConsistencyScheduler, Scheduler {
    /// `timestep_scaling` of the boundary condition (default 10).
    public let timestepScaling: Double
    /// The last step's `denoised` output (LatentConsistencyModelPipeline decodes it; it equals the final sample).
    public private(set) var denoised: Tensor?

    public init(config: SchedulerConfig) throws {
        timestepScaling = config.timestepScaling ?? 10
        try super.init(config: config, name: "LCMScheduler")
    }

    /// get_scalings_for_boundary_condition_discrete, sigma_data = 0.5.
    public func boundaryScalings(_ t: Double) -> (cSkip: Double, cOut: Double) {
        let st = t * timestepScaling
        let sd2 = 0.25
        return (sd2 / (st * st + sd2), st / (st * st + sd2).squareRoot())
    }

    public override func setTimesteps(_ steps: Int, strength: Double) throws {
        try super.setTimesteps(steps, strength: strength)
        denoised = nil
    }

    public func step(modelOutput: Tensor, stepIndex: Int, sample: Tensor, noise: RandomSource?) throws -> Tensor {
        try checkIndex(stepIndex, timesteps.count)
        try checkSizes(modelOutput, sample, "LCMScheduler.step")
        let t = timesteps[stepIndex]
        let prevT = stepIndex + 1 < timesteps.count ? timesteps[stepIndex + 1] : t
        let aT = alpha(t)
        let aPrev = alphaPrev(prevT)
        let (cSkip, cOut) = boundaryScalings(t)
        let x0 = clipIfNeeded(predictX0(prediction, modelOutput: modelOutput, sample: sample, alphaProd: aT).x0)
        let d = lincomb(cOut, x0, cSkip, sample)
        denoised = d
        guard stepIndex != numInferenceSteps - 1 else { return d }
        let z = noiseLike(sample, try requireNoise(noise, "LCMScheduler"))
        return lincomb(aPrev.squareRoot(), d, (1 - aPrev).squareRoot(), z)
    }
}

public final class TCDScheduler: ConsistencyScheduler, Scheduler {
    /// The step's `eta` (the paper's gamma): 0 deterministic, 1 fully stochastic. diffusers' pipelines pass their
    /// `eta` argument here (TCD's own default is 0.3; StableDiffusionPipeline's is 0).
    public let gamma: Double

    public init(config: SchedulerConfig, gamma: Double = 0.3) throws {
        guard gamma >= 0, gamma <= 1 else { throw DiffusionError.invalidArgument("TCD gamma (eta) must be in [0, 1], got \(gamma)") }
        self.gamma = gamma
        try super.init(config: config, name: "TCDScheduler")
    }

    public func step(modelOutput: Tensor, stepIndex: Int, sample: Tensor, noise: RandomSource?) throws -> Tensor {
        try checkIndex(stepIndex, timesteps.count)
        try checkSizes(modelOutput, sample, "TCDScheduler.step")
        let t = timesteps[stepIndex]
        let prevT = stepIndex + 1 < timesteps.count ? timesteps[stepIndex + 1] : 0
        // timestep_s = floor((1 - eta) * prev_timestep), a float32 tensor product in torch
        let s = Double((Float(1 - gamma) * Float(prevT)).rounded(.down))
        let aT = alpha(t)
        let aPrev = alphaPrev(prevT)
        let aS = alpha(s)
        let (x0, eps) = predictX0(prediction, modelOutput: modelOutput, sample: sample, alphaProd: aT)
        let noised = lincomb(aS.squareRoot(), x0, (1 - aS).squareRoot(), eps)
        guard gamma > 0, stepIndex != numInferenceSteps - 1 else { return noised }
        let z = noiseLike(sample, try requireNoise(noise, "TCDScheduler"))
        return lincomb((aPrev / aS).squareRoot(), noised, (1 - aPrev / aS).squareRoot(), z)
    }
}
