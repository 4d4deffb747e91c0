// The components a pipeline needs, loaded the way diffusers DiffusionPipeline.from_pretrained reads a folder
// (model_index.json + unet/, vae/ or vqvae/, text_encoder/ (CLIP) or bert/ (LDMBertModel, LDMTextToImagePipeline),
// tokenizer/, scheduler/) or the way
// StableDiffusionPipeline.from_single_file reads a CompVis checkpoint (model.diffusion_model.*, first_stage_model.*,
// cond_stage_model.*; configs derived from tensor shapes, OpenAI/OpenCLIP vocabulary shipped with Tokenizers).
// With a CompVis YAML config (--config), see CompVisYAMLLoading.swift; without one, shapes and SD defaults are used.
import Autoencoders
import Checkpoints
import CompVis
import Conditioning
import Diffusion
import Foundation
import NeuralNetwork
import TensorCore
import Tokenizers
import UNetModels

public final class ModelBundle {
    public let url: URL
    public let unet: UNet2DConditionModel
    /// nil for pixel-space models (diffusers DDPMPipeline / DDIMPipeline folders: unet + scheduler).
    public let firstStage: FirstStageModel?
    public let textEncoder: CLIPTextModel?
    public let tokenizer: CLIPTokenizer?
    public let schedulerConfig: SchedulerConfig
    /// UNet sample_size (latent side) from its config; 64 for CompVis SD files (512 px).
    public let sampleSize: Int
    /// The CompVis text encoder was FrozenOpenCLIPEmbedder (SD 2.x), run as a CLIPTextModel.
    public var textEncoderIsOpenCLIP = false
    /// For a process that makes one generation (the command line): once the prompt is encoded the text encoder's
    /// memory-mapped weight pages are dropped, and the UNet's once the denoising loop is over, so that they are not
    /// resident beside the next stage's (`Module.evictMappedWeights`; values never change, a later use reads them
    /// again from the page cache). Weights loaded under `WeightStorage.float32` are copies and stay.
    public var evictsWeightsAfterUse = false
    /// CompVis ClassEmbedder conditioning (cin256 YAML configs): class labels -> cross-attention context.
    public var classEmbedder: ClassEmbedder?
    /// LDM-BERT conditioning (diffusers LDMTextToImagePipeline folders: `bert/` + a BertTokenizer `tokenizer/`).
    public var bert: LDMBertModel?
    public var bertTokenizer: BertTokenizer?
    /// Prompt length for LDM-BERT: CompVis BERTEmbedder's max_seq_len (YAML); nil: LDMTextToImagePipeline's 77.
    public var bertMaxLength: Int?
    /// Super-resolution decode divides latents by the first stage's scale factor (CompVis decode_first_stage, YAML
    /// `scale_factor`, 1.0 in bsr_sr); diffusers LDMSuperResolutionPipeline decodes them as they are.
    public var superResolutionScaledDecode = false
    /// model_index.json's `_class_name` (e.g. "LatentConsistencyModelPipeline": guidance only through the UNet's
    /// w embedding, no classifier-free guidance batch).
    public var pipelineClass: String?
    /// LoRAs merged into the weights (`mergeLoRAs`), nil when none.
    public internal(set) var appliedLoRAs: AppliedLoRAs?
    /// CompVis semantic synthesis (cond_stage SpatialRescaler, concat): the label map's conditioning and geometry.
    public var spatialRescaler: SpatialRescaler?
    public var semanticSynthesis: SemanticSynthesisGeometry?
    /// Layout-to-image models (CompVis YAML, cond_stage_key coordinates_bbox): the layout tokenizer whose ids `bert`
    /// takes (bertTokenizer is nil then).
    public var layoutBuilder: ObjectsBoundingBoxConditionalBuilder?
    /// SDXL (StableDiffusionXLPipeline folders): text_encoder_2 (CLIPTextModelWithProjection) with tokenizer_2, and
    /// model_index.json's force_zeros_for_empty_prompt / requires_aesthetics_score (refiner).
    public var textEncoder2: CLIPTextModelWithProjection?
    public var tokenizer2: CLIPTokenizer?
    public var forceZerosForEmptyPrompt = false
    public var requiresAestheticsScore = false
    /// An SDXL model: its UNet takes the "text_time" added conditioning.
    public var isSDXL: Bool { unet.config.usesTextTimeEmbedding }
    /// What loading took from the weights instead of the config (CompVis YAML values the checkpoint contradicts).
    public var notes: [String] = []

    /// What conditions the UNet (the loaded components decide, as ModelSummary decides from the configs).
    public var kind: ModelKind {
        let text: TextEncoderKind?
        if layoutBuilder != nil {
            text = nil
        } else if bert != nil {
            text = .ldmBert
        } else if isSDXL {
            text = requiresAestheticsScore || textEncoder == nil ? .sdxlRefiner : .sdxl
        } else if textEncoder != nil {
            text = textEncoderIsOpenCLIP ? .openCLIP : .clip
        } else {
            text = nil
        }
        return ModelKind.classify(text: text, classes: classEmbedder?.nClasses ?? unet.config.numClassEmbeds,
                                  semantic: spatialRescaler == nil ? nil : semanticSynthesis, layout: layoutBuilder != nil,
                                  unetIn: unet.config.inChannels, unetOut: unet.config.outChannels)
    }

    /// Throws `PipelineError.wrongModelKind` unless this model runs `task`.
    public func require(_ task: GenerationTask) throws {
        try kind.require(task, model: url.path)
    }

    public init(url: URL, unet: UNet2DConditionModel, firstStage: FirstStageModel?, textEncoder: CLIPTextModel?,
                tokenizer: CLIPTokenizer?, schedulerConfig: SchedulerConfig, sampleSize: Int) {
        self.url = url
        self.unet = unet
        self.firstStage = firstStage
        self.textEncoder = textEncoder
        self.tokenizer = tokenizer
        self.schedulerConfig = schedulerConfig
        self.sampleSize = sampleSize
    }

    /// diffusers `vae_scale_factor` = 2 ** (len(vae.config.block_out_channels) - 1).
    public var vaeScaleFactor: Int {
        switch firstStage {
        case .kl(let m):
            return m.downsamplingFactor
        case .vq(let m):
            return m.downsamplingFactor
        case nil:
            return 1
        }
    }
    /// Default image size: unet.config.sample_size * vae_scale_factor (diffusers' default height/width).
    public var defaultImageSize: Int { sampleSize * vaeScaleFactor }
    public var latentChannels: Int {
        switch firstStage {
        case .kl(let m): return m.config.latentChannels
        case .vq(let m): return m.config.latentChannels
        case nil: return unet.config.inChannels
        }
    }

    /// A diffusers folder or a CompVis single file (.safetensors / .ckpt).
    public static func load(_ url: URL) throws -> ModelBundle {
        DiffusersFolder.isFolder(url) ? try loadDiffusers(url) : try loadCompVis(url)
    }

    /// Loads a component that runs once per generation (text encoders, the first stage): under an inference policy
    /// its 16-bit or float32 Linear/Conv2d weights stay as the file stores them (`WeightStorage.asStored`: widened, or
    /// rounded to bf16, per call, which is the same numbers), so that they remain mapped pages that can be dropped
    /// after use instead of owned copies; the UNet, which runs every step, is loaded as the policy says.
    @discardableResult
    static func onceUsed<T>(_ body: () throws -> T) rethrows -> T {
        let s = WeightStorage.current
        return try WeightStorage.with(s == .float32 ? s : .asStored, body)
    }

    /// `load` with the weights held for inference in `dtype` compute (`WeightStorage.inference`: memory-mapped where
    /// the file allows, 16-bit Linear/Conv2d weights kept, bf16 ones for bf16 compute), not as float32 copies.
    public static func load(_ url: URL, forInferenceIn dtype: DType) throws -> ModelBundle {
        try WeightStorage.with(.inference(computing: dtype)) { try load(url) }
    }

    public static func loadDiffusers(_ url: URL) throws -> ModelBundle {
        let folder = try DiffusersFolder(url: url)
        guard let unetComponent = folder.component("unet") else { throw PipelineError.invalidModel(url.path, "no unet component") }
        let unet = try UNet2DConditionModel(pretrained: unetComponent)
        let sample = sampleSize(unetComponent.config?["sample_size"]) ?? 64
        let hasFirstStage = folder.component("vae") != nil || folder.component("vqvae") != nil
        let firstStage = hasFirstStage ? try onceUsed { try FirstStageModel.load(folder: url).model } : nil
        var encoder: CLIPTextModel?, tokenizer: CLIPTokenizer?
        var bert: LDMBertModel?, bertTokenizer: BertTokenizer?
        if let b = folder.component("bert") {
            // LDMTextToImagePipeline: bert (LDMBertModel) + tokenizer (BertTokenizer, vocab.txt).
            guard b.className == nil || b.className == "LDMBertModel" else {
                throw PipelineError.invalidModel(url.path, "bert component \(b.className ?? "") is not supported (LDMBertModel only)")
            }
            if let t = folder.component("tokenizer"), let cls = t.className, !["BertTokenizer", "BertTokenizerFast"].contains(cls) {
                throw PipelineError.invalidModel(url.path, "LDM-BERT needs a BertTokenizer, the folder's tokenizer is \(cls)")
            }
            let model = try LDMBertModel(pretrained: b)
            guard let dims = unet.config.crossAttentionDim, dims.allSatisfy({ $0 == model.config.dModel }) else {
                throw PipelineError.invalidModel(url.path, "the UNet's cross_attention_dim \(unet.config.crossAttentionDim.map { "\($0)" } ?? "none") does not match LDM-BERT's d_model \(model.config.dModel)")
            }
            bert = model
            bertTokenizer = try BertTokenizer(folder: url.appendingPathComponent("tokenizer"))
        }
        var encoder2: CLIPTextModelWithProjection?, tokenizer2: CLIPTokenizer?
        if let te2 = folder.component("text_encoder_2") {
            guard te2.className == nil || te2.className == "CLIPTextModelWithProjection" else {
                throw PipelineError.invalidModel(url.path, "text_encoder_2 \(te2.className ?? "") is not supported (CLIPTextModelWithProjection only)")
            }
            encoder2 = try onceUsed { try CLIPTextModelWithProjection(pretrained: te2) }
            tokenizer2 = try CLIPTokenizer(folder: url.appendingPathComponent("tokenizer_2"))
        }
        if let te = folder.component("text_encoder") {
            guard te.className == nil || te.className == "CLIPTextModel" else {
                throw PipelineError.invalidModel(url.path, "text encoder \(te.className ?? "") is not supported (CLIPTextModel only)")
            }
            encoder = try onceUsed { try CLIPTextModel(pretrained: te) }
            tokenizer = try CLIPTokenizer(folder: url.appendingPathComponent("tokenizer"))
        }
        let schedURL = url.appendingPathComponent("scheduler/scheduler_config.json")
        let sched = FileManager.default.fileExists(atPath: schedURL.path) ? try SchedulerConfig.load(contentsOf: schedURL)
                                                                          : stableDiffusionScheduler
        let bundle = ModelBundle(url: url, unet: unet, firstStage: firstStage, textEncoder: encoder, tokenizer: tokenizer,
                                 schedulerConfig: sched, sampleSize: sample)
        bundle.bert = bert
        bundle.bertTokenizer = bertTokenizer
        bundle.pipelineClass = folder.className
        bundle.textEncoder2 = encoder2
        bundle.tokenizer2 = tokenizer2
        bundle.forceZerosForEmptyPrompt = folder.modelIndex?["force_zeros_for_empty_prompt"] as? Bool ?? false
        bundle.requiresAestheticsScore = folder.modelIndex?["requires_aesthetics_score"] as? Bool ?? false
        if unet.config.usesTextTimeEmbedding, encoder2 == nil && encoder == nil {
            throw PipelineError.invalidModel(url.path, "an SDXL UNet needs text_encoder_2 (CLIPTextModelWithProjection) and tokenizer_2")
        }
        return bundle
    }

    static func sampleSize(_ v: Any?) -> Int? {
        if let i = v as? Int { return i }
        if let a = v as? [Int] { return a.first }
        return nil
    }

    /// The PNDM configuration Stable Diffusion 1.x/2.x ship (scheduler/scheduler_config.json of runwayml/stable-diffusion-v1-5),
    /// key for key: `clip_sample: false` carries over to DDIM when it is swapped in (its own default clips x0), while
    /// the absent `timestep_spacing` leaves each sampler its own default, as diffusers' from_config does.
    public static var stableDiffusionScheduler: SchedulerConfig { .stableDiffusion }

    /// A CompVis Stable Diffusion checkpoint: UNet and VAE renamed by the CompVis tables (configs derived from
    /// shapes), CLIP (SD 1.x) or OpenCLIP (SD 2.x, penultimate layer) text encoder, the shipped BPE vocabulary.
    public static func loadCompVis(_ url: URL) throws -> ModelBundle {
        let file = try CheckpointFile.open(url)
        if file.tensors[BERTLayout.compvisPrefix + "token_emb.weight"] != nil {
            throw PipelineError.ldmBertNeedsConfig(url.path)
        }
        if isSDXLSingleFile(file.tensors) { return try loadSDXLSingleFile(file, url: url, config: nil) }   // SDXLSingleFile.swift
        let (layout, components, _) = try Converter.compvisToDiffusers(file.tensors)
        guard let unetLayout = layout.unet, let unetTensors = components["unet"] else {
            throw PipelineError.invalidModel(url.path, "no UNet weights (model.diffusion_model.*)")
        }
        guard let vaeLayout = layout.vae, let vaeTensors = components["vae"] else {
            throw PipelineError.invalidModel(url.path, "no VAE weights (first_stage_model.*)")
        }
        let unetRecords = try records(unetTensors)
        let unetCfg = try DiffusersConfigs.unet(unetLayout, shapes: unetRecords.mapValues { $0.shape })
        try checkGroups(unetCfg.config, what: "UNet")
        let unet = try UNet2DConditionModel(configData: DiffusersConfigs.json(unetCfg.config))
        try unet.load(unetRecords, component: "unet")
        let vaeRecords = try records(vaeTensors)
        var vaeCfg = try DiffusersConfigs.vae(vaeLayout, shapes: vaeRecords.mapValues { $0.shape }).config
        try checkGroups(vaeCfg, what: "VAE")
        if let r = file.tensors["scale_factor"], r.elementCount == 1, let v = try r.floats().first { vaeCfg["scaling_factor"] = Double(v) }
        let vaeConfig: AutoencoderKLConfig
        do {
            vaeConfig = try JSONDecoder().decode(AutoencoderKLConfig.self, from: DiffusersConfigs.json(vaeCfg))
        } catch {
            throw PipelineError.invalidModel(url.path, "the VAE config derived from its shapes is not an AutoencoderKL config (\(error))")
        }
        let vae = try AutoencoderKL(config: vaeConfig)
        try onceUsed { try vae.load(vaeRecords, component: "vae") }

        var encoder: CLIPTextModel?, tokenizer: CLIPTokenizer?
        let keys = file.tensors.keys
        if keys.contains(where: { $0.hasPrefix(OpenCLIPMapping.prefix) }) {
            encoder = try CLIPTextModel(config: textEncoderConfig(.frozenOpenCLIPEmbedder(file.tensors), url))
            try onceUsed { try encoder?.loadOpenCLIPWeights(file.tensors) }
            tokenizer = try CLIPTokenizer.openCLIPDefault(padToken: "!")
        } else if keys.contains(where: { $0.hasPrefix(CLIPTable.compvisPrefix) }) {
            let clip = CLIPTable.records(file.tensors)
            encoder = try CLIPTextModel(config: textEncoderConfig(.frozenCLIPEmbedder(file.tensors), url))
            try onceUsed { try encoder?.loadWeights(clip) }
            tokenizer = try CLIPTokenizer.openCLIPDefault()
        }
        let bundle = ModelBundle(url: url, unet: unet, firstStage: .kl(vae), textEncoder: encoder, tokenizer: tokenizer,
                                 schedulerConfig: stableDiffusionScheduler, sampleSize: 64)
        bundle.textEncoderIsOpenCLIP = keys.contains(where: { $0.hasPrefix("cond_stage_model.model.") })
        return bundle
    }

    /// Derived configs assume norm_num_groups 32 (as diffusers' converter): refuse shapes it cannot divide.
    static func checkGroups(_ config: [String: Any], what: String) throws {
        let channels = config["block_out_channels"] as? [Int] ?? []
        let groups = config["norm_num_groups"] as? Int ?? 32
        guard !channels.isEmpty, channels.allSatisfy({ $0 > 0 && $0 % groups == 0 }) else {
            throw PipelineError("CompVis checkpoint: \(what) channels \(channels) are not multiples of \(groups) groups; convert it to a diffusers folder with its config")
        }
    }

    /// MappedTensors -> records under their diffusers names and shapes (views of the same storage).
    static func records(_ mapped: [MappedTensor]) throws -> [String: TensorRecord] {
        var out: [String: TensorRecord] = [:]
        for m in mapped {
            let r = m.source
            if r.shape == m.shape {
                out[m.name] = r
                continue
            }
            guard r.shape.reduce(1, *) == m.shape.reduce(1, *), r.strides == TensorRecord.contiguousStrides(r.shape) else {
                throw PipelineError("\(r.name): cannot view \(r.shape) as \(m.shape)")
            }
            out[m.name] = try TensorRecord(name: m.name, dtype: r.dtype, shape: m.shape, byteOffset: r.byteOffset, storage: r.storage)
        }
        return out
    }
}
