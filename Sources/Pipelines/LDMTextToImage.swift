// Text-to-image with CompVis' LDM-BERT text encoder (the LDM paper's 1.45B text-to-image model,
// CompVis/ldm-text2im-large-256), following diffusers 0.42 LDMTextToImagePipeline.__call__
// (pipelines/latent_diffusion/pipeline_latent_diffusion.py):
//   prompt embeddings = bert(tokenizer(prompt, padding="max_length", max_length=77, truncation=True).input_ids)[0];
//   guidance whenever guidance_scale != 1.0 (also below 1), with unconditional embeddings of "" (here: of the negative
//   prompt, "" by default), in one UNet batch [uncond, cond]: uncond + s * (cond - uncond);
//   latents = randn_tensor((B, unet.config.in_channels, H / f, W / f), generator); scheduler.set_timesteps(steps);
//   scheduler.step(noise_pred, t, latents, eta=eta) where the scheduler takes eta;
//   image = vqvae.decode(latents / vqvae.config.scaling_factor), (image / 2 + 0.5).clamp(0, 1).
//   Defaults: 50 steps, guidance 1.0, size unet.config.sample_size * vae_scale_factor.
// CompVis' own scripts/txt2img.py (a BERTEmbedder checkpoint + txt2img-1p4B-eval.yaml, ModelBundle.load(checkpoint:
// yaml:)) does the same: uc = get_learned_conditioning(n * [""]) only when scale != 1.0, DDIMSampler (or PLMSSampler)
// with cond/uncond in one batch [uc, c] and e_uncond + scale * (e_cond - e_uncond), decode_first_stage(z / scale_factor),
// clamp((x + 1) / 2); its defaults differ (200 DDIM steps, eta 0, scale 5.0, 256 px): pass --steps 200 --cfg-scale 5.
// Its DDIM timesteps (range(0, 1000, 1000 // S) + 1) are the YAML scheduler's (leading, steps_offset 1).
// Where we differ from that file, on purpose:
// - it calls scheduler.step without its generator, so ancestral noise comes from torch's global generator; we draw it
//   from the one generator (diffusers' output is reproduced by passing generator=torch.manual_seed(seed), which is
//   torch's global generator: tools/fixtures/ldm_text2img.py);
// - it neither multiplies the initial noise by init_noise_sigma nor calls scheduler.scale_model_input; both are the
//   identity for the schedulers the model ships with (DDIM) and for PNDM/DDPM, and we apply them (the one denoising
//   loop), so sigma-parameterised samplers (euler, lms, ...) work instead of starting from mis-scaled noise;
// - it sizes the latents height // 8 whatever the first stage's factor f; we use f (the same for the f=8 models).
import Autoencoders
import Conditioning
import Diffusion
import Foundation
import TensorCore
import Tokenizers
import UNetModels

public final class LDMTextToImagePipeline {
    /// LDMTextToImagePipeline.__call__ defaults.
    public static let defaultGuidanceScale = 1.0
    public static let defaultSteps = 50
    /// The tokenizer's fixed max_length in __call__.
    public static let maxLength = 77

    public let bundle: ModelBundle
    let bert: LDMBertModel
    let tokenizer: BertTokenizer

    public init(bundle: ModelBundle) throws {
        guard let bert = bundle.bert, let tokenizer = bundle.bertTokenizer else {
            throw PipelineError.invalidModel(bundle.url.path, "no LDM-BERT text encoder (bert/ + tokenizer/)")
        }
        guard bundle.firstStage != nil else { throw PipelineError.invalidModel(bundle.url.path, "LDM text-to-image needs a first stage (vqvae/)") }
        self.bundle = bundle
        self.bert = bert
        self.tokenizer = tokenizer
    }

    /// bert(tokenizer(text, padding="max_length", max_length=77, truncation=True).input_ids)[0], repeated `batch` times;
    /// for a CompVis BERTEmbedder (YAML) max_length is its max_seq_len, as its BERTTokenizer pads.
    public func encodePrompt(_ text: String, batch: Int) throws -> Tensor {
        let length = bundle.bertMaxLength ?? min(Self.maxLength, bert.config.maxPositionEmbeddings)
        let e = try GradMode.noGrad { try bert(inputIDs: [tokenizer(text, maxLength: length)]) }
        return batch == 1 ? e : concat([Tensor](repeating: e, count: batch), axis: 0)
    }

    /// LDMTextToImagePipeline.__call__ for `o.batchSize` copies of the prompt.
    public func textToImage(_ p: PromptOptions, _ o: SamplingOptions, generator: RandomSource,
                            progress: ProgressHandler? = nil) throws -> GenerationResult {
        try p.validate()
        try o.validate()
        guard p.emphasis == .diffusers else {
            throw PipelineError.unsupportedOption(name: "prompt emphasis modes", why: "are for CLIP text encoders; LDM-BERT takes the plain prompt")
        }
        let f = bundle.vaeScaleFactor
        let (h, w) = (p.height ?? bundle.defaultImageSize, p.width ?? bundle.defaultImageSize)
        try Validation.checkSize(width: w, height: h, multiple: f)
        let channels = bundle.unet.config.inChannels
        guard channels == bundle.latentChannels else {
            throw PipelineError("the UNet takes \(channels) channels but the first stage has \(bundle.latentChannels) latent channels")
        }
        let guidance = p.guidanceScale != 1
        let uncond = guidance ? try encodePrompt(p.negativePrompt, batch: o.batchSize) : nil
        let cond = try encodePrompt(p.prompt, batch: o.batchSize)
        let den = Denoiser(unet: bundle.unet, guidanceScale: Float(p.guidanceScale), context: cond, uncondContext: uncond)
        let run = try GenerationRun(o, schedulerConfig: bundle.schedulerConfig, generator: generator, progress: progress)
        return try run.generate(.noise(shape: [o.batchSize, channels, h / f, w / f]), den, firstStage: bundle.firstStage)
    }
}
