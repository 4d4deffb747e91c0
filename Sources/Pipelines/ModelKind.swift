// What a latent diffusion model is, by what conditions its UNet (CompVis ldm/models/diffusion/ddpm.py LatentDiffusion:
// cond_stage_config and conditioning_key; diffusers: the pipeline class a model_index.json names), and the one answer
// to "which generation task fits this model" (`ModelKind.tasks`): `ldm` maps each task to its command, the pipelines
// refuse the others with `PipelineError.wrongModelKind`, `ldm inspect` prints the kind.

/// The first stage (autoencoder) a model decodes with; `none` for pixel-space models (diffusers DDPMPipeline).
public enum FirstStageKind: String, Sendable {
    case autoencoderKL = "AutoencoderKL"
    case vqModel = "VQModel"
    /// Another diffusers autoencoder class, which no pipeline here decodes with.
    case other
    case none
}

/// The prompt encoder of a text-conditioned model.
public enum TextEncoderKind: String, Sendable {
    /// transformers CLIPTextModel: CompVis FrozenCLIPEmbedder (SD 1.x) and every diffusers folder's text_encoder.
    case clip = "CLIP"
    /// CompVis FrozenOpenCLIPEmbedder (SD 2.x single files), run as a CLIPTextModel.
    case openCLIP = "OpenCLIP"
    /// LDM-BERT: CompVis BERTEmbedder, diffusers LDMBertModel (LDMTextToImagePipeline).
    case ldmBert = "LDM-BERT"
    /// StableDiffusionXLPipeline: text_encoder (CLIP ViT-L) and text_encoder_2 (OpenCLIP bigG with projection).
    case sdxl = "SDXL dual CLIP"
    /// The SDXL refiner: text_encoder_2 only, with aesthetic-score conditioning.
    case sdxlRefiner = "SDXL refiner CLIP"
}

/// The generation tasks of the pipelines (each is one `ldm` command of the same name).
public enum GenerationTask: String, CaseIterable, Sendable {
    case sample, txt2img, img2img, inpaint, upscale, semantic, layout
}

/// What conditions a model's UNet.
public enum ModelKind: Equatable, Sendable {
    /// No conditioning (diffusers LDMPipeline, DDPMPipeline / DDIMPipeline folders).
    case unconditional
    /// Class labels: the UNet's num_class_embeds, or CompVis ClassEmbedder as cross-attention context.
    case classConditional(classes: Int)
    /// A prompt through `TextEncoderKind`, the latents alone as the UNet's input.
    case text(TextEncoderKind)
    /// A prompt, with the mask and the masked image's latents concatenated to the latents (9-channel inpainting UNets).
    case inpainting(TextEncoderKind)
    /// The low-resolution image concatenated to the latents (LDMSuperResolutionPipeline, CompVis bsr_sr).
    case superResolution
    /// A label map (CompVis SpatialRescaler cond stage, conditioning_key concat).
    case semanticSynthesis(SemanticSynthesisGeometry)
    /// A layout of objects (CompVis layout2img: BERTEmbedder on ObjectsBoundingBoxConditionalBuilder tokens).
    case layout
    /// A UNet taking conditioning no pipeline here supplies (`why` says what).
    case unsupported(String)

    /// The tasks that can run this model.
    public var tasks: [GenerationTask] {
        switch self {
        case .unconditional, .classConditional:
            return [.sample]
        case .text(.ldmBert):
            return [.txt2img]
        case .text(.sdxlRefiner):
            // StableDiffusionXLImg2ImgPipeline / InpaintPipeline (aesthetic-score time ids); txt2img only as the
            // refiner of a base model.
            return [.img2img, .inpaint]
        case .text:
            return [.txt2img, .img2img, .inpaint]
        case .inpainting(.sdxlRefiner), .inpainting(.ldmBert):
            return []
        case .inpainting:
            return [.inpaint]
        case .superResolution:
            return [.upscale]
        case .semanticSynthesis:
            return [.semantic]
        case .layout:
            return [.layout]
        case .unsupported:
            return []
        }
    }

    public func serves(_ task: GenerationTask) -> Bool {
        tasks.contains(task)
    }

    /// "a layout-to-image model", for messages.
    public var name: String {
        switch self {
        case .unconditional:
            return "an unconditional model"
        case .classConditional(let n):
            return "a class-conditional model (\(n) classes)"
        case .text(.sdxlRefiner):
            return "an SDXL refiner (requires_aesthetics_score: it runs img2img and inpainting, or refines a base model's txt2img)"
        case .text(let e):
            return "a text-conditioned model (\(e.rawValue))"
        case .inpainting(let e):
            return "an inpainting model (\(e.rawValue), 9-channel UNet)"
        case .superResolution:
            return "a super-resolution model (its UNet takes the low-res image beside the latents)"
        case .semanticSynthesis:
            return "a semantic-synthesis model (its extra channels are a rescaled label map)"
        case .layout:
            return "a layout-to-image model"
        case .unsupported(let why):
            return "a model no pipeline here runs (\(why))"
        }
    }

    /// The kind of a model from what its configs say (ModelSummary, ModelBundle): `layout` and `semantic` first, then
    /// the text encoder, class count and the UNet's extra input channels.
    static func classify(text: TextEncoderKind?, classes: Int?, semantic: SemanticSynthesisGeometry?, layout: Bool,
                         unetIn: Int, unetOut: Int) -> ModelKind {
        if layout {
            return .layout
        }
        if let semantic {
            return .semanticSynthesis(semantic)
        }
        let extra = unetIn - unetOut
        if let text {
            if extra == 0 {
                return .text(text)
            }
            if unetIn == 2 * unetOut + 1 {
                return .inpainting(text)
            }
            return .unsupported("a text-conditioned UNet taking \(extra) channels besides the latents")
        }
        if extra == 3 {
            return .superResolution
        }
        if extra != 0 {
            return .unsupported("\(extra) conditioning channels besides the latents")
        }
        if let classes {
            return .classConditional(classes: classes)
        }
        return .unconditional
    }
}
