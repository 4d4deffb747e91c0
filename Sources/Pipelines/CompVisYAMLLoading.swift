// A whole CompVis LatentDiffusion model from its YAML config (ldm/models/diffusion/ddpm.py `LatentDiffusion` params:
// unet_config, first_stage_config, cond_stage_config, linear_start/linear_end/timesteps/parameterization, scale_factor)
// and a checkpoint, as diffusers loaders/single_file_utils.py does with `original_config`
// (create_unet_diffusers_config_from_ldm, _legacy_load_scheduler: SCHEDULER_DEFAULT_CONFIG with the YAML's betas,
// scaled_linear schedule). Conditioning: FrozenCLIPEmbedder (SD 1.x CLIP ViT-L), FrozenOpenCLIPEmbedder (SD 2.x,
// penultimate layer), ClassEmbedder (cin256 class context), BERTEmbedder (LDM text-to-image, txt2img-1p4B-eval.yaml:
// LDM-BERT + bert-base-uncased's WordPiece vocabulary, which the user supplies), __is_unconditional__, and
// torch.nn.Identity with conditioning_key concat (super-resolution, models/ldm/bsr_sr/config.yaml: the low-res image
// in [-1, 1] is concatenated to the latents, as diffusers LDMSuperResolutionPipeline does), SpatialRescaler with
// conditioning_key concat (semantic synthesis, models/ldm/semantic_synthesis256/config.yaml: the one-hot label map
// rescaled to the latent size, its channels remapped, concatenated to the latents; weights cond_stage_model.*), and
// BERTEmbedder with use_tokenizer: false under cond_stage_key coordinates_bbox (layout-to-image,
// models/ldm/layout2img-openimages256: token ids from taming's ObjectsBoundingBoxConditionalBuilder, see LayoutToImage.swift).
// The YAML is parsed by the caller.
import Autoencoders
import Checkpoints
import Conditioning
import Diffusion
import Foundation
import NeuralNetwork
import Tokenizers
import UNetModels

/// The parts of a CompVis YAML the loaders read, with the errors a user can act on.
public struct CompVisModelConfig {
    public let params: [String: Any]
    public let unet: UNetConfig
    public let condTarget: String?          // nil: __is_unconditional__ / absent
    public let condParams: [String: Any]
    /// LatentDiffusion's conditioning_key: the YAML's, else `concat` when concat_mode (default true), else
    /// `crossattn`; nil for __is_unconditional__ (ddpm.py LatentDiffusion.__init__).
    public let conditioningKey: String?

    public init(yaml: [String: Any]) throws {
        guard let model = yaml["model"] as? [String: Any], let params = model["params"] as? [String: Any] else {
            throw PipelineError("YAML config: no model.params mapping (not a CompVis LatentDiffusion config)")
        }
        guard params["unet_config"] is [String: Any] else { throw PipelineError("YAML config: no model.params.unet_config") }
        // Layout2ImgDiffusion is LatentDiffusion plus a log_images for layouts (ddpm.py).
        if let target = model["target"] as? String, !target.hasSuffix("LatentDiffusion"), !target.hasSuffix("Layout2ImgDiffusion") {
            throw PipelineError("YAML config: model target \(target) is not supported (ldm.models.diffusion.ddpm.LatentDiffusion or Layout2ImgDiffusion)")
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
        if params["cond_stage_config"] as? String == "__is_unconditional__" {
            conditioningKey = nil
        } else if let k = params["conditioning_key"], !(k is NSNull) {
            guard let k = k as? String else { throw PipelineError("YAML config: model.params.conditioning_key must be a string, got \(k)") }
            conditioningKey = k
        } else {
            conditioningKey = (params["concat_mode"] as? Bool ?? true) ? "concat" : "crossattn"
        }
        if let t = condTarget {
            let name = t.split(separator: ".").last.map(String.init) ?? t
            guard ["FrozenCLIPEmbedder", "FrozenOpenCLIPEmbedder", "ClassEmbedder", "BERTEmbedder", "Identity", "SpatialRescaler"].contains(name) else {
                throw PipelineError("YAML config: cond_stage_config \(name) is not supported yet (FrozenCLIPEmbedder, FrozenOpenCLIPEmbedder, ClassEmbedder, BERTEmbedder, torch.nn.Identity or SpatialRescaler with conditioning_key concat, or __is_unconditional__)")
            }
            // Cond stages that only make sense concatenated to the latents.
            let concatOnly: [String: (target: String, shown: String, purpose: String)] = [
                "SpatialRescaler": ("ldm.modules.encoders.modules.SpatialRescaler", "SpatialRescaler",
                                    "semantic synthesis: the rescaled label map concatenated to the latents"),
                "Identity": ("torch.nn.Identity", "torch.nn.Identity", "super-resolution: the low-res image concatenated to the latents, bsr_sr"),
            ]
            if let c = concatOnly[name] {
                guard t == c.target || t == name else {
                    throw PipelineError("YAML config: cond_stage_config target \(t) is not supported (\(c.target))")
                }
                guard conditioningKey == "concat" else {
                    throw PipelineError("YAML config: cond_stage_config \(c.shown) is supported with conditioning_key concat only "
                                        + "(\(c.purpose)), got conditioning_key \(conditioningKey ?? "none")")
                }
            }
            if name == "SpatialRescaler", let f = params["cond_stage_forward"], !(f is NSNull) {
                throw PipelineError("YAML config: cond_stage_forward \(f) is not supported with SpatialRescaler (its forward/encode only)")
            }
            if name == "FrozenOpenCLIPEmbedder", let layer = condParams["layer"] as? String, layer != "penultimate" {
                throw PipelineError("YAML config: FrozenOpenCLIPEmbedder layer \(layer) is not supported (penultimate only)")
            }
        }
        let key = params["cond_stage_key"] as? String
        if condName == "BERTEmbedder", condParams["use_tokenizer"] as? Bool == false {
            // BERTEmbedder.forward(text) with use_tknz_fn False: `text` are token ids already.
            guard key == "coordinates_bbox" else {
                throw PipelineError("YAML config: BERTEmbedder with use_tokenizer: false takes token ids; they are supported for layouts only "
                                    + "(cond_stage_key coordinates_bbox, layout2img-openimages256), got cond_stage_key \(key ?? "none")")
            }
        } else if key == "coordinates_bbox" {
            throw PipelineError("YAML config: cond_stage_key coordinates_bbox (layouts) is supported with cond_stage_config BERTEmbedder "
                                + "use_tokenizer: false only, got \(condName ?? "none")")
        }
        if key == "coordinates_bbox", conditioningKey != "crossattn" {
            throw PipelineError("YAML config: a layout model (cond_stage_key coordinates_bbox) must have conditioning_key crossattn, got \(conditioningKey ?? "none")")
        }
    }

    /// A layout-to-image model: cond_stage_key coordinates_bbox, BERTEmbedder on token ids (use_tokenizer: false).
    public var isLayout: Bool { params["cond_stage_key"] as? String == "coordinates_bbox" }

    /// The layout tokenizer of a layout model: taming's ObjectsBoundingBoxConditionalBuilder with no_tokens = the
    /// BERTEmbedder's vocab_size and max_seq_len = 3 * no_max_objects (+ 2 crop tokens when it leaves 2 over:
    /// layout2img-openimages256's 92 = 3 * 30 + 2, the sequence ddpm.py's patch code cuts the last two crop tokens
    /// of). Classes, group and additional parameters: Open Images' (taming's open_images_scene_images_transformer.yaml).
    public func layoutBuilder(objectClasses: Int = OpenImagesCategories.count) throws -> ObjectsBoundingBoxConditionalBuilder {
        guard isLayout else { throw PipelineError("YAML config: not a layout model (cond_stage_key coordinates_bbox)") }
        let bert = try bertConfig()
        let seq = bert.maxPositionEmbeddings
        guard seq % 3 != 1, seq >= 3 else {
            throw PipelineError("YAML config: BERTEmbedder max_seq_len \(seq) is not 3 tokens per object (+ 2 crop tokens)")
        }
        do {
            return try ObjectsBoundingBoxConditionalBuilder(noObjectClasses: objectClasses, noMaxObjects: seq / 3, noTokens: bert.vocabSize,
                                                            encodeCrop: seq % 3 == 2)
        } catch { throw PipelineError("YAML config: \(error)") }
    }

    public var condName: String? { condTarget.flatMap { $0.split(separator: ".").last.map(String.init) } }

    /// BERTEmbedder(n_embed, n_layer, vocab_size=30522, max_seq_len=77, use_tokenizer=True) as LDMBertConfig (the
    /// same network with or without its tokenizer).
    public func bertConfig() throws -> LDMBertConfig {
        func int(_ key: String, _ d: Int?) throws -> Int {
            switch condParams[key] {
            case let i as Int: return i
            case nil where d != nil: return d!
            case nil: throw PipelineError("YAML config: BERTEmbedder needs params.\(key)")
            case let v?: throw PipelineError("YAML config: BERTEmbedder params.\(key) must be an integer, got \(v)")
            }
        }
        do {
            return try .bertEmbedder(nEmbed: int("n_embed", nil), nLayer: int("n_layer", nil),
                                     vocabSize: int("vocab_size", 30522), maxSeqLen: int("max_seq_len", 77))
        } catch let e as ConditioningError { throw PipelineError("YAML config: \(e)") }
    }

    /// SpatialRescaler(n_stages=1, method='bilinear', multiplier=0.5, in_channels=3, out_channels=None, bias=False)
    /// from cond_stage_config.params (ldm/modules/encoders/modules.py), without weights.
    public func spatialRescaler() throws -> SpatialRescaler {
        func int(_ key: String, _ d: Int?) throws -> Int? {
            switch condParams[key] {
            case nil, is NSNull: return d
            case let i as Int: return i
            case let v?: throw PipelineError("YAML config: SpatialRescaler params.\(key) must be an integer, got \(v)")
            }
        }
        let methodName = condParams["method"] as? String ?? "bilinear"
        guard let method = SpatialRescaler.Method(rawValue: methodName) else {
            throw PipelineError("YAML config: SpatialRescaler method \(methodName) is not supported (bilinear or nearest)")
        }
        let multiplier: Double
        switch condParams["multiplier"] {
        case nil, is NSNull: multiplier = 0.5
        case let d as Double: multiplier = d
        case let i as Int: multiplier = Double(i)
        case let v?: throw PipelineError("YAML config: SpatialRescaler params.multiplier must be a number, got \(v)")
        }
        let bias: Bool
        switch condParams["bias"] {
        case nil, is NSNull: bias = false
        case let b as Bool: bias = b
        case let v?: throw PipelineError("YAML config: SpatialRescaler params.bias must be true or false, got \(v)")
        }
        do {
            return try SpatialRescaler(stages: int("n_stages", 1)!, method: method, multiplier: Float(multiplier),
                                       inChannels: int("in_channels", 3)!, outChannels: int("out_channels", nil), bias: bias)
        } catch let e as ConditioningError { throw PipelineError("YAML config: \(e)") }
    }

    /// A semantic-synthesis model's geometry (cond_stage SpatialRescaler), checked against the UNet and the first
    /// stage: in_channels = latent channels + the rescaler's output channels, no cross-attention, and the rescaled
    /// label map the size of the latents.
    public func semanticSynthesisGeometry(firstStage: FirstStageConfig) throws -> SemanticSynthesisGeometry {
        let r = try spatialRescaler()
        let latent: Int
        switch firstStage { case .kl(let c): latent = c.latentChannels; case .vq(let c): latent = c.vqEmbedDim ?? c.latentChannels }
        return try SemanticSynthesisGeometry(rescaler: r, unet: unet, firstStageFactor: 1 << max(firstStage.blockCount - 1, 0),
                                             latentChannels: latent)
    }

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
        c.className = "DDIMScheduler"; c.timestepSpacing = "leading" // clip_sample false comes with the SD config
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
        if name == "BERTEmbedder" {
            let bert = try c.bertConfig()
            guard c.unet.crossAttentionDim.map({ $0.allSatisfy { $0 == bert.dModel } }) ?? false else {
                throw PipelineError("YAML config: the UNet's context_dim does not match BERTEmbedder's n_embed \(bert.dModel)")
            }
        }
        let semantic = name == "SpatialRescaler" ? try c.semanticSynthesisGeometry(firstStage: first) : nil
        if c.isLayout {
            _ = try c.layoutBuilder()
        }
        let texts: [String: TextEncoderKind] = ["FrozenCLIPEmbedder": .clip, "FrozenOpenCLIPEmbedder": .openCLIP, "BERTEmbedder": .ldmBert]
        let kind = ModelKind.classify(text: c.isLayout ? nil : texts[name ?? ""], classes: classes, semantic: semantic, layout: c.isLayout,
                                      unetIn: c.unet.inChannels, unetOut: c.unet.outChannels)
        let firstStage: FirstStageKind
        switch first {
        case .kl:
            firstStage = .autoencoderKL
        case .vq:
            firstStage = .vqModel
        }
        return ModelSummary(kind: kind, firstStage: firstStage, unetInChannels: c.unet.inChannels, unetOutChannels: c.unet.outChannels,
                            isCompVisFile: true)
    }
}

extension ModelBundle {
    /// The WordPiece vocabulary of a BERTEmbedder checkpoint: `explicit` (a vocab.txt, or a tokenizer folder with
    /// vocab.txt / tokenizer.json), else vocab.txt beside the checkpoint. CompVis' BERTTokenizer loads HF
    /// bert-base-uncased (BertTokenizerFast) from the hub, which this program does not download.
    public static func bertVocabulary(checkpoint url: URL, explicit: URL?) throws -> URL {
        let fm = FileManager.default
        if let e = explicit {
            guard fm.fileExists(atPath: e.path) else {
                throw PipelineError.missingBERTVocabulary(checkpoint: url.path, given: e.path)
            }
            return e
        }
        let beside = url.deletingLastPathComponent().appendingPathComponent("vocab.txt")
        guard fm.fileExists(atPath: beside.path) else {
            throw PipelineError.missingBERTVocabulary(checkpoint: url.path, given: nil)
        }
        return beside
    }

    /// A text encoder config derived from the weights, its failure said in one sentence naming the file.
    static func textEncoderConfig(_ derive: @autoclosure () throws -> CLIPTextConfig, _ url: URL) throws -> CLIPTextConfig {
        do { return try derive() } catch let e as ConditioningError { throw PipelineError("\(url.path): \(e.description)") }
    }

    static func bertTokenizer(_ url: URL, maxLength: Int) throws -> BertTokenizer {
        // bert-base-uncased: do_lower_case, accents stripped with it (BertTokenizerFast's defaults there).
        DiffusersFolder.isFolder(url) || (try? url.resourceValues(forKeys: [.isDirectoryKey]).isDirectory) == true
            ? try BertTokenizer(folder: url) : try BertTokenizer(vocabularyFile: url, doLowerCase: true, modelMaxLength: maxLength)
    }

    /// A CompVis checkpoint (.ckpt / .safetensors) with its parsed YAML config. `bertVocabulary`: see
    /// `bertVocabulary(checkpoint:explicit:)` (BERTEmbedder configs only).
    /// The UNet and first-stage values the weights pin are read from them (CompVisArchitecture.reconcile; what changed
    /// is in `notes`), as is the text encoder's size.
    public static func load(checkpoint url: URL, yaml stated: [String: Any], bertVocabulary: URL? = nil) throws -> ModelBundle {
        _ = try CompVisModelConfig(yaml: stated)
        let file: CheckpointFile
        do { file = try CheckpointFile.open(url) } catch { throw PipelineError("model \(url.path) cannot be read: \(error)") }
        let records = file.tensors
        let (yaml, notes): ([String: Any], [String])
        do { (yaml, notes) = try CompVisArchitecture.reconcile(yaml: stated, records: records) } catch let e as PipelineError {
            throw PipelineError("\(url.path): \(e.description)")
        }
        let config = try CompVisModelConfig(yaml: yaml)
        guard records.keys.contains(where: { $0.hasPrefix(CompVisUNetKeyMap.compVisPrefix) }) else {
            throw PipelineError("\(url.path): no UNet weights (model.diffusion_model.*)")
        }
        // Semantic synthesis: channel counts and sizes checked before any weight is read.
        let semantic = config.condName == "SpatialRescaler" ? try config.semanticSynthesisGeometry(firstStage: FirstStageConfig.fromCompVis(yaml)) : nil
        let unet = try UNet2DConditionModel(config: config.unet, compVisCheckpoint: records)
        let (firstStage, _) = try FirstStageModel.loadCompVis(records: records, yaml: yaml)

        var encoder: CLIPTextModel?, tokenizer: CLIPTokenizer?, classEmbedder: ClassEmbedder?
        var bert: LDMBertModel?, bertTokenizer: BertTokenizer?, bertLength: Int?
        var spatialRescaler: SpatialRescaler?
        var layout: ObjectsBoundingBoxConditionalBuilder?
        switch config.condName {
        case "BERTEmbedder":
            let c = try config.bertConfig()
            guard config.unet.crossAttentionDim.map({ $0.allSatisfy { $0 == c.dModel } }) ?? false else {
                throw PipelineError("YAML config: the UNet's context_dim does not match BERTEmbedder's n_embed \(c.dModel)")
            }
            if config.isLayout {
                layout = try config.layoutBuilder()        // token ids from layouts, no WordPiece vocabulary
            } else {
                let vocab = try ModelBundle.bertVocabulary(checkpoint: url, explicit: bertVocabulary)
                let t = try ModelBundle.bertTokenizer(vocab, maxLength: c.maxPositionEmbeddings)
                // Ids may have gaps (duplicate vocab.txt lines): the largest id must have an embedding row.
                let rows = (t.vocabulary.values.max() ?? -1) + 1
                guard rows <= c.vocabSize else {
                    throw PipelineError("\(vocab.path): token ids up to \(rows - 1), more than BERTEmbedder's vocab_size \(c.vocabSize) allows")
                }
                bertTokenizer = t
                bertLength = c.maxPositionEmbeddings      // BERTTokenizer pads/truncates to max_seq_len
            }
            let own = records.filter { $0.key.hasPrefix(BERTLayout.compvisPrefix) }
            guard !own.isEmpty else { throw PipelineError("\(url.path): no cond_stage_model.transformer.* weights for BERTEmbedder") }
            do { bert = try LDMBertModel(config: c, bertEmbedder: own) } catch let e as CheckpointError {
                throw PipelineError("\(url.path): \(e.message)")
            }
        case "FrozenCLIPEmbedder":
            let clip = records.filter { $0.key.hasPrefix("cond_stage_model.transformer.") }
            guard !clip.isEmpty else { throw PipelineError("\(url.path): no cond_stage_model.transformer.* weights for FrozenCLIPEmbedder") }
            // The YAML's FrozenCLIPEmbedder states no size (the code hard-codes ViT-L/14): the weights decide.
            encoder = try CLIPTextModel(config: textEncoderConfig(.frozenCLIPEmbedder(clip), url))
            _ = try encoder?.loadWeights(clip)
            tokenizer = try CLIPTokenizer.openCLIPDefault()
        case "FrozenOpenCLIPEmbedder":
            encoder = try CLIPTextModel(config: textEncoderConfig(.frozenOpenCLIPEmbedder(records), url))
            _ = try encoder?.loadOpenCLIPWeights(records)
            tokenizer = try CLIPTokenizer.openCLIPDefault(padToken: "!")
        case "Identity":
            // bsr_sr: c = the low-res image in [-1, 1], concatenated to x (DiffusionWrapper, conditioning_key concat).
            guard config.unet.inChannels == config.unet.outChannels + 3, config.unet.crossAttentionDim == nil else {
                throw PipelineError("YAML config: cond_stage_config torch.nn.Identity (concat) needs a UNet taking latents + the 3-channel low-res image "
                                    + "(in_channels = out_channels + 3, no context_dim), got in_channels \(config.unet.inChannels), out_channels \(config.unet.outChannels)")
            }
        case "SpatialRescaler":
            // Semantic synthesis: c = cond_stage_model(one-hot label map) at the latent size, concatenated to x
            // (get_learned_conditioning -> SpatialRescaler.encode; DiffusionWrapper, conditioning_key concat).
            let r = try config.spatialRescaler()
            var own: [String: TensorRecord] = [:]
            for (k, v) in records where k.hasPrefix("cond_stage_model.") { own[k] = v }
            let report = try r.load(mapKeys(own, SpatialRescaler.compVisKeyRules), component: "cond_stage_model (SpatialRescaler)")
            guard report.unexpected.isEmpty else {
                throw PipelineError("\(url.path): cond_stage_model weights the YAML's SpatialRescaler does not have: "
                                    + report.unexpected.prefix(5).map { "cond_stage_model." + $0 }.joined(separator: ", ")
                                    + " (check out_channels / bias in cond_stage_config)")
            }
            spatialRescaler = r
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
        bundle.spatialRescaler = spatialRescaler; bundle.semanticSynthesis = semantic
        bundle.superResolutionScaledDecode = true       // decode_first_stage: z / scale_factor (YAML, default 1.0)
        bundle.bert = bert; bundle.bertTokenizer = bertTokenizer; bundle.bertMaxLength = bertLength
        bundle.layoutBuilder = layout
        bundle.notes = notes
        bundle.textEncoderIsOpenCLIP = config.condName == "FrozenOpenCLIPEmbedder"
        return bundle
    }
}
