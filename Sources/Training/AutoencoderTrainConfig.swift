// The JSON configuration of `ldm train autoencoder`, with the keys of CompVis configs/autoencoder/*.yaml where they
// exist (model.base_learning_rate, lossconfig.params: disc_start, kl_weight, disc_weight, perceptual_weight,
// codebook_weight, logvar_init, disc_factor, disc_num_layers, disc_in_channels, disc_loss, pixelloss;
// data.params.batch_size; lightning.trainer.accumulate_grad_batches). The model itself is a diffusers
// AutoencoderKL / VQModel config (inline or a folder), so the result loads anywhere a diffusers VAE does.
import Autoencoders
import Foundation
import TensorCore

public struct AutoencoderTrainConfig {
    public enum ModelKind: String { case kl = "AutoencoderKL", vq = "VQModel" }

    public var kind: ModelKind = .kl
    /// A diffusers vae / vqvae folder (fine-tuning when it holds weights), or nil with `modelConfig`.
    public var model: String?
    public var modelConfig: [String: Any]?
    public var baseLearningRate: Double
    public var scaleLR = true
    public var batchSize: Int
    public var maxSteps: Int
    public var ckptEvery: Int
    public var dataDir: String
    public var imageSize: Int
    public var randomCrop = true, randomFlip = true
    /// Decode and augment the next batch on a background thread during each step.
    public var prefetch = true
    public var seed: UInt64 = 23
    // Loss (LPIPSWithDiscriminator / VQLPIPSWithDiscriminator defaults).
    public var klWeight: Float = 1, logvarInit: Float = 0
    public var codebookWeight: Float = 1
    public var pixelLoss: LossType = .l1
    public var perceptualWeight: Float = 1
    /// LPIPS weights: torchvision's vgg16 checkpoint (features.*) and the lpips package's / taming's linear layers
    /// (vgg.pth: lin0..lin4, a legacy torch file read as is), or one combined file in `lpipsVGG`. Without them the perceptual term is off.
    public var lpipsVGG: String?, lpipsLin: String?
    public var discStart = 50001
    public var discWeight: Float = 1, discFactor: Float = 1
    public var discNumLayers = 3, discInChannels = 3, discNDF = 64
    public var discLoss = "hinge"
    /// false: no discriminator at all (the same as disc_start past max_steps, without the memory).
    public var useDiscriminator = true
    // Optimizer: CompVis uses Adam(betas=(0.5, 0.9)) for both the autoencoder and the discriminator.
    public var adamBeta1 = 0.5, adamBeta2 = 0.9, adamEpsilon = 1e-8, weightDecay = 0.0
    public var maxGradNorm: Float?
    public var lrScheduler = "constant", lrWarmupSteps = 0
    public var runDir: String?
    /// Steps between reconstruction grids (inputs above, reconstructions below) in RUN_DIR/samples.
    public var sampleEvery: Int?
    public var exportDType: DType = .float32
    /// `precision` ("32-true" | "bf16-mixed") or `mixed_precision` ("no" | "bf16"), as for `ldm train ldm`.
    public var precision: TrainingPrecision = .float32

    static let knownKeys: Set<String> = [
        "model", "model_config", "base_learning_rate", "scale_lr", "batch_size", "max_steps",
        "ckpt_every", "data_dir", "image_size", "random_crop", "random_flip", "seed", "kl_weight", "logvar_init",
        "codebook_weight", "pixel_loss", "perceptual_weight", "lpips_vgg", "lpips_lin", "disc_start", "disc_weight",
        "disc_factor", "disc_num_layers", "disc_in_channels", "disc_ndf", "disc_loss", "use_discriminator", "adam_beta1",
        "adam_beta2", "adam_epsilon", "weight_decay", "max_grad_norm", "lr_scheduler", "lr_warmup_steps", "run_dir",
        "sample_every", "export_dtype", "prefetch", "precision", "mixed_precision",
    ]

    public static func load(_ url: URL) throws -> AutoencoderTrainConfig {
        guard let data = FileManager.default.contents(atPath: url.path) else { throw TrainingError("cannot read config \(url.path)") }
        return try parse(data, name: url.path, baseDir: url.deletingLastPathComponent())
    }

    /// Parses and validates; relative paths are resolved against `baseDir`.
    public static func parse(_ data: Data, name: String = "config", baseDir: URL? = nil) throws -> AutoencoderTrainConfig {
        try ConfigReader.decode(AutoencoderTrainConfig.self, from: data, name: name, baseDir: baseDir)
    }

    /// lr = batch_size * base_learning_rate when scale_lr (CompVis main.py, one device, no accumulation).
    public var learningRate: Double { scaleLR ? Double(batchSize) * baseLearningRate : baseLearningRate }

    /// The model: the folder's (with its weights when it has any) or a freshly initialised one from the inline config.
    public func makeModel() throws -> FirstStageModel {
        if let model {
            if FirstStageFolder.hasWeights(model) { return try FirstStageModel.load(folder: URL(fileURLWithPath: model)).model }
            return try FirstStageFolder.randomModel(configURL: FirstStageFolder.configURL(model), seed: seed)
        }
        let data = try JSONSerialization.data(withJSONObject: modelConfig!)
        return try FirstStageFolder.randomModel(configData: data, kind: kind, seed: seed)
    }
}

extension AutoencoderTrainConfig: Decodable {
    /// Reads and validates a config (`ConfigReader.decode`); every error names the file and the key.
    public init(from decoder: Decoder) throws {
        let r = try ConfigReader(decoder, knownKeys: Self.knownKeys)
        var c = AutoencoderTrainConfig(baseLearningRate: try r.required("base_learning_rate", r.number),
                                       batchSize: try r.required("batch_size", r.positiveInt),
                                       maxSteps: try r.required("max_steps", r.positiveInt),
                                       ckptEvery: try r.required("ckpt_every", r.positiveInt),
                                       dataDir: try r.required("data_dir", r.existingPath),
                                       imageSize: try r.required("image_size", r.positiveInt))
        guard c.baseLearningRate > 0 else { throw r.error("base_learning_rate", "must be positive") }
        c.model = try r.existingPath("model")
        c.modelConfig = try r.object("model_config")
        guard (c.model == nil) != (c.modelConfig == nil) else { throw TrainingError("\(r.name): give exactly one of model (a folder) and model_config (inline)") }
        let className = try c.modelConfig.map { cfg -> String in
            guard let v = cfg["_class_name"] else { return ModelKind.kl.rawValue }
            guard let s = v as? String else { throw r.error("model_config._class_name", "must be a string") }
            return s
        } ?? (try FirstStageFolder.className(c.model!))
        guard let kind = ModelKind(rawValue: className) else {
            throw r.error(c.model == nil ? "model_config._class_name" : "model", "must be AutoencoderKL or VQModel, got \(className)")
        }
        c.kind = kind
        c.scaleLR = try r.bool("scale_lr", default: true)
        c.randomCrop = try r.bool("random_crop", default: true)
        c.randomFlip = try r.bool("random_flip", default: true)
        c.prefetch = try r.bool("prefetch", default: true)
        c.precision = try TrainingPrecision.fromConfig(r)
        if let s = try r.int("seed") {
            guard s >= 0 else { throw r.error("seed", "must be >= 0") }
            c.seed = UInt64(s)
        }
        c.klWeight = Float(try r.nonNegative("kl_weight") ?? 1)
        c.logvarInit = Float(try r.number("logvar_init") ?? 0)
        c.codebookWeight = Float(try r.nonNegative("codebook_weight") ?? 1)
        c.pixelLoss = LossType(rawValue: try r.choice("pixel_loss", ["l1", "l2"], default: "l1"))!
        guard c.kind == .vq || c.pixelLoss == .l1 else { throw r.error("pixel_loss", "applies to VQModel only (LPIPSWithDiscriminator uses L1)") }
        c.perceptualWeight = Float(try r.nonNegative("perceptual_weight") ?? 1)
        c.lpipsVGG = try r.existingPath("lpips_vgg")
        c.lpipsLin = try r.existingPath("lpips_lin")
        guard c.lpipsLin == nil || c.lpipsVGG != nil else { throw r.error("lpips_lin", "needs lpips_vgg (the VGG16 weights)") }
        c.discStart = try r.int("disc_start") ?? 50001
        guard c.discStart >= 0 else { throw r.error("disc_start", "must be >= 0") }
        c.discWeight = Float(try r.nonNegative("disc_weight") ?? 1)
        c.discFactor = Float(try r.nonNegative("disc_factor") ?? 1)
        c.discNumLayers = try r.positiveInt("disc_num_layers") ?? 3
        c.discInChannels = try r.positiveInt("disc_in_channels") ?? 3
        c.discNDF = try r.positiveInt("disc_ndf") ?? 64
        c.discLoss = try r.choice("disc_loss", ["hinge", "vanilla"], default: "hinge")
        c.useDiscriminator = try r.bool("use_discriminator", default: true)
        c.adamBeta1 = try r.number("adam_beta1") ?? 0.5
        c.adamBeta2 = try r.number("adam_beta2") ?? 0.9
        c.adamEpsilon = try r.nonNegative("adam_epsilon") ?? 1e-8
        c.weightDecay = try r.nonNegative("weight_decay") ?? 0
        guard (0..<1).contains(c.adamBeta1), (0..<1).contains(c.adamBeta2) else { throw TrainingError("\(r.name): adam_beta1 / adam_beta2 must be in [0, 1)") }
        if let n = try r.number("max_grad_norm") {
            guard n > 0 else { throw r.error("max_grad_norm", "must be positive or null") }
            c.maxGradNorm = Float(n)
        }
        c.lrScheduler = try r.string("lr_scheduler") ?? "constant"
        c.lrWarmupSteps = try r.int("lr_warmup_steps") ?? 0
        _ = try LRSchedule(name: c.lrScheduler, warmup: c.lrWarmupSteps, total: c.maxSteps)
        c.runDir = try r.path("run_dir")
        c.sampleEvery = try r.positiveInt("sample_every")
        c.exportDType = DType(rawValue: try r.choice("export_dtype", ["float32", "bfloat16", "float16"], default: "float32"))!
        self = c
    }
}

/// Reading diffusers first-stage folders (`vae/`, `vqvae/`, or the component folder itself) for training.
enum FirstStageFolder {
    static func configURL(_ path: String) throws -> URL {
        var isDir: ObjCBool = false
        _ = FileManager.default.fileExists(atPath: path, isDirectory: &isDir)
        let url = URL(fileURLWithPath: path)
        guard isDir.boolValue else { return url }
        for sub in ["", "vae", "vqvae"] {
            let c = (sub.isEmpty ? url : url.appendingPathComponent(sub)).appendingPathComponent("config.json")
            if FileManager.default.fileExists(atPath: c.path) { return c }
        }
        throw TrainingError("\(path): no config.json (nor vae/config.json, vqvae/config.json)")
    }

    static func className(_ path: String) throws -> String {
        let url = try configURL(path)
        guard let data = FileManager.default.contents(atPath: url.path),
              let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw TrainingError("\(url.path) is not a JSON object")
        }
        if let name = obj["_class_name"] as? String { return name }
        return obj["num_vq_embeddings"] != nil ? AutoencoderTrainConfig.ModelKind.vq.rawValue : AutoencoderTrainConfig.ModelKind.kl.rawValue
    }

    static func hasWeights(_ path: String) -> Bool {
        guard let dir = try? configURL(path).deletingLastPathComponent() else { return false }
        return ((try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []).contains { $0.hasPrefix("diffusion_pytorch_model") }
    }

    static func randomModel(configURL: URL, seed: UInt64) throws -> FirstStageModel {
        guard let data = FileManager.default.contents(atPath: configURL.path) else { throw TrainingError("cannot read \(configURL.path)") }
        return try randomModel(configData: data, kind: AutoencoderTrainConfig.ModelKind(rawValue: className(configURL.path)) ?? .kl, seed: seed)
    }

    static func randomModel(configData data: Data, kind: AutoencoderTrainConfig.ModelKind, seed: UInt64) throws -> FirstStageModel {
        let model: FirstStageModel
        do {
            switch kind {
            case .kl: model = .kl(try AutoencoderKL(config: JSONDecoder().decode(AutoencoderKLConfig.self, from: data)))
            case .vq: model = .vq(try VQModel(config: JSONDecoder().decode(VQModelConfig.self, from: data)))
            }
        } catch let e as DecodingError {
            throw TrainingError("invalid \(kind.rawValue) config: \(e)")
        }
        initializeFirstStage(model, seed: seed)
        return model
    }
}
