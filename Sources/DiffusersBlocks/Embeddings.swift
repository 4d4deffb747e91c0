// Follows diffusers src/diffusers/models/embeddings.py: `get_timestep_embedding` and `TimestepEmbedding` (the UNet's
// sinusoidal time projection and its two-layer MLP; CompVis: timestep_embedding and time_embed in
// ldm/modules/diffusionmodules/openaimodel.py).
import Foundation
import NeuralNetwork
import TensorCore

/// get_timestep_embedding: exponent = -log(max_period) * arange(half) / (half - shift); emb = t * exp(exponent);
/// [sin, cos] (or [cos, sin] with flip_sin_to_cos); a zero column pads odd dimensions. Returns (N, dim).
public func timestepEmbedding(_ timesteps: [Float], dim: Int, flipSinToCos: Bool, downscaleFreqShift: Float,
                              scale: Float = 1, maxPeriod: Float = 10000) -> Tensor {
    let half = dim / 2
    let freqs = (0..<half).map { i -> Float in
        let exponent = -Foundation.log(maxPeriod) * Float(i)
        return Foundation.exp(exponent / (Float(half) - downscaleFreqShift))
    }
    var out = [Float](repeating: 0, count: timesteps.count * dim)
    for (n, t) in timesteps.enumerated() {
        for i in 0..<half {
            let arg = scale * (t * freqs[i])
            let (s, c) = (Foundation.sin(arg), Foundation.cos(arg))
            out[n * dim + i] = flipSinToCos ? c : s
            out[n * dim + half + i] = flipSinToCos ? s : c
        }
    }
    return Tensor(out, shape: [timesteps.count, dim])
}

/// TimestepEmbedding: linear_1 -> SiLU -> linear_2.
public final class TimestepEmbedding: Module {
    public let linear1: Linear, linear2: Linear
    public init(inChannels: Int, timeEmbedDim: Int) {
        linear1 = Linear(inChannels, timeEmbedDim)
        linear2 = Linear(timeEmbedDim, timeEmbedDim)
    }
    public func callAsFunction(_ x: Tensor) -> Tensor { linear2(linear1(x).silu()) }
    public var namedParameters: [(String, Tensor)] { scoped("linear_1", linear1) + scoped("linear_2", linear2) }
}
