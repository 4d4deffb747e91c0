// Matches diffusers DiagonalGaussianDistribution (models/autoencoders/vae.py) = CompVis
// ldm/modules/distributions/distributions.py: moments (B, 2C, H, W) split into mean and logvar (clamped to [-30, 20]).
import TensorCore

public struct DiagonalGaussianDistribution {
    public let parameters: Tensor
    public let mean: Tensor
    public let logvar: Tensor
    public let std: Tensor
    public let variance: Tensor
    public let deterministic: Bool

    public init(_ moments: Tensor, deterministic: Bool = false) {
        precondition(moments.rank == 4 && moments.shape[1] % 2 == 0, "DiagonalGaussianDistribution: moments \(moments.shape) must be (B, 2C, H, W)")
        parameters = moments
        let halves = moments.chunk(2, axis: 1)
        mean = halves[0].contiguous()
        logvar = halves[1].clamped(min: -30, max: 20)
        self.deterministic = deterministic
        if deterministic {
            std = Tensor(zeros: mean.shape)
            variance = Tensor(zeros: mean.shape)
        } else {
            std = (logvar * 0.5).exp()
            variance = logvar.exp()
        }
    }

    /// mean + std * noise, the noise drawn as diffusers' randn_tensor(mean.shape, generator) on the CPU
    /// (torch.randn in NCHW order, batch entries drawn in one call).
    public func sample(generator: RandomSource) -> Tensor {
        mean + std * Tensor.randn(mean.shape, generator: generator)
    }

    public func mode() -> Tensor { mean }

    /// KL divergence to N(0, 1) (or to `other`), summed over (C, H, W): one value per batch entry.
    public func kl(_ other: DiagonalGaussianDistribution? = nil) -> Tensor {
        if deterministic { return Tensor(zeros: [1]) }
        guard let o = other else {
            return ((mean.square() + variance - 1 - logvar).sum(axes: [1, 2, 3])) * 0.5
        }
        return ((mean - o.mean).square() / o.variance + variance / o.variance - 1 - logvar + o.logvar).sum(axes: [1, 2, 3]) * 0.5
    }

    /// Negative log-likelihood of `sample`, summed over `axes`.
    public func nll(_ sample: Tensor, axes: [Int] = [1, 2, 3]) -> Tensor {
        if deterministic { return Tensor(zeros: [1]) }
        let logTwoPi = Float(1.8378770664093453)
        return ((logvar + logTwoPi) + (sample - mean).square() / variance).sum(axes: axes) * 0.5
    }
}
