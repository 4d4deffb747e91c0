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
import CompVis
import Conditioning
import Diffusion
import Foundation
import NeuralNetwork
import Tokenizers
import UNetModels

extension CompVisModelConfig {
    /// A semantic-synthesis model's geometry (cond_stage SpatialRescaler), checked against the UNet and the first
    /// stage: in_channels = latent channels + the rescaler's output channels, no cross-attention, and the rescaled
    /// label map the size of the latents.
    public func semanticSynthesisGeometry(firstStage: FirstStageConfig) throws -> SemanticSynthesisGeometry {
        let r = try spatialRescaler()
        let latent: Int
        switch firstStage {
        case .kl(let c): latent = c.latentChannels
        case .vq(let c): latent = c.vqEmbedDim ?? c.latentChannels
        }
        return try SemanticSynthesisGeometry(rescaler: r, unet: unet, firstStageFactor: 1 << max(firstStage.blockCount - 1, 0),
                                             latentChannels: latent)
    }
}

extension ModelSummary {
    /// The summary of a checkpoint described by a CompVis YAML (no weights read).
    public static func read(yaml: [String: Any]) throws -> ModelSummary {
        try read(config: CompVisModelConfig(yaml: yaml))
    }

    /// The summary of a checkpoint described by a CompVis configuration (no weights read).
    public static func read(config c: CompVisModelConfig) throws -> ModelSummary {
        let first = c.firstStage
        let name = c.condName
        var classes = c.unet.numClassEmbeds
        if name == "ClassEmbedder" { classes = c.condParams["n_classes"] as? Int ?? 1000 }
        if name == "BERTEmbedder" {
            let bert = try c.bertConfig()
            guard c.unet.crossAttentionDim.map({ $0.allSatisfy { $0 == bert.dModel } }) ?? false else {
                throw PipelineError.invalidModelConfig("the UNet's context_dim does not match BERTEmbedder's n_embed \(bert.dModel)")
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
        do { return try derive() } catch let e as ConditioningError { throw PipelineError.invalidModel(url.path, "\(e.description)") }
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
        try load(checkpoint: url, config: CompVisModelConfig(yaml: stated), bertVocabulary: bertVocabulary)
    }

    /// `load(checkpoint:yaml:bertVocabulary:)` with the YAML already read into its typed configuration.
    public static func load(checkpoint url: URL, config stated: CompVisModelConfig, bertVocabulary: URL? = nil) throws -> ModelBundle {
        let file: CheckpointFile
        do {
            file = try CheckpointFile.open(url)
        } catch {
            throw PipelineError.unreadableModel(url.path, "\(error)")
        }
        let records = file.tensors
        let (yaml, notes): ([String: Any], [String])
        do {
            (yaml, notes) = try CompVisArchitecture.reconcile(yaml: stated.yaml, records: records)
        } catch let e as CompVisError {
            throw PipelineError.invalidModel(url.path, "\(e.description)")
        }
        // The YAML changes only where a note says so.
        let config = notes.isEmpty ? stated : try CompVisModelConfig(yaml: yaml)
        guard records.keys.contains(where: { $0.hasPrefix(CompVisUNetKeyMap.compVisPrefix) }) else {
            throw PipelineError.invalidModel(url.path, "no UNet weights (model.diffusion_model.*)")
        }
        // Semantic synthesis: channel counts and sizes checked before any weight is read.
        let semantic = config.condName == "SpatialRescaler" ? try config.semanticSynthesisGeometry(firstStage: config.firstStage) : nil
        let unet = try UNet2DConditionModel(config: config.unet, compVisCheckpoint: records)
        let (firstStage, _) = try FirstStageModel.loadCompVis(records: records, config: config.firstStage)

        var encoder: CLIPTextModel?, tokenizer: CLIPTokenizer?, classEmbedder: ClassEmbedder?
        var bert: LDMBertModel?, bertTokenizer: BertTokenizer?, bertLength: Int?
        var spatialRescaler: SpatialRescaler?
        var layout: ObjectsBoundingBoxConditionalBuilder?
        switch config.condName {
        case "BERTEmbedder":
            let c = try config.bertConfig()
            guard config.unet.crossAttentionDim.map({ $0.allSatisfy { $0 == c.dModel } }) ?? false else {
                throw PipelineError.invalidModelConfig("the UNet's context_dim does not match BERTEmbedder's n_embed \(c.dModel)")
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
            guard !own.isEmpty else { throw PipelineError.invalidModel(url.path, "no cond_stage_model.transformer.* weights for BERTEmbedder") }
            do { bert = try LDMBertModel(config: c, bertEmbedder: own) } catch let e as CheckpointError {
                throw PipelineError.invalidModel(url.path, "\(e.message)")
            }
        case "FrozenCLIPEmbedder":
            let clip = records.filter { $0.key.hasPrefix(CLIPTable.compvisPrefix) }
            guard !clip.isEmpty else { throw PipelineError.invalidModel(url.path, "no cond_stage_model.transformer.* weights for FrozenCLIPEmbedder") }
            // The YAML's FrozenCLIPEmbedder states no size (the code hard-codes ViT-L/14): the weights decide.
            encoder = try CLIPTextModel(config: textEncoderConfig(.frozenCLIPEmbedder(clip), url))
            _ = try encoder?.loadWeights(CLIPTable.records(clip))
            tokenizer = try CLIPTokenizer.openCLIPDefault()
        case "FrozenOpenCLIPEmbedder":
            encoder = try CLIPTextModel(config: textEncoderConfig(.frozenOpenCLIPEmbedder(records), url))
            _ = try encoder?.loadOpenCLIPWeights(records)
            tokenizer = try CLIPTokenizer.openCLIPDefault(padToken: "!")
        case "Identity":
            // bsr_sr: c = the low-res image in [-1, 1], concatenated to x (DiffusionWrapper, conditioning_key concat).
            guard config.unet.inChannels == config.unet.outChannels + 3, config.unet.crossAttentionDim == nil else {
                throw PipelineError.invalidModelConfig("cond_stage_config torch.nn.Identity (concat) needs a UNet taking latents + the 3-channel low-res image "
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
                throw PipelineError.invalidModel(url.path, "cond_stage_model weights the YAML's SpatialRescaler does not have: "
                                    + report.unexpected.prefix(5).map { "cond_stage_model." + $0 }.joined(separator: ", ")
                                    + " (check out_channels / bias in cond_stage_config)")
            }
            spatialRescaler = r
        case "ClassEmbedder":
            let n = config.condParams["n_classes"] as? Int ?? 1000
            guard let dim = config.condParams["embed_dim"] as? Int, dim > 0, n > 0 else {
                throw PipelineError.invalidModelConfig("ClassEmbedder needs positive params.embed_dim and n_classes")
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
        bundle.spatialRescaler = spatialRescaler
        bundle.semanticSynthesis = semantic
        bundle.superResolutionScaledDecode = true       // decode_first_stage: z / scale_factor (YAML, default 1.0)
        bundle.bert = bert
        bundle.bertTokenizer = bertTokenizer
        bundle.bertMaxLength = bertLength
        bundle.layoutBuilder = layout
        bundle.notes = notes
        bundle.textEncoderIsOpenCLIP = config.condName == "FrozenOpenCLIPEmbedder"
        return bundle
    }
}
