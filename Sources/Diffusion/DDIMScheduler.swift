// Matches diffusers DDPMScheduler (schedulers/scheduling_ddpm.py) and DDIMScheduler (schedulers/scheduling_ddim.py).
import Foundation
import TensorCore

/// Base for schedulers indexed by integer train timesteps through alphas_cumprod.
public class AlphaScheduler {
    public let config: SchedulerConfig
    public let schedule: NoiseSchedule
    public let prediction: PredictionType
    public let spacing: TimestepSpacing
    public private(set) var timesteps: [Double] = []
    public private(set) var numInferenceSteps = 0
    public var order: Int { 1 }
    public var initNoiseSigma: Double { 1 }
    var beginIndex: Int?

    init(config: SchedulerConfig, defaultSpacing: TimestepSpacing) throws {
        self.config = config
        schedule = try config.noiseSchedule()
        prediction = try config.resolvedPrediction()
        spacing = try config.resolvedSpacing(default: defaultSpacing)
    }

    func alpha(_ t: Double) -> Double {
        let i = Int(t)
        return i >= 0 && i < schedule.count ? schedule.alphasCumprod[i] : 1
    }

    func setSchedule(_ t: [Double], steps: Int) {
        timesteps = t
        numInferenceSteps = steps
    }

    func validate(steps: Int) throws {
        guard steps >= 1, steps <= schedule.count else {
            throw DiffusionError.invalidArgument("num_inference_steps must be in 1...\(schedule.count), got \(steps)")
        }
    }

    public func setTimesteps(_ steps: Int) throws {
        try validate(steps: steps)
        setSchedule(Spacing.timesteps(spacing, steps: steps, trainSteps: schedule.count,
                                      stepsOffset: config.stepsOffset ?? 0, linspaceFloat32: false), steps: steps)
    }

    public func scaleModelInput(_ x: Tensor, stepIndex: Int) -> Tensor { x }

    public func setBeginIndex(_ index: Int) { beginIndex = index }

    /// add_noise: sqrt(a_t) x0 + sqrt(1 - a_t) noise at t = timesteps[stepIndex].
    public func addNoise(original: Tensor, noise: Tensor, stepIndex: Int) -> Tensor {
        let a = alpha(timesteps[min(max(stepIndex, 0), timesteps.count - 1)])
        return lincomb(a.squareRoot(), original, (1 - a).squareRoot(), noise)
    }

    func clip(_ x: Tensor) -> Tensor { clamped(x, config.clipSampleRange ?? 1) }
}

public final class DDPMScheduler: AlphaScheduler, Scheduler {
    public enum VarianceType: String {
        case fixedSmall = "fixed_small"
        case fixedSmallLog = "fixed_small_log"
        case fixedLarge = "fixed_large"
    }
    public let varianceType: VarianceType

    public init(config: SchedulerConfig) throws {
        let v = config.varianceType ?? "fixed_small"
        guard let vt = VarianceType(rawValue: v) else {
            throw DiffusionError.unsupported("DDPMScheduler variance_type '\(v)' (supported: fixed_small, fixed_small_log, fixed_large)")
        }
        varianceType = vt
        try super.init(config: config, defaultSpacing: .leading)
    }

    public func step(modelOutput: Tensor, stepIndex: Int, sample: Tensor, noise: RandomSource?) throws -> Tensor {
        try checkIndex(stepIndex, timesteps.count)
        try checkSizes(modelOutput, sample, "DDPMScheduler.step")
        let t = timesteps[stepIndex]
        let prevT = stepIndex + 1 < timesteps.count ? timesteps[stepIndex + 1] : -1
        let aT = alpha(t)
        let aPrev = prevT >= 0 ? alpha(prevT) : 1
        let bT = 1 - aT
        let bPrev = 1 - aPrev
        let curAlpha = aT / aPrev
        let curBeta = 1 - curAlpha
        var x0 = predictX0(prediction, modelOutput: modelOutput, sample: sample, alphaProd: aT).x0
        if config.clipSample ?? true { x0 = clip(x0) }
        var prev = lincomb(aPrev.squareRoot() * curBeta / bT, x0, curAlpha.squareRoot() * bPrev / bT, sample)
        if t > 0 {
            let z = noiseLike(sample, try requireNoise(noise, "DDPMScheduler"))
            let variance = max(bPrev / bT * curBeta, 1e-20)
            let s: Double
            switch varianceType {
            case .fixedSmall: s = variance.squareRoot()
            case .fixedSmallLog: s = exp(0.5 * log(variance))
            case .fixedLarge: s = curBeta.squareRoot()
            }
            prev = lincomb(1, prev, s, z)
        }
        return prev
    }
}

public final class DDIMScheduler: AlphaScheduler, Scheduler {
    /// DDIM eta (0 = deterministic DDIM, 1 = DDPM-like); passed to diffusers' step as `eta`.
    public let eta: Double
    /// diffusers' step argument `use_clipped_model_output`: recompute epsilon from the clipped x0.
    public let useClippedModelOutput: Bool
    let finalAlphaCumprod: Double

    public init(config: SchedulerConfig, eta: Double = 0, useClippedModelOutput: Bool = false) throws {
        self.eta = eta
        self.useClippedModelOutput = useClippedModelOutput
        let s = try config.noiseSchedule()
        finalAlphaCumprod = (config.setAlphaToOne ?? true) ? 1 : s.alphasCumprod[0]
        try super.init(config: config, defaultSpacing: .leading)
    }

    public func step(modelOutput: Tensor, stepIndex: Int, sample: Tensor, noise: RandomSource?) throws -> Tensor {
        try checkIndex(stepIndex, timesteps.count)
        try checkSizes(modelOutput, sample, "DDIMScheduler.step")
        let t = timesteps[stepIndex]
        let prevT = t - Double(schedule.count / numInferenceSteps)
        let aT = alpha(t)
        let aPrev = prevT >= 0 ? alpha(prevT) : finalAlphaCumprod
        let bT = 1 - aT
        var (x0, eps) = predictX0(prediction, modelOutput: modelOutput, sample: sample, alphaProd: aT)
        if config.clipSample ?? true { x0 = clip(x0) }
        let variance = (1 - aPrev) / bT * (1 - aT / aPrev)
        let std = eta * variance.squareRoot()
        if useClippedModelOutput { eps = lincomb(1 / bT.squareRoot(), sample, -aT.squareRoot() / bT.squareRoot(), x0) }
        var prev = lincomb(aPrev.squareRoot(), x0, max(1 - aPrev - std * std, 0).squareRoot(), eps)
        if eta > 0 {
            let z = noiseLike(sample, try requireNoise(noise, "DDIMScheduler with eta > 0"))
            prev = lincomb(1, prev, std, z)
        }
        return prev
    }
}
