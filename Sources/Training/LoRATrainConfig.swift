// The JSON configuration of `ldm train lora`, after kohya-ss sd-scripts train_network.py (network_dim, network_alpha,
// learning_rate, max_train_steps, train_batch_size, resolution, seed, save_every_n_steps, output_name, mixed_precision,
// network_train_unet_only / text encoder LoRA) and diffusers examples/text_to_image/train_text_to_image_lora.py
// (rank, the base model's own noise schedule and prediction type). Every key is checked here, before anything loads:
// unknown keys, wrong types and out-of-range values are errors naming the file and the key.
import Foundation
import Imaging
import TensorCore

public struct LoRATrainConfig {
    /// A diffusers pipeline folder or a single-file checkpoint (resolved by the caller, e.g. `ldm`'s model loader).
    public var baseModel: String
    /// Images with a caption `.txt` beside each (kohya's caption_extension ".txt").
    public var dataDir: String
    public var rank = 4
    /// kohya network_alpha; the update is scaled by alpha / rank. Default: the rank (scale 1).
    public var alpha: Float?
    public var learningRate = 1e-4
    public var maxSteps: Int
    public var batchSize = 1
    public var gradientAccumulationSteps = 1
    public var seed: UInt64 = 0
    /// Training image side; nil: the base model's default image size.
    public var resolution: Int?
    public var targets = LoRATargets()
    /// The exported LoRA file; nil: RUN_DIR/<output_name>.safetensors.
    public var output: String?
    public var outputName: String
    public var runDir: String?
    /// Steps between checkpoints (resumable state); nil: only at the end.
    public var saveEvery: Int?
    public var saveDType: DType = .float32
    public var precision: TrainingPrecision = .float32
    public var lrScheduler = "constant", lrWarmupSteps = 0
    public var maxGradNorm: Float? = 1
    public var weightDecay = 0.01, adamBeta1 = 0.9, adamBeta2 = 0.999, adamEpsilon = 1e-8
    public var condDropProb: Float = 0
    public var randomCrop = false, randomFlip = false
    public var cacheLatents = false
    public var prefetch = true

    static let knownKeys: Set<String> = [
        "base_model", "data_dir", "rank", "alpha", "learning_rate", "max_steps", "batch_size",
        "gradient_accumulation_steps", "seed", "resolution", "targets", "train_text_encoder", "output", "output_name",
        "run_dir", "save_every", "save_dtype", "precision", "mixed_precision", "lr_scheduler", "lr_warmup_steps",
        "max_grad_norm", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "cond_drop_prob", "random_crop",
        "random_flip", "cache_latents", "prefetch",
    ]
    /// Values of `targets`.
    public static let targetNames = ["attention", "projections", "feed_forward"]

    public init(baseModel: String, dataDir: String, maxSteps: Int, outputName: String = "lora") {
        self.baseModel = baseModel
        self.dataDir = dataDir
        self.maxSteps = maxSteps
        self.outputName = outputName
    }

    public static func load(_ url: URL) throws -> LoRATrainConfig {
        guard let data = FileManager.default.contents(atPath: url.path) else { throw TrainingError("cannot read config \(url.path)") }
        return try parse(data, name: url.path, baseDir: url.deletingLastPathComponent(),
                         defaultOutputName: url.deletingPathExtension().lastPathComponent)
    }

    /// Userinfo key of the output name used when the config gives none (the config file's name).
    static let defaultOutputNameKey = CodingUserInfoKey(rawValue: "ldm.trainConfig.defaultOutputName")!

    /// Parses and validates; relative paths are resolved against `baseDir`.
    public static func parse(_ data: Data, name: String = "config", baseDir: URL? = nil, defaultOutputName: String = "lora") throws -> LoRATrainConfig {
        try ConfigReader.decode(LoRATrainConfig.self, from: data, name: name, baseDir: baseDir,
                                userInfo: [defaultOutputNameKey: defaultOutputName])
    }

    /// The LoRA scale numerator (alpha), defaulting to the rank.
    public var effectiveAlpha: Float { alpha ?? Float(rank) }

    /// The run's file: `output`, else RUN_DIR/<output_name>.safetensors.
    public func outputURL(runDir: URL) -> URL {
        output.map { URL(fileURLWithPath: $0) } ?? runDir.appendingPathComponent(outputName + ".safetensors")
    }

    /// The Trainer's options: no EMA (kohya and diffusers' LoRA scripts keep none), checkpoints every `save_every`.
    public func trainerOptions() throws -> TrainerOptions {
        var o = TrainerOptions(learningRate: learningRate, batchSize: batchSize, maxSteps: maxSteps,
                               checkpointEvery: saveEvery ?? maxSteps, seed: seed)
        o.betas = (adamBeta1, adamBeta2)
        o.adamEps = adamEpsilon
        o.weightDecay = weightDecay
        o.maxGradNorm = maxGradNorm
        o.gradientAccumulationSteps = gradientAccumulationSteps
        o.lrSchedule = try LRSchedule(name: lrScheduler, warmup: lrWarmupSteps, total: maxSteps)
        o.emaDecay = nil
        o.prefetch = prefetch
        o.precision = precision
        try o.validate()
        return o
    }
}

extension LoRATrainConfig: Decodable {
    /// Reads and validates a config (`ConfigReader.decode`); every error names the file and the key.
    public init(from decoder: Decoder) throws {
        let r = try ConfigReader(decoder, knownKeys: Self.knownKeys)
        var c = LoRATrainConfig(baseModel: try r.required("base_model", r.existingPath), dataDir: try r.required("data_dir", r.path),
                                maxSteps: try r.required("max_steps", r.positiveInt), outputName: decoder.userInfo[Self.defaultOutputNameKey] as? String ?? "lora")
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: c.dataDir, isDirectory: &isDir), isDir.boolValue else {
            throw r.error("data_dir", "\(c.dataDir) does not exist or is not a folder")
        }
        c.rank = try r.positiveInt("rank") ?? 4
        guard c.rank <= 1024 else { throw r.error("rank", "must be at most 1024, got \(c.rank)") }
        if let a = try r.number("alpha") {
            guard a > 0 else { throw r.error("alpha", "must be positive, got \(a)") }
            c.alpha = Float(a)
        }
        c.learningRate = try r.number("learning_rate") ?? 1e-4
        guard c.learningRate > 0 else { throw r.error("learning_rate", "must be positive, got \(c.learningRate)") }
        c.batchSize = try r.positiveInt("batch_size") ?? 1
        c.gradientAccumulationSteps = try r.positiveInt("gradient_accumulation_steps") ?? 1
        if let s = try r.int("seed") {
            guard s >= 0 else { throw r.error("seed", "must be >= 0, got \(s)") }
            c.seed = UInt64(s)
        }
        c.resolution = try r.positiveInt("resolution")
        if let res = c.resolution, res > maxImageDimension { throw r.error("resolution", "must be at most \(maxImageDimension), got \(res)") }
        if let v = try r.any("targets"), !(v is NSNull) {
            guard let list = v as? [Any], !list.isEmpty else { throw r.error("targets", "must be a non-empty list of \(Self.targetNames.joined(separator: ", "))") }
            var t = LoRATargets(attention: false)
            for item in list {
                guard let s = item as? String, Self.targetNames.contains(s) else {
                    throw r.error("targets", "has \(item); each must be one of \(Self.targetNames.joined(separator: ", "))")
                }
                switch s {
                case "attention": t.attention = true
                case "projections": t.projections = true
                default: t.feedForward = true
                }
            }
            c.targets = t
        }
        c.targets.textEncoder = try r.bool("train_text_encoder", default: false)
        c.output = try r.path("output")
        if let o = c.output, URL(fileURLWithPath: o).pathExtension != "safetensors" {
            throw r.error("output", "must name a .safetensors file, got \(o)")
        }
        if let n = try r.string("output_name") {
            guard !n.contains("/"), n != ".", n != ".." else { throw r.error("output_name", "must be a file name without folders, got \"\(n)\"") }
            c.outputName = n
        }
        c.runDir = try r.path("run_dir")
        c.saveEvery = try r.positiveInt("save_every")
        let dtype = try r.choice("save_dtype", ["float32", "float16", "bfloat16"], default: "float32")
        c.saveDType = DType(rawValue: dtype) ?? .float32
        c.precision = try TrainingPrecision.fromConfig(r)
        c.lrScheduler = try r.choice("lr_scheduler", ["constant", "constant_with_warmup", "linear", "cosine"], default: "constant")
        c.lrWarmupSteps = try r.int("lr_warmup_steps") ?? 0
        guard c.lrWarmupSteps >= 0 else { throw r.error("lr_warmup_steps", "must be >= 0, got \(c.lrWarmupSteps)") }
        if r.isNull("max_grad_norm") {
            c.maxGradNorm = nil
        } else if let n = try r.number("max_grad_norm") {
            guard n > 0 else { throw r.error("max_grad_norm", "must be positive or null, got \(n)") }
            c.maxGradNorm = Float(n)
        }
        c.weightDecay = try r.nonNegative("weight_decay") ?? 0.01
        c.adamBeta1 = try r.number("adam_beta1") ?? 0.9
        c.adamBeta2 = try r.number("adam_beta2") ?? 0.999
        for (k, v) in [("adam_beta1", c.adamBeta1), ("adam_beta2", c.adamBeta2)] where !(0..<1).contains(v) {
            throw r.error(k, "must be in [0, 1), got \(v)")
        }
        c.adamEpsilon = try r.nonNegative("adam_epsilon") ?? 1e-8
        c.condDropProb = Float(try r.number("cond_drop_prob") ?? 0)
        guard (0...1).contains(c.condDropProb) else { throw r.error("cond_drop_prob", "must be in [0, 1], got \(c.condDropProb)") }
        c.randomCrop = try r.bool("random_crop", default: false)
        c.randomFlip = try r.bool("random_flip", default: false)
        c.cacheLatents = try r.bool("cache_latents", default: false)
        guard !(c.cacheLatents && c.randomCrop) else {
            throw r.error("cache_latents", "needs random_crop false: a random crop changes the latent every step")
        }
        c.prefetch = try r.bool("prefetch", default: true)
        _ = try c.trainerOptions()
        self = c
    }
}
