// Matches diffusers PNDMScheduler with skip_prk_steps=True (schedulers/scheduling_pndm.py, = PLMS), and the CompVis
// samplers DDIMSampler / PLMSSampler (CompVis/stable-diffusion ldm/models/diffusion/ddim.py, plms.py, with
// make_ddim_timesteps / make_ddim_sampling_parameters from ldm/modules/diffusionmodules/util.py).
import TensorCore

public final class PNDMScheduler: AlphaScheduler, Scheduler {
    let finalAlphaCumprod: Double
    private var counter = 0
    private var ets: [Tensor] = []
    private var curSample: Tensor?

    public init(config: SchedulerConfig) throws {
        if config.skipPrkSteps == false {
            throw DiffusionError.unsupported("PNDMScheduler Runge-Kutta warm-up (skip_prk_steps=false); only PLMS is implemented")
        }
        if let p = config.predictionType, p == PredictionType.sample.rawValue {
            throw DiffusionError.unsupported("PNDMScheduler prediction_type 'sample'")
        }
        if config.rescaleBetasZeroSnr == true { throw DiffusionError.unsupported("rescale_betas_zero_snr for PNDMScheduler") }
        let s = try config.noiseSchedule()
        finalAlphaCumprod = (config.setAlphaToOne ?? false) ? 1 : s.alphasCumprod[0]
        try super.init(config: config, defaultSpacing: .leading)
    }

    public override func setTimesteps(_ steps: Int) throws {
        try validate(steps: steps)
        let n = schedule.count
        let offset = config.stepsOffset ?? 0
        var asc: [Double]
        switch spacing {
        case .linspace: asc = NoiseSchedule.linspace(0, Double(n - 1), steps).map(roundHalfEven)
        case .leading: asc = (0..<steps).map { Double($0 * (n / steps) + offset) }
        case .trailing:
            asc = Spacing.arangeDescending(from: Double(n), step: Double(n) / Double(steps)).map { roundHalfEven($0) - 1 }
            asc.reverse()
        }
        var plms = Array(asc.dropLast())
        if asc.count >= 2 { plms.append(asc[asc.count - 2]) }
        plms.append(asc[asc.count - 1])
        setSchedule(plms.reversed(), steps: steps)
        counter = 0
        ets = []
        curSample = nil
    }

    public func step(modelOutput: Tensor, stepIndex: Int, sample: Tensor, noise: RandomSource?) throws -> Tensor {
        try checkIndex(stepIndex, timesteps.count)
        try checkSizes(modelOutput, sample, "PNDMScheduler.step")
        let ratio = Double(schedule.count / numInferenceSteps)
        var timestep = timesteps[stepIndex]
        var prevTimestep = timestep - ratio
        if counter != 1 {
            ets = Array(ets.suffix(3))
            ets.append(modelOutput)
        } else {
            prevTimestep = timestep
            timestep += ratio
        }
        var out = modelOutput
        var x = sample
        if ets.count == 1 && counter == 0 {
            curSample = sample
        } else if ets.count == 1 && counter == 1, let cur = curSample {
            out = lincomb(0.5, modelOutput, 0.5, ets[0])
            x = cur
            curSample = nil
        } else if ets.count == 2 {
            out = lincomb(1.5, ets[1], -0.5, ets[0])
        } else if ets.count == 3 {
            out = combine([23.0 / 12, -16.0 / 12, 5.0 / 12], [ets[2], ets[1], ets[0]])
        } else if ets.count >= 4 {
            let e = Array(ets.suffix(4))
            out = combine([55.0 / 24, -59.0 / 24, 37.0 / 24, -9.0 / 24], [e[3], e[2], e[1], e[0]])
        }
        counter += 1
        return prevSample(x, timestep, prevTimestep, out)
    }

    /// PNDMScheduler._get_prev_sample (formula (9) of the PNDM paper).
    private func prevSample(_ x: Tensor, _ t: Double, _ prevT: Double, _ m: Tensor) -> Tensor {
        let aT = alpha(t)
        let aPrev = prevT >= 0 ? alpha(prevT) : finalAlphaCumprod
        let bT = 1 - aT
        let bPrev = 1 - aPrev
        let eps = prediction == .vPrediction ? lincomb(aT.squareRoot(), m, bT.squareRoot(), x) : m
        let sampleCoeff = (aPrev / aT).squareRoot()
        let denom = aT * bPrev.squareRoot() + (aT * bT * aPrev).squareRoot()
        return lincomb(sampleCoeff, x, -(aPrev - aT) / denom, eps)
    }
}

/// CompVis DDIMSampler / PLMSSampler. They differ from diffusers DDIM / PNDM in: the schedule is float64 then stored
/// as float32 (`NoiseSchedule(precision: .float64)`), timesteps are `make_ddim_timesteps(...) + 1` (uniform: range(0,
/// 1000, 1000 // S), which can give more than S steps; quad: (linspace(0, sqrt(800), S) ** 2).astype(int)), the last
/// step goes to alphas_cumprod[0] (never 1), and noise `sigma_t * randn(x.shape)` is drawn at every update, even when
/// eta == 0 (so the random stream advances like CompVis' global torch generator). PLMS evaluates the model twice in
/// its first step; here that second evaluation is an extra entry in `timesteps` (like diffusers PNDM).
public final class CompVisSampler: Scheduler {
    public enum Method: String, Sendable {
        case ddim, plms
    }
    public enum Discretization: String, Sendable {
        case uniform, quad
    }

    public let config: SchedulerConfig
    public let method: Method
    public let discretization: Discretization
    public let eta: Double
    public let prediction: PredictionType
    /// model.alphas_cumprod (float32 buffer of the float64 schedule).
    public let alphasCumprod: [Double]
    public private(set) var ddimTimesteps: [Int] = []
    public private(set) var timesteps: [Double] = []
    public private(set) var numInferenceSteps = 0
    public var order: Int { 1 }
    public var initNoiseSigma: Double { 1 }
    private var oldEps: [Tensor] = []
    private var firstEps: Tensor?
    private var firstSample: Tensor?
    private var plmsCalls = 0

    public init(config: SchedulerConfig, method: Method, discretization: Discretization = .uniform, eta: Double = 0) throws {
        if method == .plms && eta != 0 { throw DiffusionError.invalidArgument("ddim_eta must be 0 for PLMS") }
        self.config = config
        self.method = method
        self.discretization = discretization
        self.eta = eta
        prediction = try config.resolvedPrediction()
        if prediction == .sample { throw DiffusionError.unsupported("CompVis samplers with prediction_type 'sample'") }
        // CompVis "linear" is diffusers "scaled_linear"; CompVis "sqrt_linear" is diffusers "linear".
        let name = config.betaSchedule ?? "scaled_linear"
        let schedule: BetaSchedule
        switch name {
        case "scaled_linear": schedule = .scaledLinear
        case "linear", "sqrt_linear": schedule = .sqrtLinear
        case "cosine", "squaredcos_cap_v2": schedule = .cosine
        case "sqrt": schedule = .sqrt
        default: throw DiffusionError.invalidConfig("beta_schedule '\(name)' has no CompVis equivalent")
        }
        alphasCumprod = try NoiseSchedule(schedule: schedule, trainSteps: config.trainSteps,
                                          betaStart: config.betaStart ?? 0.00085, betaEnd: config.betaEnd ?? 0.012,
                                          precision: .float64).alphasCumprodFloat32
    }

    /// make_ddim_timesteps(method, S, num_ddpm_timesteps) (ascending, already + 1).
    public static func makeDDIMTimesteps(_ d: Discretization, steps: Int, trainSteps: Int) -> [Int] {
        switch d {
        case .uniform:
            let c = trainSteps / steps
            return Array(stride(from: 0, to: trainSteps, by: c)).map { $0 + 1 }
        case .quad:
            return NoiseSchedule.linspace(0, (Double(trainSteps) * 0.8).squareRoot(), steps).map { Int($0 * $0) + 1 }
        }
    }

    public func setTimesteps(_ steps: Int) throws {
        let n = alphasCumprod.count
        guard steps >= 1, steps < n else { throw DiffusionError.invalidArgument("ddim steps must be in 1..<\(n), got \(steps)") }
        ddimTimesteps = Self.makeDDIMTimesteps(discretization, steps: steps, trainSteps: n)
        guard let last = ddimTimesteps.last, last < n else {
            throw DiffusionError.invalidArgument("CompVis timestep \(ddimTimesteps.last ?? 0) exceeds the schedule")
        }
        let desc = ddimTimesteps.reversed().map(Double.init)
        timesteps = method == .ddim ? desc : [desc[0], desc.count > 1 ? desc[1] : desc[0]] + desc.dropFirst()
        numInferenceSteps = ddimTimesteps.count
        oldEps = []
        firstEps = nil
        firstSample = nil
        plmsCalls = 0
    }

    public func scaleModelInput(_ x: Tensor, stepIndex: Int) -> Tensor { x }
    public func setBeginIndex(_ index: Int) {}

    /// (a_t, a_prev, sigma_t) of make_ddim_sampling_parameters for ascending ddim index `k`.
    func parameters(_ k: Int) -> (Double, Double, Double) {
        let a = alphasCumprod[ddimTimesteps[k]]
        let aPrev = k == 0 ? alphasCumprod[0] : alphasCumprod[ddimTimesteps[k - 1]]
        return (a, aPrev, eta * ((1 - aPrev) / (1 - a) * (1 - a / aPrev)).squareRoot())
    }

    /// The ascending ddim index of model evaluation `stepIndex`.
    func ddimIndex(_ stepIndex: Int) -> Int {
        let n = ddimTimesteps.count
        if method == .ddim { return n - 1 - stepIndex }
        return stepIndex <= 1 ? n - 1 : n - stepIndex
    }

    /// p_sample_ddim / get_x_prev_and_pred_x0.
    func update(_ x: Tensor, eps e: Tensor, k: Int, noise: RandomSource?) throws -> Tensor {
        let (a, aPrev, sigma) = parameters(k)
        let sqrtOneMinusA = Double(Float(1 - a).squareRoot())
        let x0 = lincomb(1 / a.squareRoot(), x, -sqrtOneMinusA / a.squareRoot(), e)
        var prev = lincomb(aPrev.squareRoot(), x0, max(1 - aPrev - sigma * sigma, 0).squareRoot(), e)
        if let src = noise {
            prev = lincomb(1, prev, sigma, noiseLike(x, src))
        } else if sigma > 0 {
            throw DiffusionError.invalidArgument("CompVis DDIM with eta > 0 needs a random source")
        }
        return prev
    }

    /// eps from the model output (SD2 "v" parameterization: predict_eps_from_z_and_v).
    func epsilon(_ m: Tensor, _ x: Tensor, k: Int) -> Tensor {
        guard prediction == .vPrediction else { return m }
        let a = alphasCumprod[ddimTimesteps[k]]
        return lincomb(a.squareRoot(), m, (1 - a).squareRoot(), x)
    }

    public func step(modelOutput: Tensor, stepIndex: Int, sample: Tensor, noise: RandomSource?) throws -> Tensor {
        try checkIndex(stepIndex, timesteps.count)
        try checkSizes(modelOutput, sample, "CompVisSampler.step")
        let k = ddimIndex(stepIndex)
        if method == .ddim { return try update(sample, eps: epsilon(modelOutput, sample, k: k), k: k, noise: noise) }
        defer { plmsCalls += 1 }
        if plmsCalls == 0 {
            let e = epsilon(modelOutput, sample, k: k)
            firstEps = e
            firstSample = sample
            return try update(sample, eps: e, k: k, noise: noise)
        }
        if plmsCalls == 1, let e0 = firstEps, let x = firstSample {
            // second evaluation of the first PLMS step: e_t_next at (x_prev, t_next)
            let eNext = epsilon(modelOutput, sample, k: k)
            firstEps = nil
            firstSample = nil
            oldEps = [e0]
            return try update(x, eps: lincomb(0.5, e0, 0.5, eNext), k: k, noise: noise)
        }
        let e = epsilon(modelOutput, sample, k: k)
        let o = oldEps
        let ePrime: Tensor
        switch o.count {
        case 1: ePrime = lincomb(1.5, e, -0.5, o[0])
        case 2: ePrime = combine([23.0 / 12, -16.0 / 12, 5.0 / 12], [e, o[1], o[0]])
        default:
            let n = o.count
            ePrime = combine([55.0 / 24, -59.0 / 24, 37.0 / 24, -9.0 / 24], [e, o[n - 1], o[n - 2], o[n - 3]])
        }
        oldEps.append(e)
        if oldEps.count >= 4 { oldEps.removeFirst() }
        return try update(sample, eps: ePrime, k: k, noise: noise)
    }

    /// The noise level of `timesteps[stepIndex]`: sqrt(a) x0 + sqrt(1 - a) noise.
    public func addNoise(original: Tensor, noise: Tensor, stepIndex: Int) -> Tensor {
        let k = ddimIndex(min(max(stepIndex, 0), timesteps.count - 1))
        return stochasticEncode(original: original, noise: noise, ddimIndex: k)
    }

    /// DDIMSampler.stochastic_encode(x0, t) with t an ascending ddim index. CompVis scripts/img2img.py encodes at
    /// index t_enc = int(strength * S) and then decodes from index t_enc - 1 (their off-by-one).
    public func stochasticEncode(original: Tensor, noise: Tensor, ddimIndex k: Int) -> Tensor {
        let a = alphasCumprod[ddimTimesteps[min(max(k, 0), ddimTimesteps.count - 1)]]
        return lincomb(Double(Float(a).squareRoot()), original, Double(Float(1 - a).squareRoot()), noise)
    }
}
