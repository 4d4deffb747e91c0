// What a model offers, read from its configs only (diffusers model_index.json and unet/config.json, or the tensor
// names and shapes of a CompVis single file; with a CompVis YAML see CompVisYAMLLoading.swift), so that a command
// is checked against the model before any weight is loaded.
import Checkpoints
import CompVis
import Conditioning
import Foundation

public struct ModelSummary: Equatable {
    /// What conditions the UNet, and so which tasks the model serves.
    public var kind: ModelKind
    public var firstStage: FirstStageKind
    public var unetInChannels: Int
    public var unetOutChannels: Int
    public var isCompVisFile: Bool
    /// The UNet's time_cond_proj_dim (LCM-distilled UNets) and model_index.json's `_class_name`.
    public var timeCondProjDim: Int? = nil
    public var pipelineClass: String? = nil

    public init(kind: ModelKind, firstStage: FirstStageKind, unetInChannels: Int, unetOutChannels: Int, isCompVisFile: Bool,
                timeCondProjDim: Int? = nil, pipelineClass: String? = nil) {
        self.kind = kind
        self.firstStage = firstStage
        self.unetInChannels = unetInChannels
        self.unetOutChannels = unetOutChannels
        self.isCompVisFile = isCompVisFile
        self.timeCondProjDim = timeCondProjDim
        self.pipelineClass = pipelineClass
    }

    /// The model takes a prompt (any text encoder, inpainting models included).
    public var hasTextEncoder: Bool {
        kind.textEncoder != nil
    }

    /// The text encoder is LDM-BERT (diffusers LDMTextToImagePipeline: `bert` + BertTokenizer).
    public var hasLDMBert: Bool {
        kind.textEncoder == .ldmBert
    }

    /// The number of classes of a class-conditional model.
    public var numClassEmbeds: Int? {
        if case .classConditional(let n) = kind {
            return n
        }
        return nil
    }

    /// Semantic-synthesis models (CompVis cond_stage SpatialRescaler + concat): what their label maps must be.
    public var semanticSynthesis: SemanticSynthesisGeometry? {
        if case .semanticSynthesis(let g) = kind {
            return g
        }
        return nil
    }

    /// A layout-to-image model (CompVis layout2img: BERTEmbedder on layout token ids).
    public var isLayout: Bool {
        kind == .layout
    }

    /// Reads model_index.json and the UNet config of a diffusers folder, or the shapes of a single file.
    public static func read(_ url: URL) throws -> ModelSummary {
        if DiffusersFolder.isFolder(url) {
            return try readDiffusers(url)
        }
        let file: CheckpointFile
        do {
            file = try CheckpointFile.open(url)
        } catch {
            throw PipelineError.unreadableModel(url.path, "\(error)")
        }
        if file.tensors[BERTLayout.compvisPrefix + "token_emb.weight"] != nil {
            throw PipelineError.ldmBertNeedsConfig(url.path)
        }
        let keys = ModelFamily.Keys(file.tensors.mapValues { $0.shape })
        guard let inC = keys.unetInChannels, let outC = keys.dim("model.diffusion_model.out.2.weight", 0) else {
            throw PipelineError.invalidModel(url.path, "not a CompVis latent diffusion checkpoint (no model.diffusion_model.* weights)")
        }
        let text: TextEncoderKind?
        if keys.any("conditioner.embedders.") {
            // sgm (SDXL): OpenCLIP bigG second (base) or alone (refiner).
            text = keys.any("conditioner.embedders.1.model.") ? .sdxl : .sdxlRefiner
        } else if keys.any("cond_stage_model.model.") {
            text = .openCLIP
        } else if keys.any("cond_stage_model.transformer.") {
            text = .clip
        } else {
            text = nil
        }
        var kind = ModelKind.classify(text: text, classes: keys.dim("model.diffusion_model.label_emb.weight", 0), semantic: nil,
                                      layout: false, unetIn: inC, unetOut: outC)
        if text == nil, keys.any("cond_stage_model.") {
            kind = .unsupported("a CompVis cond_stage_model other than CLIP or OpenCLIP, which loads with its YAML config")
        }
        return ModelSummary(kind: kind, firstStage: keys.any("first_stage_model.encoder.") ? .autoencoderKL : .none,
                            unetInChannels: inC, unetOutChannels: outC, isCompVisFile: true)
    }

    static func readDiffusers(_ url: URL) throws -> ModelSummary {
        let folder = try DiffusersFolder(url: url)
        guard let unet = folder.component("unet"), let cfg = unet.config else {
            throw PipelineError.invalidModel(url.path, "no unet/config.json")
        }
        let firstStage: FirstStageKind
        if let c = folder.component("vae") ?? folder.component("vqvae") {
            // LDMTextToImagePipeline's `vqvae` is an AutoencoderKL: the class decides, not the folder name.
            let name = c.className ?? (c.name == "vae" ? "AutoencoderKL" : "VQModel")
            firstStage = FirstStageKind(rawValue: name) ?? .other
        } else {
            firstStage = .none
        }
        let hasTokenizer = folder.component("tokenizer") != nil
        let text: TextEncoderKind?
        if folder.component("bert") != nil && hasTokenizer {
            text = .ldmBert
        } else if cfg["addition_embed_type"] as? String == "text_time" {
            let refiner = folder.modelIndex?["requires_aesthetics_score"] as? Bool == true || folder.component("text_encoder") == nil
            text = refiner ? .sdxlRefiner : .sdxl
        } else if folder.component("text_encoder") != nil && hasTokenizer {
            text = .clip
        } else {
            text = nil
        }
        let inC = cfg["in_channels"] as? Int ?? 4
        let outC = cfg["out_channels"] as? Int ?? 4
        let kind = ModelKind.classify(text: text, classes: cfg["num_class_embeds"] as? Int, semantic: nil, layout: false,
                                      unetIn: inC, unetOut: outC)
        return ModelSummary(kind: kind, firstStage: firstStage, unetInChannels: inC, unetOutChannels: outC, isCompVisFile: false,
                            timeCondProjDim: cfg["time_cond_proj_dim"] as? Int, pipelineClass: folder.className)
    }
}
