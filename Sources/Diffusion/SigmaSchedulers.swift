// Matches diffusers EulerDiscreteScheduler (scheduling_euler_discrete.py), EulerAncestralDiscreteScheduler
// (scheduling_euler_ancestral_discrete.py), HeunDiscreteScheduler (scheduling_heun_discrete.py) and
// LMSDiscreteScheduler (scheduling_lms_discrete.py): k-diffusion style samplers over sigma = sqrt((1 - a) / a).
import Foundation
import TensorCore

/// Shared set_timesteps / scale_model_input / add_noise of the sigma schedulers.
public class SigmaScheduler {
    public let config: SchedulerConfig
    public let schedule: NoiseSchedule
    public let prediction: PredictionType
    public let spacing: TimestepSpacing
    public let useKarrasSigmas: Bool
    /// sigma per train timestep (float32 values, like the torch tensor diffusers derives them from).
    public let trainSigmas: [Double]
    let logSigmas: [Double]
    /// The sigma of each entry of `timesteps`, followed by the final sigma.
    public internal(set) var sigmas: [Double] = []
    public internal(set) var timesteps: [Double] = []
    public internal(set) var numInferenceSteps = 0
    var beginIndex: Int?
    public var order: Int { 1 }

    init(config: SchedulerConfig, karras: Bool, rescaleLastToMin: Bool) throws {
        if let ty = config.timestepType, ty != "discrete" { throw DiffusionError.unsupported("timestep_type '\(ty)'") }
        if let it = config.interpolationType, it != "linear" { throw DiffusionError.unsupported("interpolation_type '\(it)'") }
        if config.useExponentialSigmas == true || config.useBetaSigmas == true {
            throw DiffusionError.unsupported("exponential / beta sigmas")
        }
        self.config = config
        var s = try config.noiseSchedule(allowRescale: rescaleLastToMin)
        if rescaleLastToMin && config.rescaleBetasZeroSnr == true {
            // diffusers: alphas_cumprod[-1] = 2 ** -24 so the last sigma stays finite
            var ac = s.alphasCumprod
            ac[ac.count - 1] = pow(2, -24)
            s = NoiseSchedule(betas: s.betas, alphasCumprod: ac)
        }
        schedule = s
        prediction = try config.resolvedPrediction()
        spacing = try config.resolvedSpacing(default: .linspace)
        useKarrasSigmas = karras
        trainSigmas = s.sigmasFloat32
        logSigmas = trainSigmas.map { Double(logf(Float($0))) }
    }

    /// The Euler-family set_timesteps: float32 timesteps, interpolated (or Karras) sigmas, final sigma 0.
    func makeSchedule(_ steps: Int) throws -> (timesteps: [Double], sigmas: [Double]) {
        guard steps >= 1, steps <= schedule.count else {
            throw DiffusionError.invalidArgument("num_inference_steps must be in 1...\(schedule.count), got \(steps)")
        }
        var ts = Spacing.timesteps(spacing, steps: steps, trainSteps: schedule.count,
                                   stepsOffset: config.stepsOffset ?? 0, linspaceFloat32: true)
        var sig = ts.map { Spacing.interp($0, trainSigmas) }
        if useKarrasSigmas {
            sig = Spacing.karras(sigmaMin: config.sigmaMin ?? sig[sig.count - 1], sigmaMax: config.sigmaMax ?? sig[0], steps: steps)
            ts = sig.map { Spacing.sigmaToT($0, logSigmas: logSigmas) }
        }
        return (ts.map { Double(Float($0)) }, (sig + [finalSigma]).map { Double(Float($0)) })
    }

    var finalSigma: Double { config.finalSigmasType == "sigma_min" ? trainSigmas[0] : 0 }

    public var initNoiseSigma: Double {
        let m = sigmas.max() ?? 1
        return spacing == .leading ? (m * m + 1).squareRoot() : m
    }

    public func scaleModelInput(_ x: Tensor, stepIndex: Int) -> Tensor {
        guard stepIndex >= 0, stepIndex < sigmas.count else { return x }
        let s = sigmas[stepIndex]
        return scaled(x, 1 / (s * s + 1).squareRoot())
    }

    public func setBeginIndex(_ index: Int) { beginIndex = index }

    /// add_noise: x0 + sigma * noise at the sigma of `timesteps[stepIndex]`.
    public func addNoise(original: Tensor, noise: Tensor, stepIndex: Int) -> Tensor {
        lincomb(1, original, sigmas[min(max(stepIndex, 0), sigmas.count - 1)], noise)
    }

    /// pred_original_sample of the Euler-family step.
    func predictX0(_ m: Tensor, _ x: Tensor, sigma: Double) -> Tensor {
        switch prediction {
        case .epsilon: return lincomb(1, x, -sigma, m)
        case .vPrediction: return lincomb(-sigma / (sigma * sigma + 1).squareRoot(), m, 1 / (sigma * sigma + 1), x)
        case .sample: return m
        }
    }
}

extension NoiseSchedule {
    init(betas: [Double], alphasCumprod: [Double]) {
        self.betas = betas
        self.alphasCumprod = alphasCumprod
    }
}

public final class EulerDiscreteScheduler: SigmaScheduler, Scheduler {
    public init(config: SchedulerConfig) throws {
        try super.init(config: config, karras: config.useKarrasSigmas ?? false, rescaleLastToMin: true)
    }

    public func setTimesteps(_ steps: Int) throws {
        (timesteps, sigmas) = try makeSchedule(steps)
        numInferenceSteps = steps
    }

    public func step(modelOutput: Tensor, stepIndex: Int, sample: Tensor, noise: RandomSource?) throws -> Tensor {
        try checkIndex(stepIndex, timesteps.count)
        try checkSizes(modelOutput, sample, "EulerDiscreteScheduler.step")
        let sigma = sigmas[stepIndex]
        let x0 = predictX0(modelOutput, sample, sigma: sigma)
        let dt = sigmas[stepIndex + 1] - sigma
        // prev = x + (x - x0) / sigma * dt
        return lincomb(1 + dt / sigma, sample, -dt / sigma, x0)
    }
}

public final class EulerAncestralDiscreteScheduler: SigmaScheduler, Scheduler {
    public init(config: SchedulerConfig) throws {
        if config.predictionType == PredictionType.sample.rawValue {
            throw DiffusionError.unsupported("EulerAncestralDiscreteScheduler prediction_type 'sample'")
        }
        try super.init(config: config, karras: false, rescaleLastToMin: true)
    }

    public func setTimesteps(_ steps: Int) throws {
        (timesteps, sigmas) = try makeSchedule(steps)
        numInferenceSteps = steps
    }

    public func step(modelOutput: Tensor, stepIndex: Int, sample: Tensor, noise: RandomSource?) throws -> Tensor {
        try checkIndex(stepIndex, timesteps.count)
        try checkSizes(modelOutput, sample, "EulerAncestralDiscreteScheduler.step")
        let src = try requireNoise(noise, "EulerAncestralDiscreteScheduler")
        let sigma = sigmas[stepIndex]
        let sigmaTo = sigmas[stepIndex + 1]
        let x0 = predictX0(modelOutput, sample, sigma: sigma)
        let sigmaUp = (sigmaTo * sigmaTo * (sigma * sigma - sigmaTo * sigmaTo) / (sigma * sigma)).squareRoot()
        let sigmaDown = max(sigmaTo * sigmaTo - sigmaUp * sigmaUp, 0).squareRoot()
        let dt = sigmaDown - sigma
        let prev = lincomb(1 + dt / sigma, sample, -dt / sigma, x0)
        return lincomb(1, prev, sigmaUp, noiseLike(sample, src))
    }
}

public final class HeunDiscreteScheduler: SigmaScheduler, Scheduler {
    private var prevDerivative: Tensor?
    private var dt: Double?
    private var firstSample: Tensor?
    public override var order: Int { 2 }

    public init(config: SchedulerConfig) throws {
        var c = config
        c.rescaleBetasZeroSnr = nil // not a HeunDiscreteScheduler option (diffusers ignores the key)
        try super.init(config: c, karras: config.useKarrasSigmas ?? false, rescaleLastToMin: false)
    }

    public func setTimesteps(_ steps: Int) throws {
        let (ts, sig) = try makeSchedule(steps)
        // sigmas = [s0, s1, s1, ..., s_{n-1}, s_{n-1}, 0]; timesteps = [t0, t1, t1, ..., t_{n-1}, t_{n-1}]
        sigmas = [sig[0]] + sig.dropFirst().dropLast().flatMap { [$0, $0] } + [sig[sig.count - 1]]
        timesteps = [ts[0]] + ts.dropFirst().flatMap { [$0, $0] }
        numInferenceSteps = steps
        prevDerivative = nil
        dt = nil
        firstSample = nil
    }

    public func step(modelOutput: Tensor, stepIndex: Int, sample: Tensor, noise: RandomSource?) throws -> Tensor {
        try checkIndex(stepIndex, timesteps.count)
        try checkSizes(modelOutput, sample, "HeunDiscreteScheduler.step")
        if let d0 = prevDerivative, let h = dt, let x = firstSample {
            // second (corrector) evaluation at sigma_next
            let sigmaNext = sigmas[stepIndex]
            var x0 = predictX0(modelOutput, sample, sigma: sigmaNext)
            if config.clipSample == true { x0 = clip(x0) }
            let d1 = lincomb(1 / sigmaNext, sample, -1 / sigmaNext, x0)
            prevDerivative = nil
            dt = nil
            firstSample = nil
            return combine([1, 0.5 * h, 0.5 * h], [x, d0, d1])
        }
        let sigma = sigmas[stepIndex]
        let sigmaNext = sigmas[stepIndex + 1]
        var x0 = predictX0(modelOutput, sample, sigma: sigma)
        if config.clipSample == true { x0 = clip(x0) }
        let d = lincomb(1 / sigma, sample, -1 / sigma, x0)
        let h = sigmaNext - sigma
        prevDerivative = d
        dt = h
        firstSample = sample
        return lincomb(1, sample, h, d)
    }

    func clip(_ x: Tensor) -> Tensor { clamped(x, config.clipSampleRange ?? 1) }
}

public final class LMSDiscreteScheduler: SigmaScheduler, Scheduler {
    private var derivatives: [Tensor] = []
    /// diffusers' LMS step `order` argument (default 4).
    public let lmsOrder: Int

    public init(config: SchedulerConfig, lmsOrder: Int = 4) throws {
        // the coefficients' quadrature is exact for Lagrange polynomials of degree <= 3
        guard (1...4).contains(lmsOrder) else { throw DiffusionError.invalidArgument("LMS order must be 1...4, got \(lmsOrder)") }
        self.lmsOrder = lmsOrder
        var c = config
        c.rescaleBetasZeroSnr = nil // not an LMSDiscreteScheduler option (diffusers ignores the key)
        try super.init(config: c, karras: config.useKarrasSigmas ?? false, rescaleLastToMin: false)
    }

    public func setTimesteps(_ steps: Int) throws {
        (timesteps, sigmas) = try makeSchedule(steps)
        numInferenceSteps = steps
        derivatives = []
    }

    /// get_lms_coefficient: the integral over [sigma_t, sigma_{t+1}] of the Lagrange basis polynomial of
    /// `current` through sigmas[t - k], k < order. The polynomial has degree <= 3, so 4-point Gauss-Legendre is
    /// exact (diffusers uses scipy quad, which agrees to rounding).
    func lmsCoefficient(order: Int, t: Int, current: Int) -> Double {
        func basis(_ tau: Double) -> Double {
            var prod = 1.0
            for k in 0..<order where k != current {
                prod *= (tau - sigmas[t - k]) / (sigmas[t - current] - sigmas[t - k])
            }
            return prod
        }
        let a = sigmas[t]
        let b = sigmas[t + 1]
        let nodes = [(-0.8611363115940526, 0.3478548451374538), (-0.3399810435848563, 0.6521451548625461),
                     (0.3399810435848563, 0.6521451548625461), (0.8611363115940526, 0.3478548451374538)]
        let half = (b - a) / 2
        let mid = (a + b) / 2
        return half * nodes.reduce(0) { $0 + $1.1 * basis(mid + half * $1.0) }
    }

    public func step(modelOutput: Tensor, stepIndex: Int, sample: Tensor, noise: RandomSource?) throws -> Tensor {
        try checkIndex(stepIndex, timesteps.count)
        try checkSizes(modelOutput, sample, "LMSDiscreteScheduler.step")
        let sigma = sigmas[stepIndex]
        let x0 = predictX0(modelOutput, sample, sigma: sigma)
        derivatives.append(lincomb(1 / sigma, sample, -1 / sigma, x0))
        if derivatives.count > lmsOrder { derivatives.removeFirst() }
        let order = min(stepIndex + 1, lmsOrder)
        let coeffs = (0..<order).map { lmsCoefficient(order: order, t: stepIndex, current: $0) }
        let used = zip(coeffs, derivatives.reversed()).map { $0 }
        return combine([1] + used.map { $0.0 }, [sample] + used.map { $0.1 })
    }
}
