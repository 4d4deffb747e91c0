// Options shared by the generation commands (txt2img, img2img, inpaint, upscale, semantic, sample), their validation before
// any model is loaded, the terminal progress bar and PNG output with the web UI `parameters` chunk.
import ArgumentParser
import Checkpoints
import CompVis
import Foundation
import Imaging
import NeuralNetwork
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

    @Option(help: "CompVis YAML config of a .ckpt/.safetensors --model (e.g. v1-inference.yaml, v2-inference-v.yaml, cin256-v2.yaml, bsr_sr/config.yaml for upscale, semantic_synthesis256/config.yaml for semantic, layout2img-openimages256/config.yaml for layout): architecture, conditioning and noise schedule come from it instead of tensor shapes. For an SDXL single file: a diffusers folder of the same model, whose configs, tokenizers and scheduler are used (as diffusers' from_single_file(config=)).")
    var config: String?

    @Option(name: .customLong("bert-vocab"), help: "With --config of a CompVis LDM-BERT text-to-image model (cond_stage_config BERTEmbedder, txt2img-1p4B-eval.yaml): bert-base-uncased's vocab.txt (or a tokenizer folder). Default: vocab.txt beside the checkpoint.")
    var bertVocab: String?

    @Option(help: "Denoising steps (default: 50; 100 for upscale).")
    var steps: Int?

    @Option(help: "Sampler: ddim, plms, euler, euler-a, heun, lms, dpm++2m, dpm++2m-karras, ddpm, lcm, tcd, compvis-ddim, compvis-plms or a web UI name (\"Euler a\", \"DPM++ 2M Karras\"). Default: the model's scheduler (lcm for LCM models and LCM-LoRAs).")
    var sampler: String?

    @Option(help: "DDIM eta (0: deterministic); with --sampler tcd its gamma (diffusers passes eta to TCD's step; 0.3 is TCD's usual value).")
    var eta: Double = 0

    @Option(name: .customLong("timestep-spacing"), help: "Override the scheduler config's timestep_spacing: leading, linspace or trailing (trailing: SD-Turbo / SDXL-Turbo in 1-4 steps with euler-a and --cfg-scale 0). Not for lcm, tcd, compvis-*.")
    var timestepSpacing: String?

    @Option(name: .customLong("lora"), help: "A LoRA merged into the model at load, FILE[:WEIGHT] (weight default 1; repeatable): kohya/A1111 (lora_unet_/lora_te_, LoCon, LyCORIS LoHa/LoKr) or diffusers/PEFT safetensors. The weight scales the UNet and text encoder parts. A file named *lcm* is taken as an LCM-LoRA (sampler lcm, 4 steps, cfg 1 unless given).")
    var lora: [String] = []

    @Option(name: .customLong("lora-dir"), help: "Folder (searched with its subfolders) where the prompt's <lora:NAME:WEIGHT> tags find NAME.safetensors/.pt/.ckpt/.bin; the tags are removed from the prompt text and the LoRAs recorded as \"Lora hashes\".")
    var loraDir: String?

    @Option(help: "Random seed (default: random; it is printed and stored in the PNG).")
    var seed: UInt64?

    @Option(help: "Random number generator: torch (torch.Generator on x86 CPUs; the web UIs' \"CPU\" source), torch-scalar (ARM/portable torch) or cuda (torch.Generator(\"cuda\"): the web UIs' GPU noise on NVIDIA cards, bit-exact with AUTOMATIC1111's \"NV\" source).")
    var rng: String = "torch"

    @Option(name: .customLong("cuda-sms"), help: "With --rng cuda: the GPU's multiprocessor count (e.g. 82 for an RTX 3090, 128 for an RTX 4090). Only changes tensors larger than the GPU's resident threads; give it with --cuda-threads-per-sm.")
    var cudaSMs: Int?

    @Option(name: .customLong("cuda-threads-per-sm"), help: "With --rng cuda: the GPU's maxThreadsPerMultiProcessor (1536 for RTX 30/40, 2048 for A100/H100, 1024 for RTX 20).")
    var cudaThreadsPerSM: Int?

    @Option(name: .customLong("batch-size"), help: "Images to generate in one batch (written as FILE-1.png, FILE-2.png, ...).")
    var batchSize: Int = 1

    @Option(help: "Output PNG file.")
    var output: String

    @Flag(help: "Replace existing output files.")
    var overwrite = false

    @Flag(help: "No progress bar or messages.")
    var quiet = false

    // Default auto: on a CPU with native bf16 the bf16 UNet is 0.61x the float32 time (2-core Zen 4,
    // docs/benchmarks.md) and its weights, held in bf16 from the load, take half the memory; elsewhere auto is f32.
    @Option(help: "Compute precision: auto (default: bf16 where the ISA level in use has native bf16, AVX512_BF16 or AMX, with Linear/Conv2d weights held in bf16; float32 elsewhere, e.g. on AVX2-only CPUs or with LDM_ISA=avx512), f32 (the same image as diffusers in float32 for the same seed, on every CPU) bf16 (convolutions and linear layers in bf16, float32 accumulation; emulated, so slower, on CPUs without native bf16) or int8 (the UNet's linear layers and convolutions with int8 weights, quantised at load, and int8 activations on AVX512_VNNI; the rest float32; needs a CPU with AVX512_VNNI).")
    var precision: String = "auto"

    /// `body` (a command's work) at the --precision asked for.
    func compute(_ body: () throws -> Void) throws {
        guard let p = ComputePrecision(rawValue: precision) else {
            throw CLIError("--precision must be auto, f32, bf16 or int8, got \(precision)")
        }
        if p == .int8, let why = Int8Compute.unavailableReason { throw CLIError("--precision int8: \(why)") }
        if p == .bf16 && !p.isNative { log("--precision bf16: this CPU has no native bf16 in use (\(CPUFeatures.active.name)); emulated on float32 kernels") }
        else if p == .auto { log("precision: \(p.resolved == .bfloat16 ? "bf16 (native)" : "float32")") }
        try worded { try p.run(body) }
    }

    /// Checks every option and file that does not need the model; returns the sampling options and output paths.
    func check(defaultSteps: Int = 50) throws -> (SamplingOptions, [String]) {
        guard ["torch", "torch-scalar", "cuda"].contains(rng) else { throw CLIError("--rng must be torch, torch-scalar or cuda, got \(rng)") }
        _ = try cudaDevice()
        let o = SamplingOptions(sampler: sampler, steps: steps ?? defaultSteps, eta: eta, batchSize: batchSize,
                                timestepSpacing: timestepSpacing)
        try o.validate()
        try FileChecks.modelPath(model)
        if config != nil {
            if DiffusersFolder.isFolder(URL(fileURLWithPath: model)) { throw CLIError("--config is for CompVis checkpoint files; \(model) is a diffusers folder") }
        }
        if diffusersConfigFolder != nil {
            if bertVocab != nil { throw CLIError("--bert-vocab is for CompVis LDM-BERT checkpoints given with a YAML --config") }
        } else if config != nil {
            let c = try compVisConfig()
            if c.condName == "BERTEmbedder", !c.isLayout { _ = try bertVocabularyURL() }
            if c.isLayout, bertVocab != nil { throw CLIError("--bert-vocab is for LDM-BERT text-to-image; a layout model takes no vocabulary") }
        } else if bertVocab != nil {
            throw CLIError("--bert-vocab is for CompVis LDM-BERT checkpoints given with --config")
        }
        let paths = FileChecks.outputPaths(output, batch: batchSize)
        try FileChecks.outputs(paths, overwrite: overwrite)
        return (o, paths)
    }

    /// The --lora files and the prompt's <lora:> tags, then the LCM defaults they or the model call for (see
    /// `lcmDefaults`): the three prompt-driven generation commands start this way.
    func lorasWithLCMDefaults(_ o: inout SamplingOptions, summary: ModelSummary, prompt: PromptArguments) throws
        -> (loras: [(file: LoRAFile, weight: Float, unetWeight: Float?)], lcmGuidance: Double?) {
        let loras = try self.loras(tags: prompt.loraTags())
        let lcmLoRA = loras.contains { $0.file.name.lowercased().contains("lcm") }
        return (loras, lcmDefaults(&o, summary: summary, lcmLoRA: lcmLoRA, cfgGiven: prompt.cfgScale != nil))
    }

    /// Defaults that fit latent consistency models (a UNet with time_cond_proj_dim, or an LCM-LoRA): sampler lcm and
    /// 4 steps unless given, and says so. Returns the guidance default for `PromptArguments.check` (nil: not an LCM):
    /// 8.5 for LatentConsistencyModelPipeline-style UNets (diffusers' default; guidance there is the UNet's w
    /// embedding, so cfg 1 would mean w = 0, outside LCM's training range), 1 for an LCM-LoRA (no negative-prompt
    /// pass: half the UNet work; the LCM-LoRA recipe's 1-2).
    func lcmDefaults(_ o: inout SamplingOptions, summary: ModelSummary, lcmLoRA: Bool, cfgGiven: Bool) -> Double? {
        guard summary.timeCondProjDim != nil || lcmLoRA else { return nil }
        let cfg = summary.timeCondProjDim != nil ? 8.5 : 1.0
        var notes: [String] = []
        if sampler == nil {
            o.sampler = "lcm"
            notes.append("sampler lcm")
        }
        if steps == nil {
            o.steps = 4
            notes.append("4 steps")
        }
        if !cfgGiven { notes.append("cfg scale \(cfg)") }
        if !notes.isEmpty {
            log("\(lcmLoRA ? "LCM-LoRA" : "latent consistency model"): using \(notes.joined(separator: ", ")) (override with --sampler, --steps, --cfg-scale)")
        }
        return cfg
    }

    var resolvedSeed: UInt64 { seed ?? UInt64.random(in: 0..<(1 << 32)) }

    /// The GPU whose launch configuration --rng cuda reproduces (nil: one element per thread, A1111's "NV").
    func cudaDevice() throws -> CUDAGenerator.Device? {
        switch (cudaSMs, cudaThreadsPerSM) {
        case (nil, nil): return nil
        case let (sms?, threads?):
            guard rng == "cuda" else { throw CLIError("--cuda-sms and --cuda-threads-per-sm need --rng cuda") }
            guard (1...1024).contains(sms) else { throw CLIError("--cuda-sms must be in 1...1024, got \(sms)") }
            guard (256...4096).contains(threads), threads % 32 == 0 else {
                throw CLIError("--cuda-threads-per-sm must be a multiple of 32 in 256...4096, got \(threads)")
            }
            return CUDAGenerator.Device(multiprocessorCount: sms, maxThreadsPerMultiprocessor: threads)
        default: throw CLIError("--cuda-sms and --cuda-threads-per-sm go together")
        }
    }

    func generator(seed: UInt64) -> RandomSource {
        if rng == "cuda" { return CUDAGenerator(seed: seed, device: try? cudaDevice()) }
        return TorchGenerator(seed: seed, normalKernel: rng == "torch-scalar" ? .scalar : .avx2)
    }

    /// The web UI's infotext "RNG" value (modules/processing.py: randn_source "CPU", "GPU" or "NV"): torch's CPU
    /// generator is "CPU"; --rng cuda is exactly the "NV" generator, or "GPU" when a device's launch is reproduced.
    var webUIRNG: String { rng == "cuda" ? (cudaSMs != nil ? "GPU" : "NV") : "CPU" }

    /// Reads the model's configs (not its weights) and checks it can serve the command.
    func summary() throws -> ModelSummary {
        guard config != nil, diffusersConfigFolder == nil else { return try ModelSummary.read(URL(fileURLWithPath: model)) }
        // The YAML as the checkpoint's weights complete it (the stock YAMLs state sizes the weights may not have).
        return try ModelSummary.read(config: compVisConfig().reconciled(checkpoint: URL(fileURLWithPath: model)).config)
    }

    /// --config naming a folder: the diffusers configs of an SDXL single file.
    var diffusersConfigFolder: URL? {
        config.map { URL(fileURLWithPath: $0) }.flatMap { DiffusersFolder.isFolder($0) ? $0 : nil }
    }

    /// The --config file as its typed configuration, read once per process.
    func compVisConfig() throws -> CompVisModelConfig {
        guard let config else { throw CLIError("no --config given") }
        return try CompVisConfigCache.shared.config(config)
    }

    /// The model: with --config, the CompVis checkpoint built from its YAML; otherwise a folder or single file. The
    /// LoRAs (default: the --lora files) are merged into its weights. Weights are held for inference at the precision
    /// of the `compute` scope this runs in (`WeightStorage.inference`: memory-mapped where the file allows, Linear and
    /// Conv2d weights in bf16 for bf16 compute), and dropped from memory after use (one generation per process).
    func loadBundle(loras: [(file: LoRAFile, weight: Float, unetWeight: Float?)]? = nil) throws -> ModelBundle {
        let networks = try loras ?? self.loras()
        let url = URL(fileURLWithPath: model)
        let load: () throws -> ModelBundle
        if config == nil {
            load = { try ModelBundle.load(url) }
        } else if let folder = diffusersConfigFolder {
            load = { try ModelBundle.load(url, diffusersConfig: folder) }
        } else {
            let c = try compVisConfig()
            let vocab = c.condName == "BERTEmbedder" && !c.isLayout ? try bertVocabularyURL() : nil
            load = { try ModelBundle.load(checkpoint: url, config: c, bertVocabulary: vocab) }
        }
        // int8: the UNet's weights stay as stored (mapped) until they are quantised, below.
        let int8 = ComputePrecision(rawValue: precision) == .int8
        let storage: WeightStorage = int8 ? .asStored : .inference(computing: Autocast.isBF16 ? .bfloat16 : .float32)
        let bundle = try WeightStorage.with(storage, load)
        // Only a CompVis YAML that disagrees with the weights leaves notes.
        if !quiet { for n in bundle.notes { FileHandle.standardError.write("note: \(n)\n".data(using: .utf8)!) } }
        bundle.evictsWeightsAfterUse = true
        if !networks.isEmpty {
            try bundle.mergeLoRAs(withUNetWeights: networks)
            log("merged LoRA " + networks.map { "\($0.file.name) (\($0.weight)\($0.unetWeight.map { ", UNet \($0)" } ?? ""))" }.joined(separator: ", "))
        }
        if int8 {
            let r = try bundle.quantizeUNetToInt8()
            log(String(format: "precision: int8 UNet (%d layers, %.1f MB of int8 weights for %.1f MB in float32)",
                       r.layers, Double(r.int8Bytes) / 1e6, Double(r.elements * 4) / 1e6))
        }
        return bundle
    }

    /// --lora FILE[:WEIGHT] files, then the prompt's tags found in --lora-dir: opened, not yet checked against the model.
    func loras(tags: [LoRATag] = []) throws -> [(file: LoRAFile, weight: Float, unetWeight: Float?)] {
        var out: [(file: LoRAFile, weight: Float, unetWeight: Float?)] = []
        for spec in lora {
            var path = spec, weight: Float = 1
            if let colon = spec.lastIndex(of: ":"), let w = Float(spec[spec.index(after: colon)...]) {
                guard w.isFinite else { throw CLIError("--lora \(spec): the weight must be a finite number") }
                path = String(spec[..<colon])
                weight = w
            }
            guard !path.isEmpty else { throw CLIError("--lora \(spec): no file") }
            out.append((try LoRAFile(url: URL(fileURLWithPath: path)), weight, nil))
        }
        if !tags.isEmpty {
            guard let loraDir else {
                throw CLIError("the prompt has <lora:\(tags[0].name):...> but no --lora-dir to find it in")
            }
            for t in tags { out.append((try LoRAFile(url: LoRAPrompt.resolve(t.name, in: URL(fileURLWithPath: loraDir))), t.weight, t.unetWeight)) }
        }
        return out
    }

    /// "Lora hashes" as AUTOMATIC1111 records them.
    func recordLoRAs(_ g: inout GenerationParameters, _ bundle: ModelBundle) {
        if let h = bundle.appliedLoRAs?.webUIHashes { g.extra.append(.init("Lora hashes", h)) }
    }

    /// --bert-vocab, or vocab.txt beside the checkpoint (BERTEmbedder configs).
    func bertVocabularyURL() throws -> URL {
        try ModelBundle.bertVocabulary(checkpoint: URL(fileURLWithPath: model), explicit: bertVocab.map { URL(fileURLWithPath: $0) })
    }

    func progressBar(_ title: String) -> ProgressBar { ProgressBar(title: title, enabled: !quiet && isatty(STDERR_FILENO) != 0) }

    func log(_ s: String) { if !quiet { FileHandle.standardError.write(Data((s + "\n").utf8)) } }

    /// Writes the images with their web UI parameters; prints the paths unless --quiet.
    func write(_ result: GenerationResult, to paths: [String], parameters: GenerationParameters) throws {
        for (i, (image, path)) in zip(result.images, paths).enumerated() {
            var p = parameters
            p.width = image.width
            p.height = image.height
            if paths.count > 1 { p.extra += [.init("Batch size", "\(paths.count)"), .init("Batch pos", "\(i)")] }
            try image.writePNG(to: path, parameters: p, overwrite: overwrite)
            if !quiet { print(path) }
        }
    }

    /// Web UI infotext fields; `scheduler` names the model's own scheduler class when --sampler is not given.
    func parameters(seed: UInt64, steps: Int, scheduler: String?) -> GenerationParameters {
        GenerationParameters(steps: steps, sampler: webUISamplerName(sampler ?? scheduler ?? "default"), seed: Int(truncatingIfNeeded: seed),
                             model: URL(fileURLWithPath: model).deletingPathExtension().lastPathComponent,
                             extra: (eta != 0 ? [.init("Eta", "\(eta)")] : []) + [.init("RNG", webUIRNG)]
                                + (timestepSpacing.map { [.init("Timestep spacing", $0)] } ?? []))
    }
}

/// The AUTOMATIC1111 display name for a sampler or diffusers scheduler class (unknown names pass through).
func webUISamplerName(_ name: String) -> String {
    let names = ["ddim": "DDIM", "ddimscheduler": "DDIM", "plms": "PLMS", "pndm": "PLMS", "pndmscheduler": "PLMS",
                 "euler": "Euler", "eulerdiscretescheduler": "Euler", "euler-a": "Euler a", "euler_a": "Euler a",
                 "euler-ancestral": "Euler a", "eulerancestraldiscretescheduler": "Euler a", "heun": "Heun",
                 "heundiscretescheduler": "Heun", "lms": "LMS", "lmsdiscretescheduler": "LMS", "dpm++2m": "DPM++ 2M",
                 "dpmsolvermultistepscheduler": "DPM++ 2M", "dpm++2m-karras": "DPM++ 2M Karras", "ddpm": "DDPM",
                 "ddpmscheduler": "DDPM", "lcm": "LCM", "lcmscheduler": "LCM", "tcd": "TCD", "tcdscheduler": "TCD"]
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

    @Option(name: .customLong("cfg-scale"), help: "Classifier-free guidance scale (default 7.5; <= 1 disables guidance). LDM-BERT models (LDMTextToImagePipeline): default 1, any value other than 1 guides.")
    var cfgScale: Double?

    @Option(name: .customLong("clip-skip"), help: "Web UI clip skip: 1 = the text encoder's last layer, 2 = the penultimate, ... (at most its layer count; counted on the encoder the model ships, for SD 2.x diffusers' 23-layer one). Default: the model's.")
    var clipSkip: Int?

    @Option(help: "Prompt syntax: diffusers (default: one 77-token window, brackets are text), or a web UI emphasis mode with 75-token chunks and BREAK: original (\"(word:1.3)\", \"(word)\", \"[word]\" weights, mean restored), no-norm (weights, mean not restored), ignore (syntax stripped, no weights), none (brackets kept as text).")
    var emphasis: String = "diffusers"

    /// `defaultGuidance`: the pipeline's guidance_scale default (7.5 for Stable Diffusion, 1 for LDM-BERT models).
    func check(defaultGuidance: Double = 7.5) throws -> PromptOptions {
        guard let mode = PromptEmphasis(rawValue: emphasis) else {
            throw CLIError("--emphasis must be one of \(PromptEmphasis.allCases.map(\.rawValue).joined(separator: ", ")), got \(emphasis)")
        }
        if let k = clipSkip, k < 1 { throw CLIError("--clip-skip must be >= 1 (1 = last layer), got \(k)") }
        let p = PromptOptions(prompt: try LoRAPrompt.extract(prompt).text, negativePrompt: negativePrompt,
                              guidanceScale: cfgScale ?? defaultGuidance, width: width, height: height, emphasis: mode)
        try p.validate()
        return p
    }

    /// The prompt's `<lora:NAME:WEIGHT>` tags (removed from the text `check` returns).
    func loraTags() throws -> [LoRATag] { try LoRAPrompt.extract(prompt).tags }

    /// --clip-skip as diffusers' clip_skip (0: the last layer), checked against the loaded text encoder's layer count.
    func clipSkip(for bundle: ModelBundle) throws -> Int {
        guard let k = clipSkip else {
            return 0
        }
        let layers = bundle.textEncoder?.layers.count ?? 0
        guard k <= layers else {
            throw CLIError("--clip-skip \(k) is outside 1...\(layers): the text encoder has \(layers) layers")
        }
        return k - 1
    }

    /// Prompt fields of the infotext; "Clip skip" and "Emphasis" as the web UI writes them (processing.py: clip skip
    /// when > 1; sd_hijack_clip.py: the emphasis mode when it is not "Original" and a prompt has "(" or "[").
    func annotate(_ g: inout GenerationParameters, options p: PromptOptions) {
        g.prompt = prompt
        g.negativePrompt = negativePrompt
        g.cfgScale = p.guidanceScale
        if p.clipSkip > 0 {
            g.extra.append(.init("Clip skip", "\(p.clipSkip + 1)"))
        }
        let mode = PromptEmphasis(rawValue: emphasis) ?? .diffusers
        let hasSyntax = [prompt, negativePrompt].contains { $0.contains("(") || $0.contains("[") }
        if mode != .original, hasSyntax { g.extra.append(.init("Emphasis", mode.webUIName ?? "None")) }
    }
}

/// A one-line progress bar on stderr with steps/s and ETA (only drawn when enabled: a terminal and not --quiet).
final class ProgressBar {
    let title: String, enabled: Bool
    let start = Date()
    init(title: String, enabled: Bool) {
        self.title = title
        self.enabled = enabled
    }

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
