// The shared ending of every pipeline, in the order diffusers' pipelines run it (pipeline_stable_diffusion.py
// __call__): the scheduler (`Scheduler.from_config(pipe.scheduler.config)`, set_timesteps, and for img2img
// get_timesteps), prepare_latents (randn_tensor of the whole (B, C, h, w) batch times init_noise_sigma, or img2img's
// add_noise of the image latents), the one denoising loop `for i, t in enumerate(timesteps)` with the callback, and the
// decode. The 4-channel inpainting blend is pipeline_stable_diffusion_inpaint.py's (init_latents_proper noised to
// timesteps[i + 1], then (1 - mask) * init_latents_proper + mask * latents), which is also what CompVis' DDIMSampler
// does with `mask`/`x0`.
import Autoencoders
import Diffusion
import NeuralNetwork
import Foundation
import TensorCore

/// Called after each model evaluation with (step, total); return false to cancel (the loop throws .cancelled).
public typealias ProgressHandler = (_ step: Int, _ total: Int) -> Bool

/// Sees the latents after every denoising step (the server's live previews), for the loops run by `body` on the
/// calling thread: `DenoisingObserver.with(observer) { ... }` (a thread-dictionary entry, so it also works on plain
/// threads outside Swift tasks).
public enum DenoisingObserver {
    public typealias Observer = (_ latents: [Float], _ shape: [Int]) -> Void
    final class Box {
        let f: Observer
        init(_ f: @escaping Observer) { self.f = f }
    }
    static let key = "LatentDiffusion.DenoisingObserver"

    public static func with<T>(_ observer: @escaping Observer, _ body: () throws -> T) rethrows -> T {
        let d = Thread.current.threadDictionary
        let previous = d[key]
        d[key] = Box(observer)
        defer { d[key] = previous }
        return try body()
    }

    static var current: Observer? { (Thread.current.threadDictionary[key] as? Box)?.f }
}

/// Keeps the unmasked region on the noised original (4-channel inpainting / CompVis masked sampling).
public struct LatentMask {
    /// (B, 1, h, w): 1 where new content is generated, broadcast over the channels.
    public var mask: Tensor
    /// (B, C, h, w), scaled.
    public var imageLatents: Tensor
    /// (B, C, h, w), the initial noise.
    public var noise: Tensor

    public init(mask: Tensor, imageLatents: Tensor, noise: Tensor) {
        self.mask = mask
        self.imageLatents = imageLatents
        self.noise = noise
    }

    func check(_ shape: [Int]) throws {
        guard mask.shape == [shape[0], 1, shape[2], shape[3]], imageLatents.shape == shape, noise.shape == shape else {
            throw PipelineError("inpainting mask/image latents do not match the latents \(shape)")
        }
    }

    /// After step `i` of a loop that ends before `end`: the original noised to the next timestep (the clean original
    /// after the last step).
    func blend(_ x: Tensor, scheduler: Scheduler, stepIndex i: Int, end: Int) -> Tensor {
        let proper = i < end - 1
            ? scheduler.addNoise(original: imageLatents, noise: noise, stepIndex: i + 1) : imageLatents
        let (b, c, hw) = (x.shape[0], x.shape[1], x.shape[2] * x.shape[3])
        let out = Tensor.empty(x.shape)
        let dense = [mask, proper, x].map { $0.contiguous().float32() }
        withExtendedLifetime(dense) {
            let (o, m, p, xp) = (out.data, dense[0].data, dense[1].data, dense[2].data)
            for n in 0..<b {
                for ch in 0..<c {
                    let base = (n * c + ch) * hw
                    for q in 0..<hw {
                        let w = m[n * hw + q]
                        o[base + q] = (1 - w) * p[base + q] + w * xp[base + q]
                    }
                }
            }
        }
        return out
    }
}

/// Where denoising starts (diffusers prepare_latents).
public enum LatentStart {
    /// Gaussian noise of this (B, C, h, w) shape times the scheduler's init_noise_sigma (text-to-image, sampling).
    case noise(shape: [Int])
    /// Clean latents (B, C, h, w) noised to the start timestep: scheduler.add_noise(image, noise, timesteps[start]).
    case image(Tensor)
    /// Latents (B, C, h, w) already at the start's noise level, used as they are: the SDXL img2img pipeline with
    /// `denoising_start` (add_noise=False: a base model's partly denoised latents handed to the refiner).
    case latents(Tensor)

    var shape: [Int] {
        switch self {
        case .noise(let shape): return shape
        case .image(let latents), .latents(let latents): return latents.shape
        }
    }
}

/// One generation after the conditioning: the scheduler, the start, the random draws, the loop with progress and
/// cancellation, and the decode. Pipelines build their `Denoiser` and call `generate`; inpainting, which draws from
/// the generator between the initial latents and the loop, calls `initialLatents`, `denoise` and `decodeLatents`.
public struct GenerationRun {
    /// The scheduler, with `setTimesteps` done (and the img2img begin index set).
    public let scheduler: Scheduler
    /// Where denoising starts in `scheduler.timesteps`: 0, img2img's get_timesteps start, or SDXL's `denoising_start`.
    public let startIndex: Int
    /// Where it stops (exclusive): the end of `scheduler.timesteps`, or SDXL's `denoising_end` cutoff.
    public let endIndex: Int
    /// The one generator every random draw comes from: initial noise, ancestral noise, in diffusers' order.
    public let generator: RandomSource
    public let progress: ProgressHandler?

    /// Whether `strength` chose the timesteps themselves (LatentConsistencyModelImg2ImgPipeline: the consistency
    /// grid is cut before the steps are taken from it) rather than the start in the full schedule.
    public let strengthInGrid: Bool

    /// `o.makeScheduler(config:)`; with `strength` (img2img, inpainting) the start of get_timesteps(steps, strength);
    /// `consistencyGrid` (LatentConsistencyModelImg2ImgPipeline): an LCM / TCD scheduler takes the strength in
    /// set_timesteps instead, and every step runs; with `denoisingStart` (SDXL img2img, which then ignores strength) the
    /// start of the timesteps below its cutoff; with `denoisingEnd` (SDXL) the end of the timesteps at or above its cutoff.
    public init(_ o: SamplingOptions, schedulerConfig: SchedulerConfig, strength: Double? = nil, consistencyGrid: Bool = false,
                denoisingStart: Double? = nil, denoisingEnd: Double? = nil, generator: RandomSource,
                progress: ProgressHandler? = nil) throws {
        let scheduler = try o.makeScheduler(config: schedulerConfig)
        self.scheduler = scheduler
        if let s = denoisingStart, let e = denoisingEnd, s >= e {
            throw PipelineError("denoising start \(s) must be below denoising end \(e)")
        }
        var inGrid = false
        do {
            var start = 0
            if let denoisingStart {
                start = try scheduler.denoisingStartIndex(denoisingStart)
            } else if let strength, consistencyGrid, let grid = scheduler as? ConsistencyScheduler {
                try grid.setTimesteps(o.steps, strength: strength)
                inGrid = true
            } else if let strength {
                start = try scheduler.img2imgStartIndex(strength: strength)
            }
            startIndex = start
            endIndex = try denoisingEnd.map { try scheduler.denoisingEndIndex($0, from: start) } ?? scheduler.timesteps.count
        } catch let e as DiffusionError {
            throw PipelineError("\(e)")
        }
        strengthInGrid = inGrid
        self.generator = generator
        self.progress = progress
    }

    /// prepare_latents: one randn_tensor of the whole batch, then the start's latents. Returns the noise too (the
    /// 4-channel inpainting blend re-noises the image with it).
    /// `.latents` draws nothing (SDXL img2img with denoising_start adds no noise); its noise is zeros.
    public func initialLatents(_ start: LatentStart) -> (latents: Tensor, noise: Tensor) {
        switch start {
        case .noise(let shape):
            let noise = Tensor.randn(shape, generator: generator)
            return (scheduler.scaleInitialNoise(noise), noise)
        case .image(let image):
            let noise = Tensor.randn(image.shape, generator: generator)
            return (scheduler.addNoise(original: image, noise: noise, stepIndex: startIndex), noise)
        case .latents(let latents):
            return (latents, Tensor(zeros: latents.shape))
        }
    }

    /// The denoising loop from `startIndex` to `endIndex`: per step the denoiser's prediction, the scheduler step (its
    /// ancestral noise from `generator`), the inpainting blend, the observer and the progress callback.
    public func denoise(_ latents: Tensor, _ denoiser: Denoiser, mask: LatentMask? = nil) throws -> Tensor {
        guard latents.rank == 4 else { throw PipelineError("latents must be (B, C, h, w), got the shape \(latents.shape)") }
        try mask?.check(latents.shape)
        let total = endIndex - startIndex
        guard total >= 1 else {
            throw PipelineError("no denoising steps to run (steps \(startIndex)..<\(endIndex) of \(scheduler.timesteps.count))")
        }
        var x = latents
        for i in startIndex..<endIndex {
            let eps = try denoiser.predict(x, scheduler: scheduler, stepIndex: i)
            x = try scheduler.step(modelOutput: eps, stepIndex: i, sample: x, noise: generator)
            if let mask { x = mask.blend(x, scheduler: scheduler, stepIndex: i, end: endIndex) }
            if let observe = DenoisingObserver.current { observe(x.toArray(), x.shape) }
            if let progress, !progress(i - startIndex + 1, total) { throw PipelineError.cancelled }
        }
        return x
    }

    /// The denoised latents from `start`.
    public func latents(_ start: LatentStart, _ denoiser: Denoiser) throws -> Tensor {
        let z = try denoise(initialLatents(start).latents, denoiser)
        if denoiser.evictsUNetAfterLoop { denoiser.releaseUNetWeights() }
        return z
    }

    /// The whole ending: the denoised latents from `start`, decoded (`decodeLatents`; `scaled`: divide by the first
    /// stage's scaling factor first).
    public func generate(_ start: LatentStart, _ denoiser: Denoiser, firstStage: FirstStageModel?,
                         scaled: Bool = true) throws -> GenerationResult {
        let z = try latents(start, denoiser)
        return try decodeLatents(z, firstStage: firstStage, scaled: scaled)
    }
}
