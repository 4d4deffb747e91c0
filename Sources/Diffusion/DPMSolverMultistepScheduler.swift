// Matches diffusers DPMSolverMultistepScheduler (schedulers/scheduling_dpmsolver_multistep.py): DPM-Solver++ /
// DPM-Solver (orders 1-3, midpoint or heun second-order update) and SDE-DPM-Solver++, Karras sigmas,
// lower_order_final, final_sigmas_type.
import Foundation
import TensorCore

public final class DPMSolverMultistepScheduler: SigmaScheduler, Scheduler {
    public enum Algorithm: String {
        case dpmsolverPP = "dpmsolver++"
        case dpmsolver
        case sdeDpmsolverPP = "sde-dpmsolver++"
    }
    public enum SolverType: String {
        case midpoint, heun
    }
    public let algorithm: Algorithm
    public let solverType: SolverType
    public let solverOrder: Int
    private var modelOutputs: [Tensor] = []
    private var lowerOrderNums = 0

    public init(config: SchedulerConfig) throws {
        let a = config.algorithmType ?? "dpmsolver++"
        guard let alg = Algorithm(rawValue: a == "deis" ? "dpmsolver++" : a) else {
            throw DiffusionError.unsupported("DPMSolverMultistepScheduler algorithm_type '\(a)' (supported: dpmsolver++, dpmsolver, sde-dpmsolver++)")
        }
        let st = config.solverType ?? "midpoint"
        guard let solver = SolverType(rawValue: ["logrho", "bh1", "bh2"].contains(st) ? "midpoint" : st) else {
            throw DiffusionError.unsupported("solver_type '\(st)'")
        }
        let order = config.solverOrder ?? 2
        guard (1...3).contains(order) else { throw DiffusionError.invalidConfig("solver_order must be 1, 2 or 3, got \(order)") }
        if alg == .sdeDpmsolverPP && order == 3 { throw DiffusionError.unsupported("third-order SDE-DPM-Solver++") }
        if config.useLuLambdas == true { throw DiffusionError.unsupported("use_lu_lambdas") }
        if alg == .dpmsolver && (config.finalSigmasType ?? "zero") == "zero" {
            throw DiffusionError.invalidConfig("final_sigmas_type 'zero' is not supported for algorithm_type 'dpmsolver'")
        }
        algorithm = alg
        solverType = solver
        solverOrder = order
        try super.init(config: config, karras: config.useKarrasSigmas ?? false, rescaleLastToMin: true)
    }

    public override var initNoiseSigma: Double { 1 }
    public override func scaleModelInput(_ x: Tensor, stepIndex: Int) -> Tensor { x }

    /// add_noise: alpha_t x0 + sigma_t noise (DPM-Solver's data/noise parameterisation, not x0 + sigma noise).
    public override func addNoise(original: Tensor, noise: Tensor, stepIndex: Int) -> Tensor {
        let (a, s, _) = alphaSigma(sigmas[min(max(stepIndex, 0), sigmas.count - 1)])
        return lincomb(a, original, s, noise)
    }

    public func setTimesteps(_ steps: Int) throws {
        let n = schedule.count
        guard steps >= 1, steps <= n else {
            throw DiffusionError.invalidArgument("num_inference_steps must be in 1...\(n), got \(steps)")
        }
        var ts: [Double]
        switch spacing {
        case .linspace:
            ts = Array(NoiseSchedule.linspace(0, Double(n - 1), steps + 1).map(roundHalfEven).reversed().dropLast())
        case .leading:
            let ratio = n / (steps + 1)
            ts = Array((0...steps).reversed().dropLast().map { Double($0 * ratio + (config.stepsOffset ?? 0)) })
        case .trailing:
            ts = Spacing.arangeDescending(from: Double(n), step: Double(n) / Double(steps)).map { roundHalfEven($0) - 1 }
        }
        var sig: [Double]
        if useKarrasSigmas {
            sig = Spacing.karras(sigmaMin: config.sigmaMin ?? trainSigmas[0], sigmaMax: config.sigmaMax ?? trainSigmas[n - 1],
                                 steps: steps)
            ts = sig.map { Spacing.sigmaToT($0, logSigmas: logSigmas) }
            if config.betaSchedule != "squaredcos_cap_v2" { ts = ts.map(roundHalfEven) }
        } else {
            sig = ts.map { Spacing.interp($0, trainSigmas) }
        }
        sigmas = (sig + [finalSigma]).map { Double(Float($0)) }
        timesteps = ts.map { Double(Int64($0)) }
        numInferenceSteps = ts.count
        modelOutputs = []
        lowerOrderNums = 0
    }

    /// _sigma_to_alpha_sigma_t.
    func alphaSigma(_ s: Double) -> (alpha: Double, sigma: Double, lambda: Double) {
        let a = 1 / (s * s + 1).squareRoot()
        let sg = s * a
        return (a, sg, log(a) - log(sg))
    }

    /// convert_model_output: data prediction (x0) for DPM-Solver++, noise prediction for DPM-Solver.
    func convert(_ m: Tensor, _ x: Tensor, sigma: Double) -> Tensor {
        let (a, s, _) = alphaSigma(sigma)
        if algorithm != .dpmsolver {
            switch prediction {
            case .epsilon: return lincomb(1 / a, x, -s / a, m)
            case .sample: return m
            case .vPrediction: return lincomb(a, x, -s, m)
            }
        }
        switch prediction {
        case .epsilon: return m
        case .sample: return lincomb(1 / s, x, -a / s, m)
        case .vPrediction: return lincomb(a, m, s, x)
        }
    }

    public func step(modelOutput: Tensor, stepIndex i: Int, sample: Tensor, noise: RandomSource?) throws -> Tensor {
        try checkIndex(i, timesteps.count)
        try checkSizes(modelOutput, sample, "DPMSolverMultistepScheduler.step")
        let n = timesteps.count
        let lowFinal = config.lowerOrderFinal ?? true
        let lowerOrderFinal = i == n - 1 && ((config.eulerAtFinal ?? false) || (lowFinal && n < 15)
                                             || (config.finalSigmasType ?? "zero") == "zero")
        let lowerOrderSecond = i == n - 2 && lowFinal && n < 15
        let m = convert(modelOutput, sample, sigma: sigmas[i])
        modelOutputs.append(m)
        if modelOutputs.count > solverOrder { modelOutputs.removeFirst() }
        var z: Tensor?
        if algorithm == .sdeDpmsolverPP { z = noiseLike(sample, try requireNoise(noise, "SDE-DPM-Solver++")) }
        let prev: Tensor
        if solverOrder == 1 || lowerOrderNums < 1 || lowerOrderFinal {
            prev = firstOrder(m, sample, i, z)
        } else if solverOrder == 2 || lowerOrderNums < 2 || lowerOrderSecond {
            prev = secondOrder(sample, i, z)
        } else {
            prev = thirdOrder(sample, i)
        }
        if lowerOrderNums < solverOrder { lowerOrderNums += 1 }
        return prev
    }

    func firstOrder(_ m: Tensor, _ x: Tensor, _ i: Int, _ z: Tensor?) -> Tensor {
        let (aT, sT, lT) = alphaSigma(sigmas[i + 1])
        let (aS, sS, lS) = alphaSigma(sigmas[i])
        let h = lT - lS
        switch algorithm {
        case .dpmsolverPP: return lincomb(sT / sS, x, -aT * (exp(-h) - 1), m)
        case .dpmsolver: return lincomb(aT / aS, x, -sT * (exp(h) - 1), m)
        case .sdeDpmsolverPP:
            return combine([sT / sS * exp(-h), aT * (1 - exp(-2 * h)), sT * max(1 - exp(-2 * h), 0).squareRoot()], [x, m, z ?? m])
        }
    }

    func secondOrder(_ x: Tensor, _ i: Int, _ z: Tensor?) -> Tensor {
        let (aT, sT, lT) = alphaSigma(sigmas[i + 1])
        let (aS0, sS0, lS0) = alphaSigma(sigmas[i])
        let lS1 = alphaSigma(sigmas[i - 1]).lambda
        let m0 = modelOutputs[modelOutputs.count - 1]
        let m1 = modelOutputs[modelOutputs.count - 2]
        let h = lT - lS0
        let h0 = lS0 - lS1
        let r0 = h0 / h
        // D1 = (m0 - m1) / r0
        let e = exp(-h)
        let eh = exp(h)
        let sdeNoise = sT * max(1 - exp(-2 * h), 0).squareRoot()
        // (coefficient of x, of m0, of D1, of the noise)
        let (cx, c0, cD1, cz): (Double, Double, Double, Double) = switch (algorithm, solverType) {
        case (.dpmsolverPP, .midpoint): (sT / sS0, -aT * (e - 1), -0.5 * aT * (e - 1), 0)
        case (.dpmsolverPP, .heun): (sT / sS0, -aT * (e - 1), aT * ((e - 1) / h + 1), 0)
        case (.dpmsolver, .midpoint): (aT / aS0, -sT * (eh - 1), -0.5 * sT * (eh - 1), 0)
        case (.dpmsolver, .heun): (aT / aS0, -sT * (eh - 1), -sT * ((eh - 1) / h - 1), 0)
        case (.sdeDpmsolverPP, .midpoint): (sT / sS0 * e, aT * (1 - exp(-2 * h)), 0.5 * aT * (1 - exp(-2 * h)), sdeNoise)
        case (.sdeDpmsolverPP, .heun): (sT / sS0 * e, aT * (1 - exp(-2 * h)), aT * ((1 - exp(-2 * h)) / (-2 * h) + 1), sdeNoise)
        }
        let d = cD1 / r0
        return combine([cx, c0 + d, -d, cz], [x, m0, m1, z ?? m0])
    }

    func thirdOrder(_ x: Tensor, _ i: Int) -> Tensor {
        let (aT, sT, lT) = alphaSigma(sigmas[i + 1])
        let (aS0, sS0, lS0) = alphaSigma(sigmas[i])
        let lS1 = alphaSigma(sigmas[i - 1]).lambda
        let lS2 = alphaSigma(sigmas[i - 2]).lambda
        let c = modelOutputs.count
        let m0 = modelOutputs[c - 1]
        let m1 = modelOutputs[c - 2]
        let m2 = modelOutputs[c - 3]
        let h = lT - lS0
        let h0 = lS0 - lS1
        let h1 = lS1 - lS2
        let r0 = h0 / h
        let r1 = h1 / h
        // D1_0 = (m0 - m1) / r0, D1_1 = (m1 - m2) / r1, D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1), D2 = (D1_0 - D1_1) / (r0 + r1)
        let k = r0 / (r0 + r1)
        let q = 1 / (r0 + r1)
        // D1_0 and D1_1 as coefficients of (m0, m1, m2)
        let d10 = [1 / r0, -1 / r0, 0]
        let d11 = [0, 1 / r1, -1 / r1]
        let d1 = (0..<3).map { d10[$0] + k * (d10[$0] - d11[$0]) }
        let d2 = (0..<3).map { q * (d10[$0] - d11[$0]) }
        // (coefficient of x, of m0, of D1, of D2)
        let (cx, c0, c1, c2): (Double, Double, Double, Double)
        if algorithm == .dpmsolver {
            let e = exp(h)
            (cx, c0, c1, c2) = (aT / aS0, -sT * (e - 1), -sT * ((e - 1) / h - 1), -sT * ((e - 1 - h) / (h * h) - 0.5))
        } else {
            let e = exp(-h)
            (cx, c0, c1, c2) = (sT / sS0, -aT * (e - 1), aT * ((e - 1) / h + 1), -aT * ((e - 1 + h) / (h * h) - 0.5))
        }
        let w = (0..<3).map { c1 * d1[$0] + c2 * d2[$0] }
        return combine([cx, c0 + w[0], w[1], w[2]], [x, m0, m1, m2])
    }
}
