// Pipelines of the original latent diffusion models: unconditional sampling (diffusers LDMPipeline,
// pipelines/deprecated/latent_diffusion_uncond), class-conditional sampling through the UNet's class embedding with a
// null class for guidance (CompVis cin models: the unconditional class is n_classes - 1; loaded from their YAML, the
// ClassEmbedder output is the cross-attention context, as ldm LatentDiffusion does), and 4x super-resolution
// (diffusers LDMSuperResolutionPipeline: low-res image concatenated to the latents, VQ decode without scaling; the
// CompVis form, bsr_sr config.yaml: cond_stage torch.nn.Identity + conditioning_key concat, the same computation).
import Autoencoders
import Diffusion
import Foundation
import Imaging
import TensorCore

public final class LatentDiffusionPipeline {
    public let bundle: ModelBundle
    public init(bundle: ModelBundle) { self.bundle = bundle }

    /// LDMPipeline.__call__; with `classLabel` the UNet's class embedding is used (guided with the null class
    /// num_class_embeds - 1 when guidanceScale > 1). width/height default to sample_size * vae factor.
    public func sample(_ o: SamplingOptions, classLabel: Int? = nil, guidanceScale: Double = 1, width: Int? = nil,
                       height: Int? = nil, generator: RandomSource, progress: ProgressHandler? = nil) throws -> GenerationResult {
        try o.validate()
        try Validation.checkGuidance(guidanceScale)
        let cfg = bundle.unet.config
        let f = bundle.vaeScaleFactor
        let (h, w) = (height ?? bundle.sampleSize * f, width ?? bundle.sampleSize * f)
        try Validation.checkSize(width: w, height: h, multiple: f)
        try bundle.require(.sample)
        var labels: [Int]?
        var null: [Int]?
        let classCount = bundle.classEmbedder?.nClasses ?? cfg.numClassEmbeds
        if let k = classLabel {
            guard let n = classCount else { throw PipelineError("the model is not class-conditional (no num_class_embeds): it takes no class label") }
            guard k >= 0, k < n else { throw PipelineError.invalidArgument(name: "class", value: "\(k)", why: "\(k) outside 0..<\(n)") }
            labels = Array(repeating: k, count: o.batchSize)
            if guidanceScale > 1 { null = Array(repeating: n - 1, count: o.batchSize) }
        } else if let n = classCount {
            throw PipelineError("the model is class-conditional (\(n) classes): it needs a class label")
        }
        let den: Denoiser
        if let embedder = bundle.classEmbedder, let labels {
            // CompVis ClassEmbedder: the class embedding (B, 1, D) is the cross-attention context; null class for guidance.
            den = Denoiser(unet: bundle.unet, guidanceScale: Float(guidanceScale), context: try embedder(labels),
                           uncondContext: try null.map { try embedder($0) })
        } else {
            den = Denoiser(unet: bundle.unet, guidanceScale: Float(guidanceScale), classLabels: labels, uncondClassLabels: null)
        }
        let run = try GenerationRun(o, schedulerConfig: bundle.schedulerConfig, generator: generator, progress: progress)
        return try run.generate(.noise(shape: [o.batchSize, cfg.inChannels, h / f, w / f]), den, firstStage: bundle.firstStage)
    }

    /// LDMSuperResolutionPipeline.__call__ (one image; resized down to a multiple of 32 with Lanczos as its preprocess).
    public func upscale(_ image: RGBImage, _ o: SamplingOptions, generator: RandomSource,
                        progress: ProgressHandler? = nil) throws -> GenerationResult {
        try o.validate()
        let cfg = bundle.unet.config
        try bundle.require(.upscale)
        guard cfg.inChannels == cfg.outChannels + 3, cfg.crossAttentionDim == nil, cfg.numClassEmbeds == nil else {
            throw PipelineError("\(bundle.url.path) is not a super-resolution model (its UNet must take latents + the low-res image)")
        }
        let w = image.width - image.width % 32
        let h = image.height - image.height % 32
        guard w >= 32, h >= 32 else { throw PipelineError.invalidArgument(name: "init image", value: "\(image.width)x\(image.height)", why: "\(image.width)x\(image.height) is smaller than 32x32") }
        let resized = (w, h) == (image.width, image.height) ? image : try image.resized(width: w, height: h, filter: .lanczos)
        let low = Tensor(VaeImageProcessor.toTensor(resized), shape: [1, 3, h, w])
        let den = Denoiser(unet: bundle.unet)
        den.concat = low
        den.concatBeforeScaling = true
        let run = try GenerationRun(o, schedulerConfig: bundle.schedulerConfig, generator: generator, progress: progress)
        return try run.generate(.noise(shape: [1, cfg.outChannels, h, w]), den, firstStage: bundle.firstStage,
                                scaled: bundle.superResolutionScaledDecode)
    }
}
