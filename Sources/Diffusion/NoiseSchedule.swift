// Beta schedules and timestep discretisations.
// Follows diffusers schedulers/scheduling_ddpm.py (betas_for_alpha_bar, rescale_zero_terminal_snr, the
// `linear` / `scaled_linear` / `squaredcos_cap_v2` branches of every scheduler's __init__, the timestep_spacing
// branches of set_timesteps, _sigma_to_t, _convert_to_karras) and CompVis ldm/modules/diffusionmodules/util.py
// (make_beta_schedule, make_ddim_timesteps).
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public enum BetaSchedule: String, Codable, Sendable, CaseIterable {
    /// diffusers "linear": betas linear in beta.
    case linear
    /// diffusers "scaled_linear" = CompVis "linear": linear in sqrt(beta).
    case scaledLinear = "scaled_linear"
    /// diffusers "squaredcos_cap_v2" (Nichol & Dhariwal cosine, max beta 0.999).
    case squaredcosCapV2 = "squaredcos_cap_v2"
    /// CompVis "cosine" (make_beta_schedule, cosine_s = 8e-3).
    case cosine
    /// CompVis "sqrt_linear" (same betas as diffusers "linear", computed in float64).
    case sqrtLinear = "sqrt_linear"
    /// CompVis "sqrt": sqrt of linearly spaced betas.
    case sqrt
}

/// betas / alphas_cumprod of a trained model.
///
/// `precision == .float32` reproduces diffusers exactly: torch float32 `linspace` (step rounded to float, the two
/// halves computed from each end), float32 `1 - betas`, and `cumprod` accumulated in double and rounded to float
/// per element (ATen's CPU cumprod). `.float64` reproduces CompVis (numpy / torch float64), whose model then stores
/// `alphas_cumprod` as a float32 buffer (`alphasCumprodFloat32`).
public struct NoiseSchedule: Sendable {
    public enum Precision: Sendable { case float32, float64 }
    public let betas: [Double]
    public let alphasCumprod: [Double]
    public var count: Int { betas.count }

    public init(betas: [Double], precision: Precision = .float32) throws {
        guard !betas.isEmpty, betas.allSatisfy({ $0.isFinite && $0 >= 0 && $0 <= 1 }) else {
            throw DiffusionError.invalidConfig("betas must be a non-empty list of values in [0, 1]")
        }
        self.betas = betas
        var acc = 1.0
        alphasCumprod = betas.map { b in
            switch precision {
            case .float32:
                acc *= Double(Float(1) - Float(b))
                return Double(Float(acc))
            case .float64:
                acc *= 1 - b
                return acc
            }
        }
    }

    public init(schedule: BetaSchedule, trainSteps n: Int = 1000, betaStart: Double = 0.0001, betaEnd: Double = 0.02,
                precision: Precision = .float32, rescaleZeroTerminalSNR: Bool = false) throws {
        guard n >= 2 else { throw DiffusionError.invalidConfig("num_train_timesteps must be >= 2, got \(n)") }
        var betas: [Double]
        switch (schedule, precision) {
        case (.linear, .float32), (.sqrtLinear, .float32):
            betas = Self.linspaceF32(betaStart, betaEnd, n).map(Double.init)
        case (.scaledLinear, .float32):
            betas = Self.linspaceF32(betaStart.squareRoot(), betaEnd.squareRoot(), n).map { Double($0 * $0) }
        case (.linear, .float64), (.sqrtLinear, .float64):
            betas = Self.linspace(betaStart, betaEnd, n)
        case (.scaledLinear, .float64):
            betas = Self.linspace(betaStart.squareRoot(), betaEnd.squareRoot(), n).map { $0 * $0 }
        case (.sqrt, .float32):
            betas = Self.linspaceF32(betaStart, betaEnd, n).map { Double($0.squareRoot()) }
        case (.sqrt, .float64):
            betas = Self.linspace(betaStart, betaEnd, n).map { $0.squareRoot() }
        case (.squaredcosCapV2, _):
            func alphaBar(_ t: Double) -> Double {
                let c = cos((t + 0.008) / 1.008 * Double.pi / 2)
                return c * c
            }
            betas = (0..<n).map { i in
                min(1 - alphaBar(Double(i + 1) / Double(n)) / alphaBar(Double(i) / Double(n)), 0.999)
            }
            if precision == .float32 { betas = betas.map { Double(Float($0)) } }
        case (.cosine, _):
            let s = 8e-3
            let a: [Double] = (0...n).map { i in
                let c = cos((Double(i) / Double(n) + s) / (1 + s) * Double.pi / 2)
                return c * c
            }
            betas = (0..<n).map { i in min(max(1 - (a[i + 1] / a[0]) / (a[i] / a[0]), 0), 0.999) }
            if precision == .float32 { betas = betas.map { Double(Float($0)) } }
        }
        if rescaleZeroTerminalSNR { betas = try Self.rescaleZeroTerminalSNR(betas, precision: precision) }
        try self.init(betas: betas, precision: precision)
    }

    /// alphas_cumprod as the float32 values a torch model buffer holds.
    public var alphasCumprodFloat32: [Double] { alphasCumprod.map { Double(Float($0)) } }

    /// sqrt((1 - a) / a) per train timestep, as diffusers computes it (float32 tensor ops).
    public var sigmasFloat32: [Double] {
        alphasCumprod.map { a in
            let af = Float(a)
            return Double(((1 - af) / af).squareRoot())
        }
    }

    /// diffusers rescale_zero_terminal_snr (Lin et al. 2023, Algorithm 1).
    static func rescaleZeroTerminalSNR(_ betas: [Double], precision: Precision) throws -> [Double] {
        let ac = try NoiseSchedule(betas: betas, precision: precision).alphasCumprod
        var sq = ac.map { $0.squareRoot() }
        let s0 = sq[0], sT = sq[sq.count - 1]
        sq = sq.map { ($0 - sT) * (s0 / (s0 - sT)) }
        let bar = sq.map { $0 * $0 }
        var out = [1 - bar[0]]
        for i in 1..<bar.count { out.append(1 - bar[i] / bar[i - 1]) }
        return precision == .float32 ? out.map { Double(Float($0)) } : out
    }

    /// torch.linspace for float32: step = (end - start) / (n - 1) in float; first half from start, second from end.
    /// ATen's AVX2 build fuses `start + step * idx` into one FMA.
    static func linspaceF32(_ a: Double, _ b: Double, _ n: Int) -> [Float] {
        let start = Float(a), end = Float(b)
        let step = (end - start) / Float(n - 1)
        let half = n / 2
        return (0..<n).map { i in
            i < half ? start.addingProduct(step, Float(i)) : end.addingProduct(-step, Float(n - i - 1))
        }
    }

    /// numpy.linspace / torch.linspace in float64.
    public static func linspace(_ a: Double, _ b: Double, _ n: Int) -> [Double] {
        guard n > 1 else { return n == 1 ? [a] : [] }
        let step = (b - a) / Double(n - 1)
        var out = (0..<n).map { a + Double($0) * step }
        out[n - 1] = b
        return out
    }
}

public enum TimestepSpacing: String, Codable, Sendable, CaseIterable {
    case leading, trailing, linspace
}

/// numpy-style round half to even (np.round / ndarray.round).
@inline(__always) func roundHalfEven(_ x: Double) -> Double { x.rounded(.toNearestOrEven) }

enum Spacing {
    /// The integer-valued descending timesteps of diffusers' DDPM/DDIM/Euler/... set_timesteps.
    /// `linspaceFloat32`: Euler-family schedulers keep np.linspace(..., dtype=float32) values unrounded.
    static func timesteps(_ spacing: TimestepSpacing, steps: Int, trainSteps: Int, stepsOffset: Int,
                          linspaceFloat32: Bool) -> [Double] {
        switch spacing {
        case .linspace:
            let v = NoiseSchedule.linspace(0, Double(trainSteps - 1), steps)
            return v.reversed().map { linspaceFloat32 ? Double(Float($0)) : roundHalfEven($0) }
        case .leading:
            let ratio = trainSteps / steps
            return (0..<steps).reversed().map { Double($0 * ratio + stepsOffset) }
        case .trailing:
            return arangeDescending(from: Double(trainSteps), step: Double(trainSteps) / Double(steps))
                .map { roundHalfEven($0) - 1 }
        }
    }

    /// np.arange(start, 0, -step): ceil(start / step) values start - i * step.
    static func arangeDescending(from start: Double, step: Double) -> [Double] {
        let n = Int((start / step).rounded(.up))
        return (0..<n).map { start - Double($0) * step }
    }

    /// np.interp(x, arange(len(fp)), fp) clamped at the ends.
    static func interp(_ x: Double, _ fp: [Double]) -> Double {
        if x <= 0 { return fp[0] }
        if x >= Double(fp.count - 1) { return fp[fp.count - 1] }
        let i = Int(x.rounded(.down))
        let w = x - Double(i)
        return w == 0 ? fp[i] : fp[i] + (fp[i + 1] - fp[i]) * w
    }

    /// diffusers _sigma_to_t: fractional train timestep whose log-sigma interpolates to `sigma`.
    static func sigmaToT(_ sigma: Double, logSigmas: [Double]) -> Double {
        let logSigma = log(max(sigma, 1e-10))
        var low = 0
        var count = 0
        for (i, ls) in logSigmas.enumerated() where logSigma - ls >= 0 {
            count += 1
            low = i
        }
        // argmax of the cumulative count = first index reaching the final count
        if count == 0 { low = 0 } else {
            var c = 0
            for (i, ls) in logSigmas.enumerated() {
                if logSigma - ls >= 0 { c += 1 }
                if c == count {
                    low = i
                    break
                }
            }
        }
        low = min(low, logSigmas.count - 2)
        let lo = logSigmas[low], hi = logSigmas[low + 1]
        let w = min(max((lo - logSigma) / (lo - hi), 0), 1)
        return (1 - w) * Double(low) + w * Double(low + 1)
    }

    /// diffusers _convert_to_karras (rho = 7).
    static func karras(sigmaMin: Double, sigmaMax: Double, steps: Int) -> [Double] {
        let rho = 7.0
        let minInv = pow(sigmaMin, 1 / rho), maxInv = pow(sigmaMax, 1 / rho)
        return NoiseSchedule.linspace(0, 1, steps).map { pow(maxInv + $0 * (minInv - maxInv), rho) }
    }
}
