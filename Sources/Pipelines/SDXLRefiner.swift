// The SDXL base + refiner handoff, as diffusers' SDXL documentation runs its "ensemble of expert denoisers": the base
// is StableDiffusionXLPipeline with denoising_end = switch and output_type="latent" (the partly denoised latents,
// still scaled by the VAE's scaling factor); the refiner is StableDiffusionXLImg2ImgPipeline called with those latents
// as `image` (4 channels: used as the initial latents, no VAE encode) and denoising_start = switch, so it adds no noise
// and starts at the first timestep below the same discrete cutoff round(T - switch * T) (get_timesteps). One generator
// runs through both calls; the refiner decodes with its own VAE.
import Foundation
import TensorCore

extension StableDiffusionPipeline {
    /// StableDiffusionXLImg2ImgPipeline.__call__(image=latents, denoising_start=): continues partly denoised latents
    /// (1 or `o.batchSize` rows of (C, h, w), scaled) from `denoisingStart` of the schedule to the end, and decodes.
    public func refine(latents: Tensor, _ p: PromptOptions, _ o: SamplingOptions, denoisingStart: Double,
                       generator: RandomSource, progress: ProgressHandler? = nil) throws -> GenerationResult {
        try p.validate()
        try o.validate()
        guard bundle.isSDXL else { throw PipelineError("\(bundle.url.lastPathComponent) is not an SDXL model: only SDXL models refine latents") }
        guard bundle.unet.config.inChannels == bundle.latentChannels else {
            throw PipelineError.wrongModelKind(model: bundle.url.path, kind: bundle.kind, task: .img2img)
        }
        guard latents.rank == 4, latents.shape[1] == bundle.latentChannels, latents.shape[0] == 1 || latents.shape[0] == o.batchSize else {
            throw PipelineError("the latents to refine must be (1 or \(o.batchSize), \(bundle.latentChannels), h, w), got the shape \(latents.shape)")
        }
        let f = bundle.vaeScaleFactor
        try Validation.checkSize(width: latents.shape[3] * f, height: latents.shape[2] * f)
        let den = try denoiser(p, batch: o.batchSize, imageSize: (latents.shape[2] * f, latents.shape[3] * f))
        let run = try GenerationRun(o, schedulerConfig: bundle.schedulerConfig, denoisingStart: denoisingStart, generator: generator,
                                    progress: progress)
        let start = latents.shape[0] == o.batchSize ? latents : repeatBatch(latents, o.batchSize)
        return try run.generate(.latents(start), den, firstStage: bundle.firstStage)
    }

    /// Text-to-image with a refiner: this (base) model denoises the first `switchAt` of the schedule
    /// (`textToLatents(denoisingEnd:)`), `refiner` the rest (`refine(latents:denoisingStart:)`), both with the same
    /// prompt, sampling options and generator. Progress counts the steps of both models as one run.
    public func textToImage(_ p: PromptOptions, _ o: SamplingOptions, refiner: StableDiffusionPipeline, switchAt: Double,
                            generator: RandomSource, progress: ProgressHandler? = nil) throws -> GenerationResult {
        guard switchAt > 0, switchAt < 1 else { throw PipelineError("the refiner switch must be in (0, 1), got \(switchAt)") }
        guard bundle.isSDXL, refiner.bundle.isSDXL else {
            throw PipelineError("the base + refiner handoff needs two SDXL models (\(bundle.isSDXL ? refiner.bundle.url.lastPathComponent : bundle.url.lastPathComponent) is not one)")
        }
        guard refiner.bundle.latentChannels == bundle.latentChannels, refiner.bundle.vaeScaleFactor == bundle.vaeScaleFactor else {
            throw PipelineError("the refiner's latents (\(refiner.bundle.latentChannels) channels, factor \(refiner.bundle.vaeScaleFactor)) differ from the base model's (\(bundle.latentChannels), \(bundle.vaeScaleFactor))")
        }
        try p.validate()
        try o.validate()
        // The step counts of both parts, for one progress total (schedulers are cheap to build).
        let first = try GenerationRun(o, schedulerConfig: bundle.schedulerConfig, denoisingEnd: switchAt, generator: generator)
        let second = try GenerationRun(o, schedulerConfig: refiner.bundle.schedulerConfig, denoisingStart: switchAt, generator: generator)
        let (n1, n2) = (first.endIndex - first.startIndex, second.endIndex - second.startIndex)
        let baseProgress: ProgressHandler? = progress.map { report in { step, _ in report(step, n1 + n2) } }
        let refinerProgress: ProgressHandler? = progress.map { report in { step, _ in report(n1 + step, n1 + n2) } }
        let latents = try textToLatents(p, o, denoisingEnd: switchAt, generator: generator, progress: baseProgress)
        return try refiner.refine(latents: latents, p, o, denoisingStart: switchAt, generator: generator, progress: refinerProgress)
    }
}
