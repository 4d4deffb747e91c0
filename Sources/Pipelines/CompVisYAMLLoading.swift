// A whole CompVis LatentDiffusion model from its YAML config (ldm/models/diffusion/ddpm.py `LatentDiffusion` params:
// unet_config, first_stage_config, cond_stage_config, linear_start/linear_end/timesteps/parameterization, scale_factor)
// and a checkpoint, as diffusers loaders/single_file_utils.py does with `original_config`
// (create_unet_diffusers_config_from_ldm, _legacy_load_scheduler: SCHEDULER_DEFAULT_CONFIG with the YAML's betas,
// scaled_linear schedule). Conditioning: FrozenCLIPEmbedder (SD 1.x CLIP ViT-L), FrozenOpenCLIPEmbedder (SD 2.x,
// penultimate layer), ClassEmbedder (cin256 class context), __is_unconditional__. The YAML is parsed by the caller.
import Autoencoders
import Checkpoints
import Conditioning
import Diffusion
import Foundation
import Tokenizers
import UNetModels

/// The parts of a CompVis YAML the loaders read, with the errors a user can act on.
public struct CompVisModelConfig {
    public let params: [String: Any]
    public let unet: UNetConfig
    public let condTarget: String?          // nil: __is_unconditional__ / absent
    public let condParams: [String: Any]

    public init(yaml: [String: Any]) throws {
        guard let model = yaml["model"] as? [String: Any], let params = model["params"] as? [String: Any] else {
            throw PipelineError("YAML config: no model.params mapping (not a CompVis LatentDiffusion config)")
        }
        guard params["unet_config"] is [String: Any] else { throw PipelineError("YAML config: no model.params.unet_config") }
        if let target = model["target"] as? String, !target.hasSuffix("LatentDiffusion") {
            throw PipelineError("YAML config: model target \(target) is not supported (ldm.models.diffusion.ddpm.LatentDiffusion only)")
        }
        self.params = params
        do { unet = try CompVisUNetConfig.unetConfig(yaml) } catch { throw PipelineError("YAML config: \(error)") }
        switch params["cond_stage_config"] {
        case nil, is NSNull: condTarget = nil; condParams = [:]
        case let s as String where s == "__is_unconditional__" || s == "__is_first_stage__":
            guard s == "__is_unconditional__" else { throw PipelineError("YAML config: cond_stage_config __is_first_stage__ is not supported") }
            condTarget = nil; condParams = [:]
        case let c as [String: Any]:
            guard let t = c["target"] as? String else { throw PipelineError("YAML config: cond_stage_config has no target") }
            condTarget = t; condParams = c["params"] as? [String: Any] ?? [:]
        default: throw PipelineError("YAML config: cond_stage_config must be a mapping or __is_unconditional__")
        }
        if let t = condTarget {
            let name = t.split(separator: ".").last.map(String.init) ?? t
            guard ["FrozenCLIPEmbedder", "FrozenOpenCLIPEmbedder", "ClassEmbedder"].contains(name) else {
                throw PipelineError("YAML config: cond_stage_config \(name) is not supported yet (FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder, ClassEmbedder or __is_unconditional__)")
            }
            if name == "FrozenOpenCLIPEmbedder", let layer = condParams["layer"] as? String, layer != "penultimate" {
                throw PipelineError("YAML config: FrozenOpenCLIPEmbedder layer \(layer) is not supported (penultimate only)")
            }
        }
    }

    public var condName: String? { condTarget.flatMap { $0.split(separator: ".").last.map(String.init) } }

    func number(_ key: String) throws -> Double? {
        guard let v = params[key], !(v is NSNull) else { return nil }
        if let d = v as? Double { return d }
        if let i = v as? Int { return Double(i) }
        if let s = v as? String, let d = Double(s) { return d }      // YAML 1.1 "1.0e-4" style strings
        throw PipelineError("YAML config: model.params.\(key) must be a number, got \(v)")
    }

    /// diffusers `_legacy_load_scheduler` with the YAML's linear_start / linear_end / timesteps / parameterization.
    public func schedulerConfig() throws -> SchedulerConfig {
        var c = ModelBundle.stableDiffusionScheduler
        c.className = "DDIMScheduler"; c.clipSample = false; c.timestepSpacing = "leading"
        if let v = try number("linear_start") { c.betaStart = v }
        if let v = try number("linear_end") { c.betaEnd = v }
        if let v = try number("timesteps") {
            guard v >= 1, v == v.rounded() else { throw PipelineError("YAML config: model.params.timesteps must be a positive integer") }
            c.numTrainTimesteps = Int(v)
        }
        if let s = params["beta_schedule"] as? String, s != "linear" {
            throw PipelineError("YAML config: beta_schedule \(s) is not supported (linear, i.e. diffusers scaled_linear)")
        }
        switch params["parameterization"] as? String ?? "eps" {
        case "eps": c.predictionType = "epsilon"
        case "v": c.predictionType = "v_prediction"
        case let p: throw PipelineError("YAML config: parameterization \(p) is not supported (eps or v)")
        }
        return c
    }

    /// Latent side: model.params.image_size (the UNet's own image_size is marked unused in SD configs).
    public var sampleSize: Int { params["image_size"] as? Int ?? 64 }
}

extension ModelSummary {
    /// The summary of a checkpoint described by a CompVis YAML (no weights read).
    public static func read(yaml: [String: Any]) throws -> ModelSummary {
        let c = try CompVisModelConfig(yaml: yaml)
        let first = try FirstStageConfig.fromCompVis(yaml)
        let name = c.condName
        var classes = c.unet.numClassEmbeds
        if name == "ClassEmbedder" { classes = c.condParams["n_classes"] as? Int ?? 1000 }
        let fs: String
        switch first { case .kl: fs = "AutoencoderKL"; case .vq: fs = "VQModel" }
        return ModelSummary(hasTextEncoder: name == "FrozenCLIPEmbedder" || name == "FrozenOpenCLIPEmbedder",
                            unetInChannels: c.unet.inChannels, unetOutChannels: c.unet.outChannels,
                            numClassEmbeds: classes, firstStage: fs, isCompVisFile: true)
    }
}

extension ModelBundle {
    /// A CompVis checkpoint (.ckpt / .safetensors) with its parsed YAML config.
    public static func load(checkpoint url: URL, yaml: [String: Any]) throws -> ModelBundle {
        let config = try CompVisModelConfig(yaml: yaml)
        let file: CheckpointFile
        do { file = try CheckpointFile.open(url) } catch { throw PipelineError("model \(url.path) cannot be read: \(error)") }
        let records = file.tensors
        guard records.keys.contains(where: { $0.hasPrefix(CompVisUNetKeyMap.compVisPrefix) }) else {
            throw PipelineError("\(url.path): no UNet weights (model.diffusion_model.*)")
        }
        let unet = try UNet2DConditionModel(config: config.unet, compVisCheckpoint: records)
        let (firstStage, _) = try FirstStageModel.loadCompVis(records: records, yaml: yaml)

        var encoder: CLIPTextModel?, tokenizer: CLIPTokenizer?, classEmbedder: ClassEmbedder?
        switch config.condName {
        case "FrozenCLIPEmbedder":
            let clip = records.filter { $0.key.hasPrefix("cond_stage_model.transformer.") }
            guard !clip.isEmpty else { throw PipelineError("\(url.path): no cond_stage_model.transformer.* weights for FrozenCLIPEmbedder") }
            encoder = try CLIPTextModel(config: .stableDiffusion1)
            _ = try encoder?.loadWeights(clip)
            tokenizer = try CLIPTokenizer.openCLIPDefault()
        case "FrozenOpenCLIPEmbedder":
            encoder = try CLIPTextModel(config: .stableDiffusion2)
            _ = try encoder?.loadOpenCLIPWeights(records)
            tokenizer = try CLIPTokenizer.openCLIPDefault(padToken: "!")
        case "ClassEmbedder":
            let n = config.condParams["n_classes"] as? Int ?? 1000
            guard let dim = config.condParams["embed_dim"] as? Int, dim > 0, n > 0 else {
                throw PipelineError("YAML config: ClassEmbedder needs positive params.embed_dim and n_classes")
            }
            let e = ClassEmbedder(embedDim: dim, nClasses: n)
            var own: [String: TensorRecord] = [:]
            for (k, r) in records where k.hasPrefix("cond_stage_model.") { own[String(k.dropFirst("cond_stage_model.".count))] = r }
            _ = try e.load(own, component: "cond_stage_model (ClassEmbedder)")
            classEmbedder = e
        default: break
        }
        let bundle = ModelBundle(url: url, unet: unet, firstStage: firstStage, textEncoder: encoder, tokenizer: tokenizer,
                                 schedulerConfig: try config.schedulerConfig(), sampleSize: config.sampleSize)
        bundle.classEmbedder = classEmbedder
        return bundle
    }
}
