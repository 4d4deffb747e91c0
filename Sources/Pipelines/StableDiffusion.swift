// Text-to-image, image-to-image and inpainting for Stable Diffusion 1.x / 2.x, following diffusers 0.42
// StableDiffusionPipeline (pipeline_stable_diffusion.py), StableDiffusionImg2ImgPipeline
// (pipeline_stable_diffusion_img2img.py) and StableDiffusionInpaintPipeline (pipeline_stable_diffusion_inpaint.py),
// with the same order of random draws from one generator, so a seed reproduces diffusers' images. SDXL models run
// the same code with SDXL conditioning (StableDiffusionXL.swift): StableDiffusionXLPipeline,
// StableDiffusionXLImg2ImgPipeline and StableDiffusionXLInpaintPipeline draw in the same order.
import Autoencoders
import Conditioning
import Diffusion
import NeuralNetwork
import Foundation
import Imaging
import TensorCore
import Tokenizers
import UNetModels

/// How a prompt becomes CLIP conditioning.
/// - `diffusers`: diffusers' encode_prompt: one window of model_max_length tokens (longer prompts truncated),
///   brackets are plain text.
/// - the others are AUTOMATIC1111's emphasis modes (modules/sd_emphasis.py, sd_hijack_clip.py tokenize_line): the
///   prompt is cut into 75-token chunks (BREAK, comma back-tracking) encoded one by one and concatenated;
///   `original` ("Original") weights the tokens of "(word:1.3)", "(word)", "[word]" and restores the mean,
///   `noNorm` ("No norm") weights without restoring it, `ignore` ("Ignore") strips the syntax and weights nothing,
///   `none` ("None") keeps the brackets as text.
public enum PromptEmphasis: String, CaseIterable, Sendable {
    case diffusers, original, noNorm = "no-norm", ignore, none

    /// The web UI's name of the mode (its infotext "Emphasis" value); nil for `diffusers`.
    public var webUIName: String? {
        switch self {
        case .diffusers: return nil
        case .original: return "Original"
        case .noNorm: return "No norm"
        case .ignore: return "Ignore"
        case .none: return "None"
        }
    }
}

public struct PromptOptions {
    public var prompt: String
    public var negativePrompt: String
    public var guidanceScale: Double
    public var width: Int?
    public var height: Int?
    public var emphasis: PromptEmphasis
    /// diffusers `clip_skip`: how many of the text encoder's last layers to skip (0 = the last hidden state; the web
    /// UI's "Clip skip" is this + 1).
    public var clipSkip: Int
    /// SDXL micro-conditioning (original_size, crops_coords_top_left, target_size and their negative counterparts).
    public var sizeConditioning = SDXLSizeConditioning()
    public init(prompt: String, negativePrompt: String = "", guidanceScale: Double = 7.5, width: Int? = nil, height: Int? = nil,
                emphasis: PromptEmphasis = .diffusers, clipSkip: Int = 0) {
        self.prompt = prompt
        self.negativePrompt = negativePrompt
        self.guidanceScale = guidanceScale
        self.width = width
        self.height = height
        self.emphasis = emphasis
        self.clipSkip = clipSkip
    }
    public func validate() throws {
        try Validation.checkGuidance(guidanceScale)
        if width != nil || height != nil { try Validation.checkSize(width: width ?? 8, height: height ?? 8) }
    }
}

public final class StableDiffusionPipeline {
    public let bundle: ModelBundle
    let vae: AutoencoderKL
    public init(bundle: ModelBundle) throws {
        guard let text = bundle.kind.textEncoder, text != .ldmBert else {
            // LDM-BERT models run in LDMTextToImagePipeline.
            throw PipelineError.wrongModelKind(model: bundle.url.path, kind: bundle.kind, task: .txt2img)
        }
        guard (bundle.textEncoder != nil && bundle.tokenizer != nil) || (bundle.textEncoder2 != nil && bundle.tokenizer2 != nil) else {
            throw PipelineError.invalidModel(bundle.url.path, "its \(text.rawValue) text encoder has no tokenizer")
        }
        guard case .kl(let vae) = bundle.firstStage else { throw PipelineError.invalidModel(bundle.url.path, "Stable Diffusion needs an AutoencoderKL") }
        self.bundle = bundle
        self.vae = vae
    }

    /// encode_prompt: CLIP last hidden state of the padded prompt (and of the negative prompt when guiding),
    /// repeated for the batch. Returns (cond, uncond). With a web-UI emphasis mode the two can have different
    /// numbers of 77-token chunks (the Denoiser then runs them as separate UNet passes, as the web UI does).
    public func encodePrompt(_ p: PromptOptions, batch: Int, guidance: Bool) throws -> (Tensor, Tensor?) {
        guard let encoder = bundle.textEncoder, let tokenizer = bundle.tokenizer else { throw PipelineError("no text encoder") }
        guard p.clipSkip >= 0, p.clipSkip < encoder.layers.count else {
            throw PipelineError.invalidArgument(name: "clip skip", value: "\(p.clipSkip + 1)",
                                                why: "\(p.clipSkip + 1) is outside 1...\(encoder.layers.count) (the text encoder has \(encoder.layers.count) layers)")
        }
        let length = min(tokenizer.modelMaxLength, encoder.config.maxPositionEmbeddings)
        func embed(_ text: String) throws -> Tensor {
            let e = try GradMode.noGrad { () throws -> Tensor in
                switch p.emphasis {
                case .diffusers:
                    return try encoder.encode([tokenizer(text, maxLength: length)], clipSkip: p.clipSkip)
                case .original, .noNorm, .ignore, .none:
                    let wp = tokenizer.weightedPrompt(text, emphasis: p.emphasis != .none)
                    return try encoder.encode(wp, clipSkip: p.clipSkip, emphasis: p.emphasis == .original || p.emphasis == .noNorm,
                                              normalize: p.emphasis == .original)
                }
            }
            return batch == 1 ? e : concat([Tensor](repeating: e, count: batch), axis: 0)
        }
        return (try embed(p.prompt), guidance ? try embed(p.negativePrompt) : nil)
    }

    func size(_ p: PromptOptions) -> (height: Int, width: Int) {
        (p.height ?? bundle.defaultImageSize, p.width ?? bundle.defaultImageSize)
    }

    /// One generation per process (`ModelBundle.evictsWeightsAfterUse`, the command line): the text encoders' mapped
    /// pages go once the prompt is encoded, the UNet's converted weights once the loop is over (SD and SDXL alike).
    func evictAfterPromptEncoding(_ den: Denoiser) {
        guard bundle.evictsWeightsAfterUse else { return }
        bundle.textEncoder?.evictMappedWeights()
        bundle.textEncoder2?.evictMappedWeights()
        den.evictsUNetAfterLoop = true
        // The tensor buffer cache keeps as much as the high-water mark so far (the load's and the text encoder's
        // temporaries): returned to the kernel, so that the loop holds no more than its own peak.
        releaseCachedTensorBuffers()
    }

    /// LatentConsistencyModelPipeline folders guide only through the UNet's w embedding (no negative prompt batch).
    public var isLatentConsistencyPipeline: Bool {
        bundle.pipelineClass == "LatentConsistencyModelPipeline" || bundle.pipelineClass == "LatentConsistencyModelImg2ImgPipeline"
    }

    /// The conditioning of one request; `imageSize` (the size the latents decode to) selects the SDXL image-to-image /
    /// inpainting pipelines' time ids. Public for callers that run their own loop over `GenerationRun` (the server's
    /// web-UI img2img and hires fix).
    public func denoiser(_ p: PromptOptions, batch: Int, imageSize: (height: Int, width: Int)? = nil) throws -> Denoiser {
        if bundle.isSDXL { return try sdxlDenoiser(p, batch: batch, imageSize: imageSize) }
        let guidance = p.guidanceScale > 1 && !isLatentConsistencyPipeline
        let (cond, uncond) = try encodePrompt(p, batch: batch, guidance: guidance)
        let den = Denoiser(unet: bundle.unet, guidanceScale: Float(p.guidanceScale), context: cond, uncondContext: uncond)
        evictAfterPromptEncoding(den)
        // Both StableDiffusionPipeline and LatentConsistencyModelPipeline embed w = guidance_scale - 1 for UNets with
        // time_cond_proj_dim (get_guidance_scale_embedding).
        if let dim = bundle.unet.config.timeCondProjDim {
            den.timestepCond = UNet2DConditionModel.guidanceScaleEmbedding([Float](repeating: Float(p.guidanceScale - 1), count: batch), dim: dim)
        }
        return den
    }

    /// StableDiffusionPipeline.__call__.
    public func textToImage(_ p: PromptOptions, _ o: SamplingOptions, generator: RandomSource,
                            progress: ProgressHandler? = nil) throws -> GenerationResult {
        try decodeLatents(textToLatents(p, o, generator: generator, progress: progress), firstStage: bundle.firstStage)
    }

    /// StableDiffusionPipeline.__call__ with output_type="latent": the denoised latents (scaled, not decoded). With
    /// `denoisingEnd` (SDXL only, StableDiffusionXLPipeline's denoising_end) the loop stops at that fraction of the
    /// schedule, leaving partly denoised latents for a refiner (`refine`).
    public func textToLatents(_ p: PromptOptions, _ o: SamplingOptions, denoisingEnd: Double? = nil, generator: RandomSource,
                              progress: ProgressHandler? = nil) throws -> Tensor {
        try p.validate()
        try o.validate()
        let (h, w) = size(p)
        try Validation.checkSize(width: w, height: h, multiple: bundle.vaeScaleFactor)
        guard bundle.unet.config.inChannels == bundle.latentChannels else {
            throw PipelineError.wrongModelKind(model: bundle.url.path, kind: bundle.kind, task: .txt2img)
        }
        try requireSDXL(denoisingStart: nil, denoisingEnd: denoisingEnd)
        let den = try denoiser(p, batch: o.batchSize)
        let run = try GenerationRun(o, schedulerConfig: bundle.schedulerConfig, denoisingEnd: denoisingEnd, generator: generator,
                                    progress: progress)
        let shape = [o.batchSize, bundle.latentChannels, h / bundle.vaeScaleFactor, w / bundle.vaeScaleFactor]
        return try run.latents(.noise(shape: shape), den)
    }

    /// `denoising_start` / `denoising_end` exist in the SDXL pipelines only.
    func requireSDXL(denoisingStart: Double?, denoisingEnd: Double?) throws {
        guard bundle.isSDXL || (denoisingStart == nil && denoisingEnd == nil) else {
            throw PipelineError("denoising start / end (the base + refiner handoff) apply to SDXL models only")
        }
    }

    /// VaeImageProcessor.preprocess of an init image: (1, 3, H, W) in [-1, 1], size rounded down to the VAE factor.
    func preprocess(_ image: RGBImage, _ p: PromptOptions) throws -> Tensor {
        let proc = VaeImageProcessor(vaeScaleFactor: bundle.vaeScaleFactor)
        let (t, h, w) = try proc.preprocess(image, height: p.height, width: p.width)
        return Tensor(t, shape: [1, 3, h, w])
    }

    /// _encode_vae_image: scaling_factor * vae.encode(x).latent_dist.sample(generator).
    func encodeImage(_ x: Tensor, generator: RandomSource) throws -> Tensor {
        vae.scale(try vae.encode(x).sample(generator: generator))
    }

    /// StableDiffusionImg2ImgPipeline.__call__ (strength: how much of the schedule is run), and for SDXL
    /// StableDiffusionXLImg2ImgPipeline.__call__ (the refiner's aesthetic scores; `denoisingStart` replaces strength
    /// and starts from the image latents without noise, `denoisingEnd` stops early). On an LCM folder with an LCM or TCD
    /// sampler, LatentConsistencyModelImg2ImgPipeline.__call__: the strength cuts the distillation grid and all steps
    /// run (GenerationRun's consistencyGrid).
    public func imageToImage(_ p: PromptOptions, _ o: SamplingOptions, image: RGBImage, strength: Double,
                             denoisingStart: Double? = nil, denoisingEnd: Double? = nil,
                             generator: RandomSource, progress: ProgressHandler? = nil) throws -> GenerationResult {
        try p.validate()
        try o.validate()
        try Validation.checkStrength(strength)
        try requireSDXL(denoisingStart: denoisingStart, denoisingEnd: denoisingEnd)
        let x = try preprocess(image, p)
        let run = try GenerationRun(o, schedulerConfig: bundle.schedulerConfig, strength: strength,
                                    consistencyGrid: isLatentConsistencyPipeline, denoisingStart: denoisingStart,
                                    denoisingEnd: denoisingEnd, generator: generator, progress: progress)
        if denoisingStart == nil && !run.strengthInGrid { try Validation.checkImg2ImgSteps(steps: o.steps, strength: strength) }
        let den = try denoiser(p, batch: o.batchSize, imageSize: (x.shape[2], x.shape[3]))
        let initLatents = repeatBatch(try encodeImage(x, generator: generator), o.batchSize)
        return try run.generate(denoisingStart == nil ? .image(initLatents) : .latents(initLatents), den, firstStage: bundle.firstStage)
    }

    /// StableDiffusionInpaintPipeline.__call__: 9-channel inpainting UNets get [latents, mask, masked-image latents];
    /// 4-channel UNets keep the unmasked area on the noised original after every step. White (>= 0.5) = repaint.
    public func inpaint(_ p: PromptOptions, _ o: SamplingOptions, image: RGBImage, mask: GrayImage, strength: Double = 1,
                        generator: RandomSource, progress: ProgressHandler? = nil) throws -> GenerationResult {
        try p.validate()
        try o.validate()
        try Validation.checkStrength(strength)
        try Validation.checkImg2ImgSteps(steps: o.steps, strength: strength)
        try Validation.checkMaskSize(image: (image.width, image.height), mask: (mask.width, mask.height))
        let unetChannels = bundle.unet.config.inChannels
        let c = bundle.latentChannels
        guard unetChannels == c || unetChannels == 2 * c + 1 else {
            throw PipelineError("the UNet takes \(unetChannels) channels; inpainting needs \(c) or \(2 * c + 1)")
        }
        let x = try preprocess(image, p)
        let (b, h, w) = (o.batchSize, x.shape[2], x.shape[3])
        let den = try denoiser(p, batch: o.batchSize, imageSize: (h, w))
        let run = try GenerationRun(o, schedulerConfig: bundle.schedulerConfig, strength: strength, generator: generator, progress: progress)
        let f = bundle.vaeScaleFactor
        // prepare_latents: the image latents (drawn before the noise) start the denoising below strength 1 and feed the blend
        let isStrengthMax = strength == 1
        var imageLatents: Tensor?
        if unetChannels == c || !isStrengthMax { imageLatents = repeatBatch(try encodeImage(x, generator: generator), b) }
        let start: LatentStart = if !isStrengthMax, let il = imageLatents { .image(il) } else { .noise(shape: [b, c, h / f, w / f]) }
        let (latents, noise) = run.initialLatents(start)
        // mask_processor.preprocess (binarized), masked image, prepare_mask_latents (nearest resize to the latent grid)
        let (m, _, _) = try VaeImageProcessor(vaeScaleFactor: f).preprocessMask(mask, height: h, width: w)
        var masked = x.contiguous().toArray()
        let hw = h * w
        for ch in 0..<3 {
            for i in 0..<hw where m[i] >= 0.5 {
                masked[ch * hw + i] = 0
            }
        }
        let maskedLatents = try encodeImage(Tensor(masked, shape: [1, 3, h, w]), generator: generator)
        var small = [Float](repeating: 0, count: (h / f) * (w / f))
        for y in 0..<(h / f) {
            for xx in 0..<(w / f) {
                small[y * (w / f) + xx] = m[(y * f) * w + xx * f]
            }
        }
        let maskBatch = repeatBatch(Tensor(small, shape: [1, 1, h / f, w / f]), b)
        var blend: LatentMask?
        if unetChannels == c, let il = imageLatents {
            blend = LatentMask(mask: maskBatch, imageLatents: il, noise: noise)
        } else {
            den.concat = concat([maskBatch, repeatBatch(maskedLatents, b)], axis: 1)
        }
        return try decodeLatents(run.denoise(latents, den, mask: blend), firstStage: bundle.firstStage)
    }
}
