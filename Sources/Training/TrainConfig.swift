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
        try ConfigReader.decode(LDMTrainConfig.self, from: data, name: name, baseDir: baseDir)
    }

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
        s.betaStart = linearStart
        s.betaEnd = linearEnd
        s.betaSchedule = ["linear": "scaled_linear", "scaled_linear": "scaled_linear", "sqrt_linear": "linear",
                          "cosine": "squaredcos_cap_v2"][betaSchedule]
        s.trainedBetas = try noiseSchedule().betas
        switch parameterization {
        case .eps: s.predictionType = PredictionType.epsilon.rawValue
        case .x0: s.predictionType = PredictionType.sample.rawValue
        case .v: s.predictionType = PredictionType.vPrediction.rawValue
        }
        s.clipSample = false
        s.setAlphaToOne = false
        s.stepsOffset = 1
        return s
    }

    /// lr = accumulate_grad_batches * batch_size * base_learning_rate when scale_lr (CompVis main.py, one device).
    public var learningRate: Double { scaleLR ? Double(accumulateGradBatches * batchSize) * baseLearningRate : baseLearningRate }

    public func trainerOptions() throws -> TrainerOptions {
        var o = TrainerOptions(learningRate: learningRate, batchSize: batchSize, maxSteps: maxSteps, checkpointEvery: ckptEvery, seed: seed)
        o.betas = (adamBeta1, adamBeta2)
        o.adamEps = adamEpsilon
        o.weightDecay = weightDecay
        o.maxGradNorm = maxGradNorm
        o.gradientAccumulationSteps = accumulateGradBatches
        o.lrSchedule = try LRSchedule(name: lrScheduler, warmup: lrWarmupSteps, total: maxSteps)
        o.emaDecay = emaDecay
        o.scaleByStd = scaleByStd
        o.scaleFactor = scaleFactor ?? 1
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

extension LDMTrainConfig: Decodable {
    /// Reads and validates a config (`ConfigReader.decode`); every error names the file and the key.
    public init(from decoder: Decoder) throws {
        let r = try ConfigReader(decoder, knownKeys: Self.knownKeys)
        let name = r.name
        var c = LDMTrainConfig(baseLearningRate: try r.required("base_learning_rate", r.number),
                               batchSize: try r.positive("batch_size", try r.required("batch_size", r.int)),
                               maxSteps: try r.positive("max_steps", try r.required("max_steps", r.int)),
                               ckptEvery: try r.positive("ckpt_every", try r.required("ckpt_every", r.int)),
                               dataDir: try r.required("data_dir", r.path),
                               imageSize: try r.positive("image_size", try r.required("image_size", r.int)))
        guard c.baseLearningRate > 0 else { throw r.error("base_learning_rate", "must be positive") }
        c.scaleLR = try r.bool("scale_lr", default: true)
        c.accumulateGradBatches = try r.positive("accumulate_grad_batches", try r.int("accumulate_grad_batches") ?? 1)
        c.unet = try r.path("unet")
        c.unetConfig = try r.object("unet_config")
        guard (c.unet == nil) != (c.unetConfig == nil) else { throw TrainingError("\(name): give exactly one of unet (path) and unet_config (inline)") }
        c.firstStage = try r.path("first_stage")
        c.conditioning = try r.choice("conditioning", default: ConditioningType.none)
        c.textEncoder = try r.path("text_encoder")
        c.tokenizer = try r.string("tokenizer") == Self.bundledCLIPTokenizer ? Self.bundledCLIPTokenizer : try r.path("tokenizer")
        c.textEncoderConfig = try r.object("text_encoder_config", "must be a JSON object (a transformers CLIPTextConfig)")
        let hasEncoder = c.textEncoder != nil || c.textEncoderConfig != nil
        guard (c.conditioning == .text) == hasEncoder, (c.conditioning == .text) == (c.tokenizer != nil) else {
            throw TrainingError("\(name): text_encoder and tokenizer (or text_encoder_config and tokenizer) are needed for, and only for, conditioning \"text\"")
        }
        guard c.textEncoder == nil || c.textEncoderConfig == nil else {
            throw TrainingError("\(name): give one of text_encoder (a pretrained folder) and text_encoder_config (trained from scratch), not both")
        }
        let trainable = try r.bool("cond_stage_trainable")
        guard trainable == nil || c.conditioning == .text else { throw r.error("cond_stage_trainable", "needs conditioning \"text\"") }
        guard !(trainable == false && c.textEncoderConfig != nil) else {
            throw r.error("cond_stage_trainable", "cannot be false with text_encoder_config (a randomly initialised encoder must be trained)")
        }
        c.condStageTrainable = trainable ?? (c.textEncoderConfig != nil)
        if let t = c.textEncoderConfig {
            do { _ = try c.textEncoderCLIPConfig(t) } catch { throw r.error("text_encoder_config", "is not a valid CLIPTextConfig: \(error)") }
        }
        let dtype = try r.string("export_dtype") ?? "float32"
        guard let exportDType = DType(rawValue: dtype) else { throw r.error("export_dtype", "must be one of float32, bfloat16, float16, got \"\(dtype)\"") }
        c.exportDType = exportDType
        c.randomCrop = try r.bool("random_crop", default: true)
        c.randomFlip = try r.bool("random_flip", default: true)
        c.cacheLatents = try r.bool("cache_latents", default: false)
        c.prefetch = try r.bool("prefetch", default: true)
        c.precision = try TrainingPrecision.fromConfig(r)
        if c.cacheLatents {
            guard c.firstStage != nil else { throw r.error("cache_latents", "needs a first_stage (in pixel space there is nothing to encode)") }
            guard !c.randomCrop else {
                throw r.error("cache_latents", "needs random_crop false: a random crop changes the latent every step (random_flip is fine: both flips are cached)")
            }
        }
        if let s = try r.int("seed") {
            guard s >= 0 else { throw r.error("seed", "must be >= 0") }
            c.seed = UInt64(s)
        }
        let useEma = try r.bool("use_ema", default: true)
        let decay = try r.number("ema_decay") ?? 0.9999
        guard (0...1).contains(decay) else { throw r.error("ema_decay", "must be in [0, 1], got \(decay)") }
        c.emaDecay = useEma ? Float(decay) : nil
        c.parameterization = try r.choice("parameterization", default: Parameterization.eps)
        c.lossType = try r.choice("loss_type", default: LossType.l2)
        c.condDropProb = Float(try r.number("cond_drop_prob") ?? 0)
        guard (0...1).contains(c.condDropProb) else { throw r.error("cond_drop_prob", "must be in [0, 1], got \(c.condDropProb)") }
        guard c.condDropProb == 0 || c.conditioning != .none else { throw r.error("cond_drop_prob", "needs conditioning \"class\" or \"text\"") }
        c.scaleByStd = try r.bool("scale_by_std", default: false)
        c.scaleFactor = try r.number("scale_factor").map(Float.init)
        if let s = c.scaleFactor, !(s > 0) { throw r.error("scale_factor", "must be positive, got \(s)") }
        guard !(c.scaleByStd && c.scaleFactor != nil && c.scaleFactor != 1) else {
            throw TrainingError("\(name): scale_by_std and a custom scale_factor exclude each other (CompVis asserts this too)")
        }
        c.timesteps = try r.int("timesteps") ?? 1000
        guard c.timesteps >= 2 else { throw r.error("timesteps", "must be >= 2") }
        c.linearStart = try r.number("linear_start") ?? 0.00085
        c.linearEnd = try r.number("linear_end") ?? 0.012
        guard c.linearStart > 0, c.linearEnd >= c.linearStart, c.linearEnd < 1 else { throw TrainingError("\(name): need 0 < linear_start <= linear_end < 1") }
        c.betaSchedule = try r.string("beta_schedule") ?? "linear"
        c.lrScheduler = try r.string("lr_scheduler") ?? "constant"
        c.lrWarmupSteps = try r.int("lr_warmup_steps") ?? 0
        _ = try LRSchedule(name: c.lrScheduler, warmup: c.lrWarmupSteps, total: c.maxSteps)
        _ = try c.noiseSchedule()
        c.weightDecay = try r.number("weight_decay") ?? 0.01
        c.adamBeta1 = try r.number("adam_beta1") ?? 0.9
        c.adamBeta2 = try r.number("adam_beta2") ?? 0.999
        c.adamEpsilon = try r.number("adam_epsilon") ?? 1e-8
        if r.isNull("max_grad_norm") {
            c.maxGradNorm = nil
        } else if let n = try r.number("max_grad_norm") {
            guard n > 0 else { throw r.error("max_grad_norm", "must be positive or null") }
            c.maxGradNorm = Float(n)
        }
        c.runDir = try r.path("run_dir")
        c.sampleEvery = try r.int("sample_every").map { try r.positive("sample_every", $0) }
        c.sampleSteps = try r.positive("sample_steps", try r.int("sample_steps") ?? 20)
        guard c.sampleSteps <= c.timesteps else { throw r.error("sample_steps", "must be at most timesteps (\(c.timesteps)), got \(c.sampleSteps)") }
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: c.dataDir, isDirectory: &isDir), isDir.boolValue else {
            throw r.error("data_dir", "\(c.dataDir) does not exist or is not a folder")
        }
        for (key, p) in [("unet", c.unet), ("first_stage", c.firstStage), ("text_encoder", c.textEncoder),
                         ("tokenizer", c.tokenizer == Self.bundledCLIPTokenizer ? nil : c.tokenizer)] {
            if let p, !FileManager.default.fileExists(atPath: p) { throw r.error(key, "\(p) does not exist") }
        }
        _ = try c.trainerOptions()
        self = c
    }
}
