// Builds schedulers from sampler names the way diffusers pipelines swap schedulers
// (`DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, ...)`), with the AUTOMATIC1111 web UI display names.
// The pipeline's `eta`, which diffusers passes to `scheduler.step` of the schedulers that take it (prepare_extra_step_kwargs),
// is given here, at construction.
import Foundation

public enum SchedulerFactory {
    typealias Build = (_ config: SchedulerConfig, _ eta: Double?) throws -> Scheduler

    /// Canonical names (first) and accepted aliases, matched case-insensitively.
    static let table: [(names: [String], build: Build)] = [
        (["ddpm", "DDPM"], { c, _ in try DDPMScheduler(config: c) }),
        (["ddim", "DDIM"], { c, eta in try DDIMScheduler(config: c, eta: eta ?? 0) }),
        (["plms", "PLMS", "pndm"], { c, _ in try PNDMScheduler(config: with(c) { $0.skipPrkSteps = true }) }),
        (["dpm++2m", "DPM++ 2M"], { c, _ in try DPMSolverMultistepScheduler(config: dpmSolverPP2(c, karras: false)) }),
        (["dpm++2m-karras", "DPM++ 2M Karras"], { c, _ in try DPMSolverMultistepScheduler(config: dpmSolverPP2(c, karras: true)) }),
        (["euler", "Euler"], { c, _ in try EulerDiscreteScheduler(config: with(c) { $0.useKarrasSigmas = false }) }),
        (["euler-a", "Euler a", "euler_a", "euler-ancestral"], { c, _ in try EulerAncestralDiscreteScheduler(config: c) }),
        (["heun", "Heun"], { c, _ in try HeunDiscreteScheduler(config: with(c) { $0.useKarrasSigmas = false }) }),
        (["lms", "LMS"], { c, _ in try LMSDiscreteScheduler(config: with(c) { $0.useKarrasSigmas = false }) }),
        (["lcm", "LCM"], { c, _ in try LCMScheduler(config: c) }),
        (["tcd", "TCD"], { c, eta in try TCDScheduler(config: c, gamma: eta ?? 0.3) }),
        (["compvis-ddim", "DDIM (CompVis)"], { c, eta in try CompVisSampler(config: c, method: .ddim, eta: eta ?? 0) }),
        // CompVis' PLMSSampler has no eta (it insists on 0); the pipelines' eta does not reach it.
        (["compvis-plms", "PLMS (CompVis)"], { c, _ in try CompVisSampler(config: c, method: .plms) }),
    ]

    static func with(_ config: SchedulerConfig, _ change: (inout SchedulerConfig) -> Void) -> SchedulerConfig {
        var c = config
        change(&c)
        return c
    }

    /// DPM-Solver++ of order 2, as the web UI's "DPM++ 2M" (Karras) samplers.
    static func dpmSolverPP2(_ config: SchedulerConfig, karras: Bool) -> SchedulerConfig {
        with(config) {
            $0.algorithmType = "dpmsolver++"
            $0.solverOrder = 2
            $0.useKarrasSigmas = karras
        }
    }

    /// All accepted names.
    public static var validNames: [String] { table.flatMap { $0.names } }

    /// Builds the sampler `name` for a model whose `scheduler_config.json` is `config`, like
    /// `Target.from_config(pipe.scheduler.config, **overrides)`: keys absent from the json take Target's defaults.
    /// `eta` is the pipeline's step argument: DDIM's eta, TCD's gamma, CompVis DDIM's ddim_eta (nil: each
    /// scheduler's own default, 0 for DDIM, 0.3 for TCD); the other schedulers take none and ignore it.
    public static func make(_ name: String, config: SchedulerConfig, eta: Double? = nil) throws -> Scheduler {
        let key = name.trimmingCharacters(in: .whitespaces).lowercased()
        guard let entry = table.first(where: { $0.names.contains { $0.lowercased() == key } }) else {
            throw DiffusionError.unknownSampler(name, valid: validNames)
        }
        return try entry.build(config, eta)
    }

    /// Builds the scheduler class named by `_class_name` itself (a diffusers `scheduler_config.json`), with `eta` as in
    /// `make(_:config:eta:)`.
    public static func make(config: SchedulerConfig, eta: Double? = nil) throws -> Scheduler {
        switch config.className {
        case "DDPMScheduler": return try DDPMScheduler(config: config)
        case "DDIMScheduler": return try DDIMScheduler(config: config, eta: eta ?? 0)
        case "PNDMScheduler": return try PNDMScheduler(config: config)
        case "DPMSolverMultistepScheduler": return try DPMSolverMultistepScheduler(config: config)
        case "EulerDiscreteScheduler": return try EulerDiscreteScheduler(config: config)
        case "EulerAncestralDiscreteScheduler": return try EulerAncestralDiscreteScheduler(config: config)
        case "HeunDiscreteScheduler": return try HeunDiscreteScheduler(config: config)
        case "LMSDiscreteScheduler": return try LMSDiscreteScheduler(config: config)
        case "LCMScheduler": return try LCMScheduler(config: config)
        case "TCDScheduler": return try TCDScheduler(config: config, gamma: eta ?? 0.3)
        default:
            throw DiffusionError.unsupported("scheduler class '\(config.className ?? "<missing _class_name>")'")
        }
    }
}
