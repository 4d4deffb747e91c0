// Decodes diffusers scheduler_config.json (ConfigMixin / register_to_config keys) and resolves the per-class
// defaults of the __init__ signatures in diffusers/schedulers/scheduling_*.py.
import Foundation

public enum PredictionType: String, Codable, Sendable {
    case epsilon
    case vPrediction = "v_prediction"
    case sample
}

/// The fields of a diffusers `scheduler_config.json`. Every field is optional: a missing key takes the default of
/// the scheduler class being built, as `SchedulerClass.from_config(dict)` does. That also holds when swapping
/// schedulers (`Target.from_config(source.config)`): diffusers records which values were defaults
/// (`_use_default_values`) and drops them, so only keys present in the json carry over.
public struct SchedulerConfig: Codable, Sendable, Equatable {
    public var className: String?
    public var numTrainTimesteps: Int?
    public var betaStart: Double?
    public var betaEnd: Double?
    public var betaSchedule: String?
    public var trainedBetas: [Double]?
    public var predictionType: String?
    public var timestepSpacing: String?
    public var stepsOffset: Int?
    public var clipSample: Bool?
    public var clipSampleRange: Double?
    public var setAlphaToOne: Bool?
    public var skipPrkSteps: Bool?
    public var useKarrasSigmas: Bool?
    public var solverOrder: Int?
    public var algorithmType: String?
    public var solverType: String?
    public var lowerOrderFinal: Bool?
    public var eulerAtFinal: Bool?
    public var finalSigmasType: String?
    public var rescaleBetasZeroSnr: Bool?
    public var varianceType: String?
    public var thresholding: Bool?
    public var interpolationType: String?
    public var timestepType: String?
    public var sigmaMin: Double?
    public var sigmaMax: Double?
    public var useExponentialSigmas: Bool?
    public var useBetaSigmas: Bool?
    public var useLuLambdas: Bool?
    /// LCMScheduler / TCDScheduler: the distillation grid (default 50) and the boundary-condition time scaling (10).
    public var originalInferenceSteps: Int?
    public var timestepScaling: Double?

    enum CodingKeys: String, CodingKey {
        case className = "_class_name"
        case numTrainTimesteps = "num_train_timesteps", betaStart = "beta_start", betaEnd = "beta_end"
        case betaSchedule = "beta_schedule", trainedBetas = "trained_betas", predictionType = "prediction_type"
        case timestepSpacing = "timestep_spacing", stepsOffset = "steps_offset", clipSample = "clip_sample"
        case clipSampleRange = "clip_sample_range", setAlphaToOne = "set_alpha_to_one", skipPrkSteps = "skip_prk_steps"
        case useKarrasSigmas = "use_karras_sigmas", solverOrder = "solver_order", algorithmType = "algorithm_type"
        case solverType = "solver_type", lowerOrderFinal = "lower_order_final", eulerAtFinal = "euler_at_final"
        case finalSigmasType = "final_sigmas_type", rescaleBetasZeroSnr = "rescale_betas_zero_snr"
        case varianceType = "variance_type", thresholding, interpolationType = "interpolation_type"
        case timestepType = "timestep_type", sigmaMin = "sigma_min", sigmaMax = "sigma_max"
        case useExponentialSigmas = "use_exponential_sigmas", useBetaSigmas = "use_beta_sigmas"
        case useLuLambdas = "use_lu_lambdas"
        case originalInferenceSteps = "original_inference_steps", timestepScaling = "timestep_scaling"
    }

    public init() {}

    /// Decodes `scheduler_config.json` data; throws a DiffusionError naming the problem.
    public static func decode(_ data: Data) throws -> SchedulerConfig {
        do { return try JSONDecoder().decode(SchedulerConfig.self, from: data) } catch {
            throw DiffusionError.invalidConfig("cannot decode scheduler_config.json: \(error)")
        }
    }

    public static func load(contentsOf url: URL) throws -> SchedulerConfig {
        let data: Data
        do { data = try Data(contentsOf: url) } catch {
            throw DiffusionError.invalidConfig("cannot read \(url.path): \(error.localizedDescription)")
        }
        return try decode(data)
    }

    // MARK: resolved values (shared defaults of the diffusers __init__ signatures)

    var trainSteps: Int { numTrainTimesteps ?? 1000 }

    func resolvedSpacing(default d: TimestepSpacing) throws -> TimestepSpacing {
        guard let s = timestepSpacing else { return d }
        guard let v = TimestepSpacing(rawValue: s) else {
            throw DiffusionError.invalidConfig("timestep_spacing '\(s)' is not one of leading, trailing, linspace")
        }
        return v
    }

    func resolvedPrediction() throws -> PredictionType {
        guard let s = predictionType else { return .epsilon }
        guard let v = PredictionType(rawValue: s) else {
            throw DiffusionError.invalidConfig("prediction_type '\(s)' is not one of epsilon, v_prediction, sample")
        }
        return v
    }

    /// The betas / alphas_cumprod of the diffusers scheduler (float32 like torch).
    public func noiseSchedule(allowRescale: Bool = true) throws -> NoiseSchedule {
        if thresholding == true { throw DiffusionError.unsupported("thresholding (dynamic thresholding) is not implemented") }
        if rescaleBetasZeroSnr == true && !allowRescale {
            throw DiffusionError.unsupported("rescale_betas_zero_snr for this scheduler")
        }
        if let tb = trainedBetas {
            return try NoiseSchedule(betas: tb.map { Double(Float($0)) }, precision: .float32)
        }
        let name = betaSchedule ?? "linear"
        guard let schedule = BetaSchedule(rawValue: name),
              [.linear, .scaledLinear, .squaredcosCapV2].contains(schedule) else {
            throw DiffusionError.invalidConfig("beta_schedule '\(name)' is not one of linear, scaled_linear, squaredcos_cap_v2")
        }
        let n = trainSteps
        guard n >= 2, n <= 100_000 else { throw DiffusionError.invalidConfig("num_train_timesteps \(n) out of range") }
        return try NoiseSchedule(schedule: schedule, trainSteps: n, betaStart: betaStart ?? 0.0001,
                                 betaEnd: betaEnd ?? 0.02, precision: .float32,
                                 rescaleZeroTerminalSNR: rescaleBetasZeroSnr ?? false)
    }
}
