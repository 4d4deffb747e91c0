// Builds schedulers from sampler names the way diffusers pipelines swap schedulers
// (`DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, ...)`), with the AUTOMATIC1111 web UI display names.
import Foundation

public enum SchedulerFactory {
    /// Canonical names (first) and accepted aliases, matched case-insensitively.
    static let table: [(names: [String], build: (SchedulerConfig) throws -> Scheduler)] = [
        (["ddpm", "DDPM"], { try DDPMScheduler(config: $0) }),
        (["ddim", "DDIM"], { try DDIMScheduler(config: $0) }),
        (["plms", "PLMS", "pndm"], { c in var c = c; c.skipPrkSteps = true; return try PNDMScheduler(config: c) }),
        (["dpm++2m", "DPM++ 2M"], { c in
            var c = c; c.algorithmType = "dpmsolver++"; c.solverOrder = 2; c.useKarrasSigmas = false
            return try DPMSolverMultistepScheduler(config: c) }),
        (["dpm++2m-karras", "DPM++ 2M Karras"], { c in
            var c = c; c.algorithmType = "dpmsolver++"; c.solverOrder = 2; c.useKarrasSigmas = true
            return try DPMSolverMultistepScheduler(config: c) }),
        (["euler", "Euler"], { c in var c = c; c.useKarrasSigmas = false; return try EulerDiscreteScheduler(config: c) }),
        (["euler-a", "Euler a", "euler_a", "euler-ancestral"], { try EulerAncestralDiscreteScheduler(config: $0) }),
        (["heun", "Heun"], { c in var c = c; c.useKarrasSigmas = false; return try HeunDiscreteScheduler(config: c) }),
        (["lms", "LMS"], { c in var c = c; c.useKarrasSigmas = false; return try LMSDiscreteScheduler(config: c) }),
        (["lcm", "LCM"], { try LCMScheduler(config: $0) }),
        (["tcd", "TCD"], { try TCDScheduler(config: $0) }),
        (["compvis-ddim", "DDIM (CompVis)"], { try CompVisSampler(config: $0, method: .ddim) }),
        (["compvis-plms", "PLMS (CompVis)"], { try CompVisSampler(config: $0, method: .plms) }),
    ]

    /// All accepted names.
    public static var validNames: [String] { table.flatMap { $0.names } }

    /// Builds the sampler `name` for a model whose `scheduler_config.json` is `config`, like
    /// `Target.from_config(pipe.scheduler.config, **overrides)`: keys absent from the json take Target's defaults.
    public static func make(_ name: String, config: SchedulerConfig) throws -> Scheduler {
        let key = name.trimmingCharacters(in: .whitespaces).lowercased()
        guard let entry = table.first(where: { $0.names.contains { $0.lowercased() == key } }) else {
            throw DiffusionError.unknownSampler(name, valid: validNames)
        }
        return try entry.build(config)
    }

    /// Builds the scheduler class named by `_class_name` itself (a diffusers `scheduler_config.json`).
    public static func make(config: SchedulerConfig) throws -> Scheduler {
        switch config.className {
        case "DDPMScheduler": return try DDPMScheduler(config: config)
        case "DDIMScheduler": return try DDIMScheduler(config: config)
        case "PNDMScheduler": return try PNDMScheduler(config: config)
        case "DPMSolverMultistepScheduler": return try DPMSolverMultistepScheduler(config: config)
        case "EulerDiscreteScheduler": return try EulerDiscreteScheduler(config: config)
        case "EulerAncestralDiscreteScheduler": return try EulerAncestralDiscreteScheduler(config: config)
        case "HeunDiscreteScheduler": return try HeunDiscreteScheduler(config: config)
        case "LMSDiscreteScheduler": return try LMSDiscreteScheduler(config: config)
        case "LCMScheduler": return try LCMScheduler(config: config)
        case "TCDScheduler": return try TCDScheduler(config: config)
        default:
            throw DiffusionError.unsupported("scheduler class '\(config.className ?? "<missing _class_name>")'")
        }
    }
}
