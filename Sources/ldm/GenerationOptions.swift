// Options shared by the generation commands (txt2img, img2img, inpaint, upscale, sample), their validation before
// any model is loaded, the terminal progress bar and PNG output with the web UI `parameters` chunk.
import ArgumentParser
import Checkpoints
import Foundation
import Imaging
import Pipelines
import TensorCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

struct GenerationOptions: ParsableArguments {
    @Option(help: "A diffusers pipeline folder (model_index.json) or a CompVis .safetensors/.ckpt file.")
    var model: String

    @Option(help: "CompVis YAML config of a .ckpt/.safetensors --model (e.g. v1-inference.yaml, v2-inference-v.yaml, cin256-v2.yaml): architecture, conditioning and noise schedule come from it instead of tensor shapes.")
    var config: String?

    @Option(help: "Denoising steps (default: 50; 100 for upscale).")
    var steps: Int?

    @Option(help: "Sampler: ddim, plms, euler, euler-a, heun, lms, dpm++2m, dpm++2m-karras, ddpm, compvis-ddim, compvis-plms or a web UI name (\"Euler a\", \"DPM++ 2M Karras\"). Default: the model's scheduler.")
    var sampler: String?

    @Option(help: "DDIM eta (0: deterministic).")
    var eta: Double = 0

    @Option(help: "Random seed (default: random; it is printed and stored in the PNG).")
    var seed: UInt64?

    @Option(help: "Random number generator: torch (reproduces torch.Generator on x86 CPUs) or torch-scalar (ARM/portable torch).")
    var rng: String = "torch"

    @Option(name: .customLong("batch-size"), help: "Images to generate in one batch (written as FILE-1.png, FILE-2.png, ...).")
    var batchSize: Int = 1

    @Option(help: "Output PNG file.")
    var output: String

    @Flag(help: "Replace existing output files.")
    var overwrite = false

    @Flag(help: "No progress bar or messages.")
    var quiet = false

    /// Checks every option and file that does not need the model; returns the sampling options and output paths.
    func check(defaultSteps: Int = 50) throws -> (SamplingOptions, [String]) {
        guard ["torch", "torch-scalar"].contains(rng) else { throw PipelineError("--rng must be torch or torch-scalar, got \(rng)") }
        let o = SamplingOptions(sampler: sampler, steps: steps ?? defaultSteps, eta: eta, batchSize: batchSize)
        try o.validate()
        try Validation.checkModelPath(model)
        if config != nil {
            if DiffusersFolder.isFolder(URL(fileURLWithPath: model)) { throw PipelineError("--config is for CompVis checkpoint files; \(model) is a diffusers folder") }
            _ = try CompVisModelConfig(yaml: compVisYAML())
        }
        let paths = Validation.outputPaths(output, batch: batchSize)
        try Validation.checkOutputs(paths, overwrite: overwrite)
        return (o, paths)
    }

    var resolvedSeed: UInt64 { seed ?? UInt64.random(in: 0..<(1 << 32)) }

    func generator(seed: UInt64) -> TorchGenerator {
        TorchGenerator(seed: seed, normalKernel: rng == "torch-scalar" ? .scalar : .avx2)
    }

    /// Reads the model's configs (not its weights) and checks it can serve the command.
    func summary() throws -> ModelSummary {
        try config != nil ? ModelSummary.read(yaml: compVisYAML()) : ModelSummary.read(URL(fileURLWithPath: model))
    }

    /// The parsed --config file (a YAML mapping).
    func compVisYAML() throws -> [String: Any] {
        guard let config else { throw PipelineError("no --config given") }
        return try loadYAMLMapping(config)
    }

    /// The model: with --config, the CompVis checkpoint built from its YAML; otherwise a folder or single file.
    func loadBundle() throws -> ModelBundle {
        let url = URL(fileURLWithPath: model)
        return try config != nil ? ModelBundle.load(checkpoint: url, yaml: compVisYAML()) : ModelBundle.load(url)
    }

    func progressBar(_ title: String) -> ProgressBar { ProgressBar(title: title, enabled: !quiet && isatty(STDERR_FILENO) != 0) }

    func log(_ s: String) { if !quiet { FileHandle.standardError.write(Data((s + "\n").utf8)) } }

    /// Writes the images with their web UI parameters; prints the paths unless --quiet.
    func write(_ result: GenerationResult, to paths: [String], parameters: GenerationParameters) throws {
        for (i, (image, path)) in zip(result.images, paths).enumerated() {
            var p = parameters
            p.width = image.width; p.height = image.height
            if paths.count > 1 { p.extra += [.init("Batch size", "\(paths.count)"), .init("Batch pos", "\(i)")] }
            try image.writePNG(to: path, parameters: p, overwrite: overwrite)
            if !quiet { print(path) }
        }
    }

    /// Web UI infotext fields; `scheduler` names the model's own scheduler class when --sampler is not given.
    func parameters(seed: UInt64, steps: Int, scheduler: String?) -> GenerationParameters {
        GenerationParameters(steps: steps, sampler: webUISamplerName(sampler ?? scheduler ?? "default"), seed: Int(truncatingIfNeeded: seed),
                             model: URL(fileURLWithPath: model).deletingPathExtension().lastPathComponent,
                             extra: eta != 0 ? [.init("Eta", "\(eta)")] : [])
    }
}

/// The AUTOMATIC1111 display name for a sampler or diffusers scheduler class (unknown names pass through).
func webUISamplerName(_ name: String) -> String {
    let names = ["ddim": "DDIM", "ddimscheduler": "DDIM", "plms": "PLMS", "pndm": "PLMS", "pndmscheduler": "PLMS",
                 "euler": "Euler", "eulerdiscretescheduler": "Euler", "euler-a": "Euler a", "euler_a": "Euler a",
                 "euler-ancestral": "Euler a", "eulerancestraldiscretescheduler": "Euler a", "heun": "Heun",
                 "heundiscretescheduler": "Heun", "lms": "LMS", "lmsdiscretescheduler": "LMS", "dpm++2m": "DPM++ 2M",
                 "dpmsolvermultistepscheduler": "DPM++ 2M", "dpm++2m-karras": "DPM++ 2M Karras", "ddpm": "DDPM",
                 "ddpmscheduler": "DDPM"]
    return names[name.trimmingCharacters(in: .whitespaces).lowercased()] ?? name
}

struct PromptArguments: ParsableArguments {
    @Option(help: "The prompt.")
    var prompt: String

    @Option(name: .customLong("negative-prompt"), help: "What the image should not show (the unconditional prompt).")
    var negativePrompt: String = ""

    @Option(help: "Image width in pixels, a multiple of 8 (default: the model's sample size).")
    var width: Int?

    @Option(help: "Image height in pixels, a multiple of 8 (default: the model's sample size).")
    var height: Int?

    @Option(name: .customLong("cfg-scale"), help: "Classifier-free guidance scale (<= 1 disables guidance).")
    var cfgScale: Double = 7.5

    func check() throws -> PromptOptions {
        let p = PromptOptions(prompt: prompt, negativePrompt: negativePrompt, guidanceScale: cfgScale, width: width, height: height)
        try p.validate()
        return p
    }

    func annotate(_ g: inout GenerationParameters) {
        g.prompt = prompt; g.negativePrompt = negativePrompt; g.cfgScale = cfgScale
    }
}

/// Checks a model can be prompted (text encoder + latent UNet).
func requireTextModel(_ s: ModelSummary, _ path: String) throws {
    guard s.hasTextEncoder else { throw PipelineError("model \(path) has no text encoder/tokenizer: it cannot take a prompt (try `ldm sample`)") }
    guard s.firstStage == "AutoencoderKL" else { throw PipelineError("model \(path) has no AutoencoderKL (vae/)") }
}

/// A one-line progress bar on stderr with steps/s and ETA (only drawn when enabled: a terminal and not --quiet).
final class ProgressBar {
    let title: String, enabled: Bool
    let start = Date()
    init(title: String, enabled: Bool) { self.title = title; self.enabled = enabled }

    func update(_ step: Int, _ total: Int) -> Bool {
        guard enabled else { return true }
        let elapsed = Date().timeIntervalSince(start)
        let rate = elapsed > 0 ? Double(step) / elapsed : 0
        let eta = rate > 0 ? Double(total - step) / rate : 0
        let width = 30, filled = total > 0 ? width * step / total : width
        let bar = String(repeating: "#", count: filled) + String(repeating: " ", count: width - filled)
        let line = String(format: "\r%@ [%@] %d/%d %.2f steps/s ETA %02d:%02d", title, bar, step, total, rate,
                          Int(eta) / 60, Int(eta) % 60)
        FileHandle.standardError.write(Data((line + (step == total ? "\n" : "")).utf8))
        return true
    }
}
