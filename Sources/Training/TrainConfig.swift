// The JSON configuration of `ldm train ldm`, with CompVis-like keys where they exist (configs/latent-diffusion/*.yaml:
// model.base_learning_rate, params.linear_start / linear_end / timesteps / parameterization / loss_type /
// scale_by_std / scale_factor, data.params.batch_size, lightning.trainer.accumulate_grad_batches / max_steps;
// main.py scale_lr: lr = accumulate_grad_batches * batch_size * base_learning_rate), validated at load time.
import Autoencoders
import Diffusion
import Foundation
import TensorCore
import UNetModels

public struct LDMTrainConfig {
    public enum ConditioningType: String { case none, `class`, text }

    public var baseLearningRate: Double
    public var scaleLR = true
    public var batchSize: Int
    public var accumulateGradBatches = 1
    public var maxSteps: Int
    public var ckptEvery: Int
    /// A diffusers unet folder (config.json, optional weights) or a config.json path, or an inline config.
    public var unet: String?
    public var unetConfig: [String: Any]?
    /// A diffusers vae / vqvae folder; nil trains in pixel space.
    public var firstStage: String?
    public var conditioning: ConditioningType = .none
    /// For text conditioning: a transformers CLIPTextModel folder (config.json + model.safetensors, e.g. a pipeline's
    /// text_encoder/) and a CLIP tokenizer folder (vocab.json + merges.txt); captions are the .txt files beside images.
    public var textEncoder: String?, tokenizer: String?
    /// An inline transformers CLIPTextConfig (vocab_size, hidden_size, ...) for a text encoder trained from scratch
    /// with the UNet (CompVis BERTEmbedder text2img models); alternative to `textEncoder`.
    public var textEncoderConfig: [String: Any]?
    /// CompVis cond_stage_trainable: the text encoder's parameters join the optimizer (default: true with
    /// text_encoder_config, false with a text_encoder folder, where true fine-tunes it).
    public var condStageTrainable = false
    /// The value of `tokenizer` that selects the CLIP BPE vocabulary shipped with Tokenizers (openai/clip-vit-*).
    public static let bundledCLIPTokenizer = "openai-clip"
    /// Storage type of the exported weights (unet/, pipeline/unet, a trained pipeline/text_encoder).
    public var exportDType: DType = .float32
    public var dataDir: String
    public var imageSize: Int
    public var randomCrop = true, randomFlip = true
    /// Encode every image once and keep the first stage's outputs in RUN_DIR/latent_cache.safetensors (LatentCache.swift);
    /// needs a first_stage and random_crop false (with random_flip both flips are cached).
    public var cacheLatents = false
    /// Prepare the next batch on a background thread during each step (BatchLoader.swift); same batches either way.
    public var prefetch = true
    public var seed: UInt64 = 23
    public var emaDecay: Float? = 0.9999
    public var parameterization: Parameterization = .eps
    public var lossType: LossType = .l2
    public var condDropProb: Float = 0
    public var scaleByStd = false
    public var scaleFactor: Float?
    public var timesteps = 1000
    public var linearStart = 0.00085, linearEnd = 0.012
    /// CompVis names: "linear" (linear in sqrt(beta), diffusers scaled_linear), "cosine", "sqrt_linear", "sqrt".
    public var betaSchedule = "linear"
    public var lrScheduler = "constant", lrWarmupSteps = 0
    public var weightDecay = 0.01, adamBeta1 = 0.9, adamBeta2 = 0.999, adamEpsilon = 1e-8
    public var maxGradNorm: Float? = 1
    public var runDir: String?
    /// Steps between sample grids written to runDir/samples (by `ldm train ldm`); nil: no samples.
    public var sampleEvery: Int?
    /// DDIM steps of those sample grids.
    public var sampleSteps = 20
    /// `precision` ("32-true" | "bf16-mixed", Lightning) or `mixed_precision` ("no" | "bf16", accelerate).
    public var precision: TrainingPrecision = .float32

    static let knownKeys: Set<String> = [
        "base_learning_rate", "scale_lr", "batch_size", "accumulate_grad_batches", "max_steps", "ckpt_every", "unet",
        "unet_config", "first_stage", "conditioning", "text_encoder", "tokenizer", "data_dir", "image_size", "random_crop", "random_flip", "seed",
        "ema_decay", "use_ema", "parameterization", "loss_type", "cond_drop_prob", "scale_by_std", "scale_factor",
        "timesteps", "linear_start", "linear_end", "beta_schedule", "lr_scheduler", "lr_warmup_steps", "weight_decay",
        "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "run_dir", "sample_every", "sample_steps",
        "text_encoder_config", "cond_stage_trainable", "export_dtype", "cache_latents", "prefetch", "precision",
        "mixed_precision",
    ]

    public static func load(_ url: URL) throws -> LDMTrainConfig {
        guard let data = FileManager.default.contents(atPath: url.path) else { throw TrainingError("cannot read config \(url.path)") }
        return try parse(data, name: url.path, baseDir: url.deletingLastPathComponent())
    }

    /// Parses and validates; relative paths are resolved against `baseDir`.
    public static func parse(_ data: Data, name: String = "config", baseDir: URL? = nil) throws -> LDMTrainConfig {
        guard let obj = try? JSONSerialization.jsonObject(with: data), let d = obj as? [String: Any] else {
            throw TrainingError("\(name): not a JSON object")
        }
        let unknown = Set(d.keys).subtracting(knownKeys).sorted()
        guard unknown.isEmpty else { throw TrainingError("\(name): unknown keys \(unknown.joined(separator: ", ")) (known: \(knownKeys.sorted().joined(separator: ", ")))") }
        func err(_ key: String, _ why: String) -> TrainingError { TrainingError("\(name): \(key) \(why)") }
        func number(_ key: String) throws -> Double? {
            guard let v = d[key], !(v is NSNull) else { return nil }
            guard let n = v as? NSNumber, !LDMTrainConfig.isJSONBool(n), n.doubleValue.isFinite else { throw err(key, "must be a number") }
            return n.doubleValue
        }
        func int(_ key: String) throws -> Int? {
            guard let x = try number(key) else { return nil }
            guard x == x.rounded(), abs(x) < 1e15 else { throw err(key, "must be an integer, got \(x)") }
            return Int(x)
        }
        func required<T>(_ key: String, _ get: (String) throws -> T?) throws -> T {
            guard let v = try get(key) else { throw err(key, "is missing") }
            return v
        }
        func string(_ key: String) throws -> String? {
            guard let v = d[key], !(v is NSNull) else { return nil }
            guard let s = v as? String, !s.isEmpty else { throw err(key, "must be a non-empty string") }
            return s
        }
        func bool(_ key: String) throws -> Bool? {
            guard let v = d[key], !(v is NSNull) else { return nil }
            guard let n = v as? NSNumber, LDMTrainConfig.isJSONBool(n) else { throw err(key, "must be true or false") }
            return n.boolValue
        }
        func path(_ key: String) throws -> String? {
            try string(key).map { p in p.hasPrefix("/") || baseDir == nil ? p : baseDir!.appendingPathComponent(p).path }
        }
        func positive(_ key: String, _ v: Int) throws -> Int { guard v > 0 else { throw err(key, "must be positive, got \(v)") }; return v }
        func choice<E: RawRepresentable>(_ key: String, _ def: E) throws -> E where E.RawValue == String {
            guard let s = try string(key) else { return def }
            guard let e = E(rawValue: s) else { throw err(key, "has invalid value \"\(s)\"") }
            return e
        }

        var c = LDMTrainConfig(baseLearningRate: try required("base_learning_rate", number), batchSize: try positive("batch_size", try required("batch_size", int)),
                               maxSteps: try positive("max_steps", try required("max_steps", int)),
                               ckptEvery: try positive("ckpt_every", try required("ckpt_every", int)),
                               dataDir: try required("data_dir", path), imageSize: try positive("image_size", try required("image_size", int)))
        guard c.baseLearningRate > 0 else { throw err("base_learning_rate", "must be positive") }
        c.scaleLR = try bool("scale_lr") ?? true
        c.accumulateGradBatches = try positive("accumulate_grad_batches", try int("accumulate_grad_batches") ?? 1)
        c.unet = try path("unet")
        if let v = d["unet_config"], !(v is NSNull) {
            guard let u = v as? [String: Any] else { throw err("unet_config", "must be a JSON object") }
            c.unetConfig = u
        }
        guard (c.unet == nil) != (c.unetConfig == nil) else { throw TrainingError("\(name): give exactly one of unet (path) and unet_config (inline)") }
        c.firstStage = try path("first_stage")
        c.conditioning = try choice("conditioning", ConditioningType.none)
        c.textEncoder = try path("text_encoder")
        c.tokenizer = try string("tokenizer") == bundledCLIPTokenizer ? bundledCLIPTokenizer : try path("tokenizer")
        if let v = d["text_encoder_config"], !(v is NSNull) {
            guard let t = v as? [String: Any] else { throw err("text_encoder_config", "must be a JSON object (a transformers CLIPTextConfig)") }
            c.textEncoderConfig = t
        }
        let hasEncoder = c.textEncoder != nil || c.textEncoderConfig != nil
        guard (c.conditioning == .text) == hasEncoder, (c.conditioning == .text) == (c.tokenizer != nil) else {
            throw TrainingError("\(name): text_encoder and tokenizer (or text_encoder_config and tokenizer) are needed for, and only for, conditioning \"text\"")
        }
        guard c.textEncoder == nil || c.textEncoderConfig == nil else {
            throw TrainingError("\(name): give one of text_encoder (a pretrained folder) and text_encoder_config (trained from scratch), not both")
        }
        let trainable = try bool("cond_stage_trainable")
        guard trainable == nil || c.conditioning == .text else { throw err("cond_stage_trainable", "needs conditioning \"text\"") }
        guard !(trainable == false && c.textEncoderConfig != nil) else {
            throw err("cond_stage_trainable", "cannot be false with text_encoder_config (a randomly initialised encoder must be trained)")
        }
        c.condStageTrainable = trainable ?? (c.textEncoderConfig != nil)
        if let t = c.textEncoderConfig {
            do { _ = try c.textEncoderCLIPConfig(t) } catch { throw err("text_encoder_config", "is not a valid CLIPTextConfig: \(error)") }
        }
        let dtype = try string("export_dtype") ?? "float32"
        guard let exportDType = DType(rawValue: dtype) else { throw err("export_dtype", "must be one of float32, bfloat16, float16, got \"\(dtype)\"") }
        c.exportDType = exportDType
        c.randomCrop = try bool("random_crop") ?? true
        c.randomFlip = try bool("random_flip") ?? true
        c.cacheLatents = try bool("cache_latents") ?? false
        c.prefetch = try bool("prefetch") ?? true
        c.precision = try TrainingPrecision.fromConfig(d, name: name)
        if c.cacheLatents {
            guard c.firstStage != nil else { throw err("cache_latents", "needs a first_stage (in pixel space there is nothing to encode)") }
            guard !c.randomCrop else {
                throw err("cache_latents", "needs random_crop false: a random crop changes the latent every step (random_flip is fine: both flips are cached)")
            }
        }
        if let s = try int("seed") { guard s >= 0 else { throw err("seed", "must be >= 0") }; c.seed = UInt64(s) }
        let useEma = try bool("use_ema") ?? true
        let decay = try number("ema_decay") ?? 0.9999
        guard (0...1).contains(decay) else { throw err("ema_decay", "must be in [0, 1], got \(decay)") }
        c.emaDecay = useEma ? Float(decay) : nil
        c.parameterization = try choice("parameterization", Parameterization.eps)
        c.lossType = try choice("loss_type", LossType.l2)
        c.condDropProb = Float(try number("cond_drop_prob") ?? 0)
        guard (0...1).contains(c.condDropProb) else { throw err("cond_drop_prob", "must be in [0, 1], got \(c.condDropProb)") }
        guard c.condDropProb == 0 || c.conditioning != .none else { throw err("cond_drop_prob", "needs conditioning \"class\" or \"text\"") }
        c.scaleByStd = try bool("scale_by_std") ?? false
        c.scaleFactor = try number("scale_factor").map(Float.init)
        if let s = c.scaleFactor, !(s > 0) { throw err("scale_factor", "must be positive, got \(s)") }
        guard !(c.scaleByStd && c.scaleFactor != nil && c.scaleFactor != 1) else { throw TrainingError("\(name): scale_by_std and a custom scale_factor exclude each other (CompVis asserts this too)") }
        c.timesteps = try int("timesteps") ?? 1000
        guard c.timesteps >= 2 else { throw err("timesteps", "must be >= 2") }
        c.linearStart = try number("linear_start") ?? 0.00085
        c.linearEnd = try number("linear_end") ?? 0.012
        guard c.linearStart > 0, c.linearEnd >= c.linearStart, c.linearEnd < 1 else { throw TrainingError("\(name): need 0 < linear_start <= linear_end < 1") }
        c.betaSchedule = try string("beta_schedule") ?? "linear"
        c.lrScheduler = try string("lr_scheduler") ?? "constant"
        c.lrWarmupSteps = try int("lr_warmup_steps") ?? 0
        _ = try LRSchedule(name: c.lrScheduler, warmup: c.lrWarmupSteps, total: c.maxSteps)
        _ = try c.noiseSchedule()
        c.weightDecay = try number("weight_decay") ?? 0.01
        c.adamBeta1 = try number("adam_beta1") ?? 0.9
        c.adamBeta2 = try number("adam_beta2") ?? 0.999
        c.adamEpsilon = try number("adam_epsilon") ?? 1e-8
        if d["max_grad_norm"] is NSNull { c.maxGradNorm = nil } else if let n = try number("max_grad_norm") {
            guard n > 0 else { throw err("max_grad_norm", "must be positive or null") }
            c.maxGradNorm = Float(n)
        }
        c.runDir = try path("run_dir")
        c.sampleEvery = try int("sample_every").map { try positive("sample_every", $0) }
        c.sampleSteps = try positive("sample_steps", try int("sample_steps") ?? 20)
        guard c.sampleSteps <= c.timesteps else { throw err("sample_steps", "must be at most timesteps (\(c.timesteps)), got \(c.sampleSteps)") }
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: c.dataDir, isDirectory: &isDir), isDir.boolValue else {
            throw err("data_dir", "\(c.dataDir) does not exist or is not a folder")
        }
        for (key, p) in [("unet", c.unet), ("first_stage", c.firstStage), ("text_encoder", c.textEncoder),
                         ("tokenizer", c.tokenizer == bundledCLIPTokenizer ? nil : c.tokenizer)] {
            if let p, !FileManager.default.fileExists(atPath: p) { throw err(key, "\(p) does not exist") }
        }
        _ = try c.trainerOptions()
        return c
    }

    /// JSONSerialization gives booleans as NSNumber of objCType "c" (integers are "i" / "q").
    static func isJSONBool(_ n: NSNumber) -> Bool { String(cString: n.objCType) == "c" }

    /// CompVis make_beta_schedule (float64, as the reference registers its buffers from numpy).
    public func noiseSchedule() throws -> NoiseSchedule {
        let kind: BetaSchedule
        switch betaSchedule {
        case "linear", "scaled_linear": kind = .scaledLinear
        case "cosine": kind = .cosine
        case "sqrt_linear": kind = .sqrtLinear
        case "sqrt": kind = .sqrt
        default: throw TrainingError("beta_schedule \"\(betaSchedule)\" is not one of linear, scaled_linear, cosine, sqrt_linear, sqrt")
        }
        return try NoiseSchedule(schedule: kind, trainSteps: timesteps, betaStart: linearStart, betaEnd: linearEnd, precision: .float64)
    }

    /// The diffusers scheduler config of the training schedule, for sampling with it: CompVis "linear" (linear in
    /// sqrt(beta)) is diffusers "scaled_linear", "sqrt_linear" is "linear", "cosine" is "squaredcos_cap_v2"; the betas
    /// themselves travel as trained_betas so every schedule (also CompVis "sqrt") is reproduced. Prediction type from
    /// the parameterization; no sample clipping (CompVis DDIMSampler does not clip).
    public func samplingSchedulerConfig(className: String = "DDIMScheduler") throws -> SchedulerConfig {
        var s = SchedulerConfig()
        s.className = className
        s.numTrainTimesteps = timesteps
        s.betaStart = linearStart; s.betaEnd = linearEnd
        s.betaSchedule = ["linear": "scaled_linear", "scaled_linear": "scaled_linear", "sqrt_linear": "linear",
                          "cosine": "squaredcos_cap_v2"][betaSchedule]
        s.trainedBetas = try noiseSchedule().betas
        switch parameterization {
        case .eps: s.predictionType = PredictionType.epsilon.rawValue
        case .x0: s.predictionType = PredictionType.sample.rawValue
        case .v: s.predictionType = PredictionType.vPrediction.rawValue
        }
        s.clipSample = false; s.setAlphaToOne = false; s.stepsOffset = 1
        return s
    }

    /// lr = accumulate_grad_batches * batch_size * base_learning_rate when scale_lr (CompVis main.py, one device).
    public var learningRate: Double { scaleLR ? Double(accumulateGradBatches * batchSize) * baseLearningRate : baseLearningRate }

    public func trainerOptions() throws -> TrainerOptions {
        var o = TrainerOptions(learningRate: learningRate, batchSize: batchSize, maxSteps: maxSteps, checkpointEvery: ckptEvery, seed: seed)
        o.betas = (adamBeta1, adamBeta2); o.adamEps = adamEpsilon; o.weightDecay = weightDecay
        o.maxGradNorm = maxGradNorm; o.gradientAccumulationSteps = accumulateGradBatches
        o.lrSchedule = try LRSchedule(name: lrScheduler, warmup: lrWarmupSteps, total: maxSteps)
        o.emaDecay = emaDecay; o.scaleByStd = scaleByStd; o.scaleFactor = scaleFactor ?? 1
        o.sampleEvery = sampleEvery
        o.exportDType = exportDType
        o.prefetch = prefetch
        o.precision = precision
        try o.validate()
        guard (0..<1).contains(adamBeta1), (0..<1).contains(adamBeta2), adamEpsilon >= 0, weightDecay >= 0 else {
            throw TrainingError("adam_beta1 / adam_beta2 must be in [0, 1), adam_epsilon and weight_decay >= 0")
        }
        return o
    }
}
