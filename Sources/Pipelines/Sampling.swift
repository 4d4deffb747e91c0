// Shared pieces of the pipelines: sampling options and sampler construction (diffusers
// `Scheduler.from_config(pipe.scheduler.config)`), first-stage decoding and VaeImageProcessor.postprocess
// ((x / 2 + 0.5).clamp(0, 1) * 255, rounded).
import Autoencoders
import Diffusion
import Foundation
import Imaging
import TensorCore

/// Options every sampling pipeline takes.
public struct SamplingOptions {
    /// A SchedulerFactory name ("ddim", "Euler a", "DPM++ 2M Karras", ...); nil: the model's scheduler_config.json class.
    public var sampler: String?
    public var steps: Int
    public var eta: Double
    public var batchSize: Int
    /// Overrides the scheduler config's `timestep_spacing` (leading, linspace, trailing); nil keeps the model's.
    public var timestepSpacing: String?
    public init(sampler: String? = nil, steps: Int = 50, eta: Double = 0, batchSize: Int = 1, timestepSpacing: String? = nil) {
        self.sampler = sampler
        self.steps = steps
        self.eta = eta
        self.batchSize = batchSize
        self.timestepSpacing = timestepSpacing
    }

    public func validate() throws {
        try Validation.checkSteps(steps)
        try Validation.checkEta(eta)
        try Validation.checkBatchSize(batchSize)
        if let s = sampler, !SchedulerFactory.validNames.contains(where: { $0.lowercased() == s.trimmingCharacters(in: .whitespaces).lowercased() }) {
            throw PipelineError.unknownSampler(s)
        }
        if let sp = timestepSpacing, TimestepSpacing(rawValue: sp) == nil {
            throw PipelineError.invalidArgument(name: "timestep spacing", value: sp, why: "must be one of leading, linspace, trailing, got '\(sp)'")
        }
    }

    /// The scheduler, with `setTimesteps(steps)` done; `eta` goes to the schedulers whose step takes it (DDIM, TCD,
    /// CompVis DDIM), as StableDiffusionPipeline's prepare_extra_step_kwargs passes it.
    public func makeScheduler(config: SchedulerConfig) throws -> Scheduler {
        var config = config
        if let sp = timestepSpacing { config.timestepSpacing = sp }
        let s = try sampler.map { try SchedulerFactory.make($0, config: config, eta: eta) } ?? SchedulerFactory.make(config: config, eta: eta)
        if timestepSpacing != nil, s is ConsistencyScheduler || s is CompVisSampler {
            throw PipelineError.unsupportedOption(name: "timestep spacing", why: "does not apply to \(type(of: s)): it samples its own fixed grid")
        }
        try s.setTimesteps(steps)
        return s
    }
}

/// Generated images: the decoder output (B, 3, H, W) in [-1, 1] and the 8-bit images.
public struct GenerationResult {
    public var decoded: [Float]
    public var shape: [Int]
    public var images: [RGBImage]
    /// The denoised latents that were decoded (flat, the pipeline's latent shape).
    public var latents: [Float] = []
}

/// Decodes diffusion latents (B, C, h, w) to images: vae.decode(latents / scaling_factor) (`scaled`), postprocessed.
/// Without a first stage (pixel space) the latents are the image.
public func decodeLatents(_ z: Tensor, firstStage: FirstStageModel?, scaled: Bool = true) throws -> GenerationResult {
    let x: Tensor
    switch firstStage {
    case .kl(let vae): x = try scaled ? vae.decodeScaled(z) : vae.decode(z)
    case .vq(let vq): x = try vq.decode(scaled ? z * (1 / vq.config.scalingFactor) : z)
    case nil:
        guard z.rank == 4, z.shape[1] == 3 else { throw PipelineError("a pixel-space model must produce 3 channels, got shape \(z.shape)") }
        x = z
    }
    let out = x.contiguous()
    let decoded = out.toArray()
    let (b, h, w) = (out.shape[0], out.shape[2], out.shape[3])
    let n = 3 * h * w
    let images = try (0..<b).map { i in try VaeImageProcessor.toImage(Array(decoded[(i * n)..<((i + 1) * n)]), height: h, width: w) }
    return GenerationResult(decoded: decoded, shape: out.shape, images: images, latents: z.toArray())
}

/// `decodeLatents` for latents held as flat values of `shape` (the server's previews of an interrupted job).
public func decodeLatents(_ latents: [Float], shape: [Int], firstStage: FirstStageModel?, scaled: Bool = true) throws -> GenerationResult {
    guard shape.reduce(1, *) == latents.count else { throw PipelineError("latents have \(latents.count) values, not the shape \(shape)") }
    return try decodeLatents(Tensor(latents, shape: shape), firstStage: firstStage, scaled: scaled)
}

/// Repeats a (1, ...) tensor `count` times along the batch axis.
func repeatBatch(_ x: Tensor, _ count: Int) -> Tensor {
    count == 1 ? x : concat([Tensor](repeating: x, count: count), axis: 0)
}
