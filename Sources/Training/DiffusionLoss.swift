// Matches CompVis LatentDiffusion training (ldm/models/diffusion/ddpm.py: forward -> p_losses, q_sample, get_loss,
// get_first_stage_encoding, scale_by_std in on_train_batch_start) and diffusers examples/text_to_image
// (v_prediction target, conditioning dropout for classifier-free guidance). Random draws, in CompVis order, all from
// one TorchGenerator: t = randint(0, T, (B,)), then noise = randn(x0.shape), then (only if cond_drop_prob > 0)
// drop = rand(B) < cond_drop_prob.
import Autoencoders
import Diffusion
import Foundation
import TensorCore
import UNetModels

public enum Parameterization: String, Codable, Sendable { case eps, x0, v }
public enum LossType: String, Codable, Sendable { case l1, l2 }

/// What the UNet is conditioned on for one batch.
public enum TrainingConditioning {
    case none
    /// Class labels (UNet class embedding); dropped entries become `nullClass`.
    case classLabels([Int])
    /// encoder_hidden_states (B, S, D); dropped rows become the empty-prompt embedding.
    case text(Tensor)
    /// Extra input channels (B, C', H, W) concatenated to the noisy latents (CompVis conditioning_key "concat").
    case concat(Tensor)
}

/// The frozen first stage: images in [-1, 1] -> latents (before scale_factor).
public enum LatentEncoder {
    /// The dataset already yields latents.
    case identity
    case kl(AutoencoderKL)
    case vq(VQModel)

    /// CompVis encode_first_stage + get_first_stage_encoding: a posterior sample for KL (noise from `generator`),
    /// the pre-quantisation latents for VQ. No gradients.
    public func encode(_ images: Tensor, generator: TorchGenerator, shard: BatchShard? = nil) throws -> Tensor {
        try GradMode.noGrad {
            switch self {
            case .identity: return images
            case .kl(let m): return try m.encode(images, tiled: .never).sample(generator: generator, shard: shard)
            case .vq(let m): return try m.encode(images)
            }
        }
    }

    /// The same latents from cached encoder outputs (LatentCache): a posterior sample of KL moments (B, 2C, h, w)
    /// (the same noise draw as `encode`), VQ latents as they are.
    public func latents(fromCached entries: Tensor, generator: TorchGenerator, shard: BatchShard? = nil) throws -> Tensor {
        try GradMode.noGrad {
            switch self {
            case .identity, .vq: return entries
            case .kl(let m):
                guard entries.rank == 4, entries.shape[1] == 2 * m.config.latentChannels else {
                    throw TrainingError("cached moments \(entries.shape) are not (B, \(2 * m.config.latentChannels), h, w)")
                }
                return DiagonalGaussianDistribution(entries).sample(generator: generator, shard: shard)
            }
        }
    }
}

extension DiagonalGaussianDistribution {
    /// sample(generator:) for this shard's rows: the noise is drawn for the whole global batch and sliced.
    func sample(generator: TorchGenerator, shard: BatchShard?) -> Tensor {
        guard let shard, !shard.isWhole else { return sample(generator: generator) }
        precondition(mean.shape[0] == shard.localBatch, "posterior of \(mean.shape[0]) rows for a shard of \(shard.localBatch)")
        return mean + std * shard.rows(Tensor.randn([shard.globalBatch] + mean.shape.dropFirst(), generator: generator))
    }
}

/// scale_by_std: 1 / std(latents.flatten()) (unbiased), the scale_factor CompVis registers from the first batch.
public func scaleFactorByStd(_ latents: Tensor) throws -> Float {
    let v = latents.float32().toArray().map(Double.init)
    guard v.count > 1 else { throw TrainingError("scale_by_std needs more than one latent value") }
    let mean = v.reduce(0, +) / Double(v.count)
    let variance = v.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(v.count - 1)
    guard variance > 0, variance.isFinite else { throw TrainingError("scale_by_std: latents have zero or non-finite variance") }
    return Float(1 / variance.squareRoot())
}

/// scale_by_std over the global batch of a data-parallel run: each rank holds its shard of the latents; the mean and
/// the unbiased variance are reduced over the ranks in float64 (one process: `scaleFactorByStd(_:)` itself).
public func scaleFactorByStd(_ latents: Tensor, communicator: Communicator) throws -> Float {
    guard communicator.size > 1 else { return try scaleFactorByStd(latents) }
    let v = latents.float32().toArray().map(Double.init)
    var sums = [v.reduce(0, +), Double(v.count)]
    try sums.withUnsafeMutableBufferPointer { try communicator.allReduceSum($0) }
    guard sums[1] > 1 else { throw TrainingError("scale_by_std needs more than one latent value") }
    let mean = sums[0] / sums[1]
    var squares = [v.reduce(0) { $0 + ($1 - mean) * ($1 - mean) }]
    try squares.withUnsafeMutableBufferPointer { try communicator.allReduceSum($0) }
    let variance = squares[0] / (sums[1] - 1)
    guard variance > 0, variance.isFinite else { throw TrainingError("scale_by_std: latents have zero or non-finite variance") }
    return Float(1 / variance.squareRoot())
}

public struct DiffusionLossOutput {
    public let loss: Tensor
    public let timesteps: [Int64]
    public let noise: Tensor
    /// Which batch entries had their conditioning replaced by the null conditioning.
    public let dropped: [Bool]
}

public struct DiffusionLoss {
    public let numTimesteps: Int
    /// sqrt(alphas_cumprod) and sqrt(1 - alphas_cumprod) as float32 buffers (CompVis register_schedule).
    public let sqrtAlphasCumprod: [Float]
    public let sqrtOneMinusAlphasCumprod: [Float]
    public var parameterization: Parameterization
    public var lossType: LossType
    public var condDropProb: Float
    /// Class used for dropped class labels (CompVis ClassEmbedder: n_classes - 1).
    public var nullClass: Int?
    /// Empty-prompt embedding (1, S, D) used for dropped text conditioning.
    public var nullText: Tensor?

    public init(schedule: NoiseSchedule, parameterization: Parameterization = .eps, lossType: LossType = .l2,
                condDropProb: Float = 0, nullClass: Int? = nil, nullText: Tensor? = nil) throws {
        guard (0...1).contains(condDropProb) else { throw TrainingError("cond_drop_prob must be in [0, 1], got \(condDropProb)") }
        numTimesteps = schedule.count
        sqrtAlphasCumprod = schedule.alphasCumprod.map { Float($0.squareRoot()) }
        sqrtOneMinusAlphasCumprod = schedule.alphasCumprod.map { Float((1 - $0).squareRoot()) }
        self.parameterization = parameterization
        self.lossType = lossType
        self.condDropProb = condDropProb
        self.nullClass = nullClass
        self.nullText = nullText
    }

    /// LatentDiffusion.forward: draws timesteps, noise and the dropout mask from `generator`, then p_losses.
    /// With a `shard` (data-parallel training), `x0` holds this rank's rows: the draws are made for the whole global
    /// batch, in the same order, and sliced (BatchShard), so every example's draws are those of one process.
    public func callAsFunction(model: UNet2DConditionModel, latents x0: Tensor, conditioning: TrainingConditioning,
                               generator: TorchGenerator, shard: BatchShard? = nil) throws -> DiffusionLossOutput {
        guard x0.rank == 4 else { throw TrainingError("latents must be (B, C, H, W), got \(x0.shape)") }
        let shard = shard ?? .whole(x0.shape[0])
        guard shard.localBatch == x0.shape[0] else { throw TrainingError("latents have \(x0.shape[0]) rows for a shard of \(shard.localBatch)") }
        let b = shard.globalBatch
        let t = shard.rows(try generator.randomInt(upperBound: Int64(numTimesteps), count: b))
        let noise = shard.rows(Tensor.randn([b] + x0.shape.dropFirst(), generator: generator))
        var dropped = [Bool](repeating: false, count: shard.localBatch)
        if condDropProb > 0 { dropped = shard.rows(generator.uniform(count: b).map { $0 < condDropProb }) }
        let cond = try applyDropout(conditioning, dropped)
        let loss = try pLosses(model: model, x0: x0, conditioning: cond, timesteps: t, noise: noise)
        return DiffusionLossOutput(loss: loss, timesteps: t, noise: noise, dropped: dropped)
    }

    /// Replaces the conditioning of the `dropped` entries by the null class / empty-prompt embedding.
    public func applyDropout(_ c: TrainingConditioning, _ dropped: [Bool]) throws -> TrainingConditioning {
        guard dropped.contains(true) else { return c }
        switch c {
        case .none, .concat: return c
        case .classLabels(let labels):
            guard let null = nullClass else { throw TrainingError("conditioning dropout on class labels needs a null class") }
            return .classLabels(zip(labels, dropped).map { $1 ? null : $0 })
        case .text(let ctx):
            guard let null = nullText, null.rank == 3, null.shape[0] == 1, Array(null.shape[1...]) == Array(ctx.shape[1...]) else {
                throw TrainingError("conditioning dropout on text needs an empty-prompt embedding of shape (1, \(ctx.shape.dropFirst().map(String.init).joined(separator: ", ")))")
            }
            let rows = dropped.enumerated().map { i, d in d ? null : ctx.narrow(0, i, 1) }
            return .text(concat(rows, axis: 0))
        }
    }

    /// q_sample: sqrt(acp[t]) * x0 + sqrt(1 - acp[t]) * noise.
    public func qSample(x0: Tensor, timesteps: [Int64], noise: Tensor) throws -> Tensor {
        let (a, s) = try coefficients(timesteps, batch: x0.shape[0])
        return a * x0 + s * noise
    }

    func coefficients(_ t: [Int64], batch b: Int) throws -> (Tensor, Tensor) {
        guard t.count == b, t.allSatisfy({ $0 >= 0 && $0 < Int64(numTimesteps) }) else {
            throw TrainingError("timesteps \(t) must be \(b) values in 0..<\(numTimesteps)")
        }
        return (Tensor(t.map { sqrtAlphasCumprod[Int($0)] }, shape: [b, 1, 1, 1]),
                Tensor(t.map { sqrtOneMinusAlphasCumprod[Int($0)] }, shape: [b, 1, 1, 1]))
    }

    /// p_losses with given timesteps and noise: the mean L1 / L2 between the model output and the target.
    public func pLosses(model: UNet2DConditionModel, x0: Tensor, conditioning: TrainingConditioning,
                        timesteps t: [Int64], noise: Tensor) throws -> Tensor {
        guard noise.shape == x0.shape else { throw TrainingError("noise \(noise.shape) does not match latents \(x0.shape)") }
        let (a, s) = try coefficients(t, batch: x0.shape[0])
        let xNoisy = a * x0 + s * noise
        let steps = t.map(Float.init)
        let out: Tensor
        switch conditioning {
        case .none: out = try model(sample: xNoisy, timestep: steps)
        case .classLabels(let labels): out = try model(sample: xNoisy, timestep: steps, classLabels: labels)
        case .text(let ctx): out = try model(sample: xNoisy, timestep: steps, encoderHiddenStates: ctx)
        case .concat(let c):
            guard c.rank == 4, c.shape[0] == x0.shape[0], c.shape[2] == x0.shape[2], c.shape[3] == x0.shape[3] else {
                throw TrainingError("concat conditioning \(c.shape) must be (B, C', \(x0.shape[2]), \(x0.shape[3]))")
            }
            out = try model(sample: concat([xNoisy, c], axis: 1), timestep: steps)
        }
        let target: Tensor
        switch parameterization {
        case .eps: target = noise
        case .x0: target = x0
        case .v: target = a * noise - s * x0
        }
        guard out.shape == target.shape else { throw TrainingError("model output \(out.shape) does not match target \(target.shape)") }
        return lossType == .l2 ? mseLoss(out, target) : l1Loss(out, target)
    }
}
