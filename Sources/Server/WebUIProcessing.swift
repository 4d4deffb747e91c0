// AUTOMATIC1111's img2img / inpainting / hires-fix processing (modules/processing.py StableDiffusionProcessingImg2Img
// .init and .sample, StableDiffusionProcessingTxt2Img.calculate_target_resolution and sample_hr_pass, apply_overlay;
// modules/rng.py ImageRNG with subseeds) around this project's Stable Diffusion sampling, which follows diffusers'
// StableDiffusionImg2ImgPipeline / StableDiffusionInpaintPipeline (pipeline_stable_diffusion_img2img.py,
// pipeline_stable_diffusion_inpaint.py: the same order of draws from one generator, so without the web UI's extras an
// image equals `ldm img2img` / `ldm inpaint`). What A1111 does before and after its sampler is done here:
// mask invert and blur, resize_mode 0-3, inpainting_fill 0-3 (2 and 3 on the init latents), the latent mask (bicubic,
// rounded), the overlay of the original outside the mask, variation seeds (slerp of the seed and subseed noise), and
// the hires fix: a second img2img pass on the upscaled first-pass latents with a fresh generator per seed.
import Autoencoders
import Diffusion
import Foundation
import Imaging
import Pipelines
import TensorCore
import UNetModels

/// `normal(count:)` of `base`, except that the first draw of `shape` is A1111's slerp of it with `sub`'s draw
/// (ImageRNG.first with subseed_strength): the txt2img pipeline's initial noise becomes the variation noise and every
/// later draw (ancestral samplers) continues the seed's generator.
final class VariationRandomSource: RandomSource {
    let base: RandomSource, sub: RandomSource, strength: Float, shape: [Int]
    private var first = true
    init(base: RandomSource, sub: RandomSource, strength: Float, shape: [Int]) {
        self.base = base
        self.sub = sub
        self.strength = strength
        self.shape = shape
    }
    func normal(count: Int) -> [Float] {
        let x = base.normal(count: count)
        guard first, count == shape.reduce(1, *) else { return x }
        first = false
        return WebUIImageOps.slerp(strength, x, sub.normal(count: count), shape: shape)
    }
    func uniform(count: Int) -> [Float] { base.uniform(count: count) }
}

/// A1111's hires-fix target (calculate_target_resolution): the upscaled size and the latent columns/rows cut off.
struct HiresTarget: Equatable {
    var width: Int, height: Int, truncateX = 0, truncateY = 0
    /// `factor`: the model's VAE scale factor (A1111's opt_f is 8; the latent rows/columns cut are in its units).
    static func of(width: Int, height: Int, scale: Double, resizeX: Int, resizeY: Int, factor: Int = 8) -> HiresTarget {
        if resizeX == 0 && resizeY == 0 { return HiresTarget(width: Int(Double(width) * scale), height: Int(Double(height) * scale)) }
        if resizeY == 0 { return HiresTarget(width: resizeX, height: resizeX * height / width) }
        if resizeX == 0 { return HiresTarget(width: resizeY * width / height, height: resizeY) }
        let src = Double(width) / Double(height), dst = Double(resizeX) / Double(resizeY)
        var t = src < dst ? HiresTarget(width: resizeX, height: resizeX * height / width)
                          : HiresTarget(width: resizeY * width / height, height: resizeY)
        t.truncateX = (t.width - resizeX) / factor
        t.truncateY = (t.height - resizeY) / factor
        return t
    }
}

struct WebUIProcessing {
    let pipe: StableDiffusionPipeline
    var bundle: ModelBundle { pipe.bundle }

    func vae() throws -> AutoencoderKL {
        guard case .kl(let v)? = bundle.firstStage else { throw APIError.unprocessable("sd_model_checkpoint", "this model has no AutoencoderKL") }
        return v
    }

    /// The pipelines' denoiser for Stable Diffusion 1.x/2.x (classifier-free guidance when cfg > 1, LCM's w embedding);
    /// for SDXL the img2img pipeline's conditioning for latents decoding to p.width x p.height (aesthetic scores for a
    /// refiner).
    func denoiser(_ p: PromptOptions) throws -> Denoiser {
        if bundle.isSDXL {
            guard let h = p.height, let w = p.width else { throw APIError.unprocessable("width", "SDXL img2img needs the output size") }
            return try pipe.denoiser(p, batch: 1, imageSize: (h, w))
        }
        let guidance = p.guidanceScale > 1 && !pipe.isLatentConsistencyPipeline
        let (cond, uncond) = try pipe.encodePrompt(p, batch: 1, guidance: guidance)
        let den = Denoiser(unet: bundle.unet, guidanceScale: Float(p.guidanceScale), context: cond, uncondContext: uncond)
        if let dim = bundle.unet.config.timeCondProjDim {
            den.timestepCond = UNet2DConditionModel.guidanceScaleEmbedding([Float(p.guidanceScale - 1)], dim: dim)
        }
        return den
    }

    /// _encode_vae_image of an image already at its final size: scaling_factor * sample of the posterior.
    func encode(_ image: RGBImage, generator: RandomSource) throws -> [Float] {
        let v = try vae()
        let x = Tensor(VaeImageProcessor.toTensor(image), shape: [1, 3, image.height, image.width])
        return v.scale(try v.encode(x).sample(generator: generator)).contiguous().toArray()
    }

    /// The initial noise of one image: the seed's draw, or A1111's slerp with the subseed's when strength > 0.
    static func noise(_ shape: [Int], generator: RandomSource, variation: (RandomSource, Double)?) -> [Float] {
        let x = generator.normal(count: shape.reduce(1, *))
        guard let (sub, strength) = variation, strength > 0 else { return x }
        return WebUIImageOps.slerp(Float(strength), x, sub.normal(count: x.count), shape: Array(shape.dropFirst()))
    }

    // MARK: img2img and inpainting

    /// The A1111 preprocessing of init image and mask: (image to encode, processed mask, overlay original and mask).
    struct Prepared {
        var image: RGBImage
        var mask: GrayImage?
        var original: RGBImage
        var overlayMask: GrayImage?
    }

    static func prepare(_ s: GenerationSpec) throws -> Prepared {
        guard let initImage = s.initImage else { throw APIError.unprocessable("init_images", "img2img needs init_images") }
        var mask: GrayImage?
        if var m = s.mask {
            if s.inpaintingMaskInvert { m.pixels = m.pixels.map { 255 - $0 } }
            m = WebUIImageOps.blurMask(m, radius: s.maskBlur)
            mask = try WebUIImageOps.resize(m, mode: s.resizeMode, width: s.width, height: s.height)
        }
        let image = s.resizeMode == 3 ? initImage : try WebUIImageOps.resize(initImage, mode: s.resizeMode, width: s.width, height: s.height)
        var filled = image
        if let m = mask, s.inpaintingFill != 1 { filled = meanFill(image, mask: m) }
        return Prepared(image: filled, mask: mask, original: image, overlayMask: mask.map(WebUIImageOps.overlayMask))
    }

    /// inpainting_fill "fill": the repainted area (mask >= 128) painted with the mean colour of the kept area before
    /// encoding (the web UI's masking.fill blurs the surroundings in; the mean is the plain form of that).
    static func meanFill(_ image: RGBImage, mask: GrayImage) -> RGBImage {
        var out = image
        var sum = [Double](repeating: 0, count: 3), n = 0.0
        for i in 0..<(mask.width * mask.height) where mask.pixels[i] < 128 {
            for c in 0..<3 { sum[c] += Double(image.pixels[3 * i + c]) }
            n += 1
        }
        guard n > 0 else { return out }
        let mean = sum.map { UInt8(($0 / n).rounded()) }
        for i in 0..<(mask.width * mask.height) where mask.pixels[i] >= 128 { for c in 0..<3 { out.pixels[3 * i + c] = mean[c] } }
        return out
    }

    /// One img2img or inpainting image: diffusers' order of draws (init image posterior sample, noise, masked image
    /// posterior sample), with A1111's resize_mode 3 (bilinear resize of the init latents), inpainting_fill 2 / 3 and
    /// latent mask, then the overlay of the original outside the mask.
    func img2img(_ s: GenerationSpec, _ prep: Prepared, _ p: PromptOptions, seed: UInt64, generator gen: RandomSource,
                 variation: (RandomSource, Double)?, progress: @escaping ProgressHandler) throws -> RGBImage {
        let o = SamplingOptions(sampler: s.factorySampler, steps: s.steps, eta: s.eta, batchSize: 1)
        try o.validate()
        let den = try denoiser(p)
        let run = try GenerationRun(o, schedulerConfig: bundle.schedulerConfig, strength: s.denoisingStrength, generator: gen,
                                    progress: progress)
        let scheduler = run.scheduler
        let start = run.startIndex
        let f = bundle.vaeScaleFactor, c = bundle.latentChannels, unetChannels = bundle.unet.config.inChannels
        let (w, h) = (s.width, s.height)
        let shape = [1, c, h / f, w / f]
        let hw = (h / f) * (w / f)
        // The image at a multiple of the VAE factor (resize_mode 3 keeps its own size, rounded down).
        guard let (ih, iw) = try? VaeImageProcessor(vaeScaleFactor: f).defaultHeightWidth(imageWidth: prep.image.width, imageHeight: prep.image.height) else {
            throw APIError.unprocessable("init_images", "init_images is \(prep.image.width)x\(prep.image.height); resize_mode 3 needs at least \(f) px a side")
        }
        let image = (ih, iw) == (prep.image.height, prep.image.width) ? prep.image : try prep.image.resized(width: iw, height: ih)
        let strengthMax = s.denoisingStrength == 1 && prep.mask != nil
        var imageLatents: [Float]?
        if prep.mask == nil || unetChannels == c || !strengthMax {
            var z = try encode(image, generator: gen)
            if s.resizeMode == 3, (ih, iw) != (h, w) {
                z = WebUIImageOps.interpolate(z, shape: [1, c, ih / f, iw / f], height: h / f, width: w / f, mode: "bilinear", antialias: false)
            }
            imageLatents = z
        }
        var latentMask: [Float]?
        if let m = prep.mask {
            let lm = try WebUIImageOps.latentMask(m, width: w / f, height: h / f)
            latentMask = lm
            if var z = imageLatents, s.inpaintingFill >= 2 {
                let fillNoise = s.inpaintingFill == 2 ? Engine.generator(s, seed: seed).normal(count: z.count) : nil
                for ch in 0..<c { for i in 0..<hw {
                    let k = ch * hw + i
                    z[k] = z[k] * (1 - lm[i]) + (fillNoise?[k] ?? 0) * lm[i]
                } }
                imageLatents = z
            }
        }
        let noise = Tensor(Self.noise(shape, generator: gen, variation: variation), shape: shape)
        let latents: Tensor
        if strengthMax {
            latents = scheduler.scaleInitialNoise(noise)
        } else {
            guard let z = imageLatents else { throw APIError(.internalServerError, "generation failed", "no image latents") }
            latents = scheduler.addNoise(original: Tensor(z, shape: shape), noise: noise, stepIndex: start)
        }
        var blend: LatentMask?
        if let m = prep.mask, let lm = latentMask {
            if unetChannels == c {
                blend = LatentMask(mask: Tensor(lm, shape: [1, 1, h / f, w / f]), imageLatents: Tensor(imageLatents ?? [Float](repeating: 0, count: c * hw), shape: shape), noise: noise)
                // The inpainting pipeline encodes the masked image for every UNet: its posterior draw is taken here
                // too, so later (ancestral) draws follow `ldm inpaint`'s stream.
                _ = gen.normal(count: shape.reduce(1, *))
            }
            if unetChannels == 2 * c + 1 {
                // The inpainting UNet's extra input: the binarized mask at the latent grid and the masked image latents.
                var masked = VaeImageProcessor.toTensor(image)
                let bin = m.pixels.map { $0 >= 128 }
                for ch in 0..<3 { for i in 0..<(w * h) where bin[i] { masked[ch * w * h + i] = 0 } }
                let v = try vae()
                let maskedLatents = v.scale(try v.encode(Tensor(masked, shape: [1, 3, h, w])).sample(generator: gen)).contiguous().toArray()
                var small = [Float](repeating: 0, count: hw)
                for y in 0..<(h / f) { for x in 0..<(w / f) { small[y * (w / f) + x] = bin[(y * f) * w + x * f] ? 1 : 0 } }
                den.concat = concat([Tensor(small, shape: [1, 1, h / f, w / f]), Tensor(maskedLatents, shape: shape)], axis: 1)
            } else if unetChannels != c {
                throw APIError.unprocessable("mask", "the UNet takes \(unetChannels) channels; inpainting needs \(c) or \(2 * c + 1)")
            }
        }
        let out = try run.denoise(latents, den, mask: blend)
        guard let generated = try decodeLatents(out, firstStage: bundle.firstStage).images.first else {
            throw APIError(.internalServerError, "generation failed", "no image decoded")
        }
        return overlay(generated, prep)
    }

    /// apply_overlay: the original image outside the (blurred) mask.
    func overlay(_ generated: RGBImage, _ prep: Prepared) -> RGBImage {
        guard let m = prep.overlayMask, m.width == generated.width, m.height == generated.height,
              prep.original.width == generated.width, prep.original.height == generated.height else { return generated }
        return WebUIImageOps.composite(original: prep.original, generated: generated, overlayMask: m)
    }

    // MARK: hires fix

    /// sample_hr_pass: the first pass's latents upscaled (a latent mode) or its image resized and encoded again, the
    /// latents truncated, fresh noise from the seed (and subseed), then img2img with denoising_strength.
    func hiresPass(_ s: GenerationSpec, firstPass: GenerationResult, _ p: PromptOptions, seed: UInt64,
                   progress: @escaping ProgressHandler) throws -> RGBImage {
        let hr = s.hires!
        let f = bundle.vaeScaleFactor, c = bundle.latentChannels
        let target = HiresTarget.of(width: s.width, height: s.height, scale: hr.scale, resizeX: hr.resizeX, resizeY: hr.resizeY, factor: f)
        let gen = Engine.generator(s, seed: seed)
        var (lh, lw) = (target.height / f, target.width / f)
        var z: [Float]
        if let (mode, aa) = WebUIImageOps.latentUpscaleModes[hr.upscaler] {
            z = WebUIImageOps.interpolate(firstPass.latents, shape: [1, c, s.height / f, s.width / f], height: lh, width: lw, mode: mode, antialias: aa)
        } else {
            guard let img = firstPass.images.first else { throw APIError(.internalServerError, "generation failed", "no first-pass image") }
            let resized = try img.resized(width: lw * f, height: lh * f, filter: hr.upscaler == "Nearest" ? .nearest : .lanczos)
            z = try encode(resized, generator: gen)
        }
        // samples[:, :, ty//2 : H-(ty+1)//2, tx//2 : W-(tx+1)//2]
        let (t0, t1, l0, l1) = (target.truncateY / 2, (target.truncateY + 1) / 2, target.truncateX / 2, (target.truncateX + 1) / 2)
        if target.truncateX > 0 || target.truncateY > 0 {
            let (nh, nw) = (lh - t0 - t1, lw - l0 - l1)
            guard nh > 0, nw > 0 else { throw APIError.unprocessable("hr_resize_x", "the hires size leaves no latent pixels") }
            var cut = [Float](repeating: 0, count: c * nh * nw)
            for ch in 0..<c { for y in 0..<nh { for x in 0..<nw { cut[(ch * nh + y) * nw + x] = z[(ch * lh + y + t0) * lw + x + l0] } } }
            z = cut
            lh = nh
            lw = nw
        }
        let shape = [1, c, lh, lw]
        let o = SamplingOptions(sampler: hr.factorySampler ?? s.factorySampler, steps: hr.steps > 0 ? hr.steps : s.steps, eta: s.eta, batchSize: 1)
        try o.validate()
        var hp = p
        hp.prompt = hr.prompt ?? p.prompt
        hp.negativePrompt = hr.negativePrompt ?? p.negativePrompt
        hp.width = lw * f
        hp.height = lh * f
        let den = try denoiser(hp)
        let run = try GenerationRun(o, schedulerConfig: bundle.schedulerConfig, strength: s.denoisingStrength, generator: gen,
                                    progress: progress)
        let noise = Self.noise(shape, generator: gen, variation: Engine.variation(s, index: Int(truncatingIfNeeded: seed &- s.seed)))
        let latents = run.scheduler.addNoise(original: Tensor(z, shape: shape), noise: Tensor(noise, shape: shape), stepIndex: run.startIndex)
        let out = try run.denoise(latents, den)
        guard let image = try decodeLatents(out, firstStage: bundle.firstStage).images.first else {
            throw APIError(.internalServerError, "generation failed", "no image decoded")
        }
        return image
    }
}
