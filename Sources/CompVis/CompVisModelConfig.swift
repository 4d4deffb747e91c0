// A whole CompVis LatentDiffusion YAML (ldm/models/diffusion/ddpm.py `LatentDiffusion` params: unet_config,
// first_stage_config, cond_stage_config, linear_start/linear_end/timesteps/parameterization, scale_factor) read once
// into typed configs: the UNet (UNetYAML.swift, diffusers' create_unet_diffusers_config_from_ldm), the first stage
// (FirstStageYAML.swift), the scheduler (diffusers' _legacy_load_scheduler: SCHEDULER_DEFAULT_CONFIG with the YAML's
// betas, scaled_linear schedule) and the conditioning stage: FrozenCLIPEmbedder (SD 1.x CLIP ViT-L),
// FrozenOpenCLIPEmbedder (SD 2.x, penultimate layer), ClassEmbedder (cin256), BERTEmbedder (LDM text-to-image, or
// layout tokens with use_tokenizer: false under cond_stage_key coordinates_bbox), __is_unconditional__,
// torch.nn.Identity and SpatialRescaler with conditioning_key concat (super-resolution, semantic synthesis).
// The YAML is parsed by the caller (Yams in `ldm`); CompVisArchitecture completes it from the weights first.
import Checkpoints
import Conditioning
import Diffusion
import Foundation
import Tokenizers
import UNetModels

/// A CompVis configuration the program cannot use, in words a user can act on.
public struct CompVisError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ message: String) { description = message }
}

extension SchedulerConfig {
    /// Stable Diffusion's scheduler_config.json (PNDM, scaled_linear 0.00085...0.012, 1000 steps, steps_offset 1);
    /// the absent `timestep_spacing` leaves each sampler its own default, as diffusers' from_config does.
    public static var stableDiffusion: SchedulerConfig {
        var c = SchedulerConfig()
        c.className = "PNDMScheduler"
        c.numTrainTimesteps = 1000
        c.betaStart = 0.00085
        c.betaEnd = 0.012
        c.betaSchedule = "scaled_linear"
        c.setAlphaToOne = false
        c.skipPrkSteps = true
        c.stepsOffset = 1
        c.clipSample = false
        return c
    }
}

/// The parts of a CompVis YAML the loaders read, with the errors a user can act on.
public struct CompVisModelConfig {
    /// The whole parsed YAML, and its model.params.
    public let yaml: [String: Any]
    public let params: [String: Any]
    public let unet: UNetConfig
    public let condTarget: String?          // nil: __is_unconditional__ / absent
    public let condParams: [String: Any]
    /// LatentDiffusion's conditioning_key: the YAML's, else `concat` when concat_mode (default true), else
    /// `crossattn`; nil for __is_unconditional__ (ddpm.py LatentDiffusion.__init__).
    public let conditioningKey: String?
    /// The first stage (first_stage_config, model.params.scale_factor) as a typed config.
    public let firstStage: FirstStageConfig

    public init(yaml: [String: Any]) throws {
        guard let model = yaml["model"] as? [String: Any], let params = model["params"] as? [String: Any] else {
            throw CompVisError("YAML config: no model.params mapping (not a CompVis LatentDiffusion config)")
        }
        guard params["unet_config"] is [String: Any] else { throw CompVisError("YAML config: no model.params.unet_config") }
        // Layout2ImgDiffusion is LatentDiffusion plus a log_images for layouts (ddpm.py).
        if let target = model["target"] as? String, !target.hasSuffix("LatentDiffusion"), !target.hasSuffix("Layout2ImgDiffusion") {
            throw CompVisError("YAML config: model target \(target) is not supported (ldm.models.diffusion.ddpm.LatentDiffusion or Layout2ImgDiffusion)")
        }
        self.yaml = yaml
        self.params = params
        do {
            unet = try CompVisUNetConfig.unetConfig(yaml)
        } catch {
            throw CompVisError("YAML config: \(error)")
        }
        switch params["cond_stage_config"] {
        case nil, is NSNull:
            condTarget = nil
            condParams = [:]
        case let s as String where s == "__is_unconditional__" || s == "__is_first_stage__":
            guard s == "__is_unconditional__" else { throw CompVisError("YAML config: cond_stage_config __is_first_stage__ is not supported") }
            condTarget = nil
            condParams = [:]
        case let c as [String: Any]:
            guard let t = c["target"] as? String else { throw CompVisError("YAML config: cond_stage_config has no target") }
            condTarget = t
            condParams = c["params"] as? [String: Any] ?? [:]
        default: throw CompVisError("YAML config: cond_stage_config must be a mapping or __is_unconditional__")
        }
        if params["cond_stage_config"] as? String == "__is_unconditional__" {
            conditioningKey = nil
        } else if let k = params["conditioning_key"], !(k is NSNull) {
            guard let k = k as? String else { throw CompVisError("YAML config: model.params.conditioning_key must be a string, got \(k)") }
            conditioningKey = k
        } else {
            conditioningKey = (params["concat_mode"] as? Bool ?? true) ? "concat" : "crossattn"
        }
        if let t = condTarget {
            let name = t.split(separator: ".").last.map(String.init) ?? t
            guard ["FrozenCLIPEmbedder", "FrozenOpenCLIPEmbedder", "ClassEmbedder", "BERTEmbedder", "Identity", "SpatialRescaler"].contains(name) else {
                throw CompVisError("YAML config: cond_stage_config \(name) is not supported yet (FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder, ClassEmbedder, BERTEmbedder, torch.nn.Identity or SpatialRescaler with conditioning_key concat, or __is_unconditional__)")
            }
            // Cond stages that only make sense concatenated to the latents.
            let concatOnly: [String: (target: String, shown: String, purpose: String)] = [
                "SpatialRescaler": ("ldm.modules.encoders.modules.SpatialRescaler", "SpatialRescaler",
                                    "semantic synthesis: the rescaled label map concatenated to the latents"),
                "Identity": ("torch.nn.Identity", "torch.nn.Identity", "super-resolution: the low-res image concatenated to the latents, bsr_sr"),
            ]
            if let c = concatOnly[name] {
                guard t == c.target || t == name else {
                    throw CompVisError("YAML config: cond_stage_config target \(t) is not supported (\(c.target))")
                }
                guard conditioningKey == "concat" else {
                    throw CompVisError("YAML config: cond_stage_config \(c.shown) is supported with conditioning_key concat only "
                                        + "(\(c.purpose)), got conditioning_key \(conditioningKey ?? "none")")
                }
            }
            if name == "SpatialRescaler", let f = params["cond_stage_forward"], !(f is NSNull) {
                throw CompVisError("YAML config: cond_stage_forward \(f) is not supported with SpatialRescaler (its forward/encode only)")
            }
            if name == "FrozenOpenCLIPEmbedder", let layer = condParams["layer"] as? String, layer != "penultimate" {
                throw CompVisError("YAML config: FrozenOpenCLIPEmbedder layer \(layer) is not supported (penultimate only)")
            }
        }
        let key = params["cond_stage_key"] as? String
        let condName = condTarget.flatMap { $0.split(separator: ".").last.map(String.init) }
        if condName == "BERTEmbedder", condParams["use_tokenizer"] as? Bool == false {
            // BERTEmbedder.forward(text) with use_tknz_fn False: `text` are token ids already.
            guard key == "coordinates_bbox" else {
                throw CompVisError("YAML config: BERTEmbedder with use_tokenizer: false takes token ids; they are supported for layouts only "
                                    + "(cond_stage_key coordinates_bbox, layout2img-openimages256), got cond_stage_key \(key ?? "none")")
            }
        } else if key == "coordinates_bbox" {
            throw CompVisError("YAML config: cond_stage_key coordinates_bbox (layouts) is supported with cond_stage_config BERTEmbedder "
                                + "use_tokenizer: false only, got \(condName ?? "none")")
        }
        if key == "coordinates_bbox", conditioningKey != "crossattn" {
            throw CompVisError("YAML config: a layout model (cond_stage_key coordinates_bbox) must have conditioning_key crossattn, got \(conditioningKey ?? "none")")
        }
        firstStage = try FirstStageConfig.fromCompVis(yaml)
    }

    /// A layout-to-image model: cond_stage_key coordinates_bbox, BERTEmbedder on token ids (use_tokenizer: false).
    public var isLayout: Bool { params["cond_stage_key"] as? String == "coordinates_bbox" }

    /// The layout tokenizer of a layout model: taming's ObjectsBoundingBoxConditionalBuilder with no_tokens = the
    /// BERTEmbedder's vocab_size and max_seq_len = 3 * no_max_objects (+ 2 crop tokens when it leaves 2 over:
    /// layout2img-openimages256's 92 = 3 * 30 + 2, the sequence ddpm.py's patch code cuts the last two crop tokens
    /// of). Classes, group and additional parameters: Open Images' (taming's open_images_scene_images_transformer.yaml).
    public func layoutBuilder(objectClasses: Int = OpenImagesCategories.count) throws -> ObjectsBoundingBoxConditionalBuilder {
        guard isLayout else { throw CompVisError("YAML config: not a layout model (cond_stage_key coordinates_bbox)") }
        let bert = try bertConfig()
        let seq = bert.maxPositionEmbeddings
        guard seq % 3 != 1, seq >= 3 else {
            throw CompVisError("YAML config: BERTEmbedder max_seq_len \(seq) is not 3 tokens per object (+ 2 crop tokens)")
        }
        do {
            return try ObjectsBoundingBoxConditionalBuilder(noObjectClasses: objectClasses, noMaxObjects: seq / 3, noTokens: bert.vocabSize,
                                                            encodeCrop: seq % 3 == 2)
        } catch { throw CompVisError("YAML config: \(error)") }
    }

    public var condName: String? { condTarget.flatMap { $0.split(separator: ".").last.map(String.init) } }

    /// BERTEmbedder(n_embed, n_layer, vocab_size=30522, max_seq_len=77, use_tokenizer=True) as LDMBertConfig (the
    /// same network with or without its tokenizer).
    public func bertConfig() throws -> LDMBertConfig {
        func int(_ key: String, _ d: Int?) throws -> Int {
            switch condParams[key] {
            case let i as Int: return i
            case nil where d != nil: return d!
            case nil: throw CompVisError("YAML config: BERTEmbedder needs params.\(key)")
            case let v?: throw CompVisError("YAML config: BERTEmbedder params.\(key) must be an integer, got \(v)")
            }
        }
        do {
            return try .bertEmbedder(nEmbed: int("n_embed", nil), nLayer: int("n_layer", nil),
                                     vocabSize: int("vocab_size", 30522), maxSeqLen: int("max_seq_len", 77))
        } catch let e as ConditioningError { throw CompVisError("YAML config: \(e)") }
    }

    /// SpatialRescaler(n_stages=1, method='bilinear', multiplier=0.5, in_channels=3, out_channels=None, bias=False)
    /// from cond_stage_config.params (ldm/modules/encoders/modules.py), without weights.
    public func spatialRescaler() throws -> SpatialRescaler {
        func int(_ key: String, _ d: Int?) throws -> Int? {
            switch condParams[key] {
            case nil, is NSNull: return d
            case let i as Int: return i
            case let v?: throw CompVisError("YAML config: SpatialRescaler params.\(key) must be an integer, got \(v)")
            }
        }
        let methodName = condParams["method"] as? String ?? "bilinear"
        guard let method = SpatialRescaler.Method(rawValue: methodName) else {
            throw CompVisError("YAML config: SpatialRescaler method \(methodName) is not supported (bilinear or nearest)")
        }
        let multiplier: Double
        switch condParams["multiplier"] {
        case nil, is NSNull: multiplier = 0.5
        case let d as Double: multiplier = d
        case let i as Int: multiplier = Double(i)
        case let v?: throw CompVisError("YAML config: SpatialRescaler params.multiplier must be a number, got \(v)")
        }
        let bias: Bool
        switch condParams["bias"] {
        case nil, is NSNull: bias = false
        case let b as Bool: bias = b
        case let v?: throw CompVisError("YAML config: SpatialRescaler params.bias must be true or false, got \(v)")
        }
        do {
            return try SpatialRescaler(stages: int("n_stages", 1)!, method: method, multiplier: Float(multiplier),
                                       inChannels: int("in_channels", 3)!, outChannels: int("out_channels", nil), bias: bias)
        } catch let e as ConditioningError { throw CompVisError("YAML config: \(e)") }
    }

    func number(_ key: String) throws -> Double? {
        guard let v = params[key], !(v is NSNull) else { return nil }
        if let d = v as? Double { return d }
        if let i = v as? Int { return Double(i) }
        if let s = v as? String, let d = Double(s) { return d }      // YAML 1.1 "1.0e-4" style strings
        throw CompVisError("YAML config: model.params.\(key) must be a number, got \(v)")
    }

    /// diffusers `_legacy_load_scheduler` with the YAML's linear_start / linear_end / timesteps / parameterization.
    public func schedulerConfig() throws -> SchedulerConfig {
        var c = SchedulerConfig.stableDiffusion
        c.className = "DDIMScheduler"
        c.timestepSpacing = "leading"   // clip_sample false comes with the SD config
        if let v = try number("linear_start") { c.betaStart = v }
        if let v = try number("linear_end") { c.betaEnd = v }
        if let v = try number("timesteps") {
            guard v >= 1, v == v.rounded() else { throw CompVisError("YAML config: model.params.timesteps must be a positive integer") }
            c.numTrainTimesteps = Int(v)
        }
        if let s = params["beta_schedule"] as? String, s != "linear" {
            throw CompVisError("YAML config: beta_schedule \(s) is not supported (linear, i.e. diffusers scaled_linear)")
        }
        switch params["parameterization"] as? String ?? "eps" {
        case "eps": c.predictionType = "epsilon"
        case "v": c.predictionType = "v_prediction"
        case let p: throw CompVisError("YAML config: parameterization \(p) is not supported (eps or v)")
        }
        return c
    }

    /// Latent side: model.params.image_size (the UNet's own image_size is marked unused in SD configs).
    public var sampleSize: Int { params["image_size"] as? Int ?? 64 }
}

extension CompVisModelConfig {
    /// The configuration with the UNet and first-stage values `records` pin (CompVisArchitecture.reconcile), and
    /// the notes saying what changed (none: this configuration itself).
    public func reconciled(with records: [String: TensorRecord]) throws -> (config: CompVisModelConfig, notes: [String]) {
        let (changed, notes) = try CompVisArchitecture.reconcile(yaml: yaml, records: records)
        return (notes.isEmpty ? self : try CompVisModelConfig(yaml: changed), notes)
    }

    /// `reconciled(with:)` on a checkpoint file; this configuration unchanged when the file cannot be read (loading
    /// it reports why).
    public func reconciled(checkpoint url: URL) throws -> (config: CompVisModelConfig, notes: [String]) {
        guard let file = try? CheckpointFile.open(url) else { return (self, []) }
        return try reconciled(with: file.tensors)
    }
}
