import Foundation
import NeuralNetwork
import TensorCore

// Matches diffusers models/embeddings.py (`get_timestep_embedding`, `TimestepEmbedding`) and models/resnet.py
// (`ResnetBlock2D`), models/downsampling.py (`Downsample2D`), models/upsampling.py (`Upsample2D`).

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
        linear1 = Linear(inChannels, timeEmbedDim); linear2 = Linear(timeEmbedDim, timeEmbedDim)
    }
    public func callAsFunction(_ x: Tensor) -> Tensor { linear2(linear1(x).silu()) }
    public var namedParameters: [(String, Tensor)] { scoped("linear_1", linear1) + scoped("linear_2", linear2) }
}

/// ResnetBlock2D with time_embedding_norm "default" (h + temb before norm2) or "scale_shift"
/// (norm2(h) * (1 + scale) + shift). Callers pass the time embedding already through SiLU (skip_time_act False).
/// `resample` .down / .up (diffusers down=True / up=True; CompVis openaimodel ResBlock down/up, resblock_updown):
/// after norm1 + SiLU, both the hidden state and the shortcut input are 2x2-average-pooled (Downsample2D without conv,
/// CompVis avg_pool_nd) or nearest-upsampled 2x (Upsample2D without conv, F.interpolate) before conv1.
public final class ResnetBlock2D: Module {
    public enum Resample: Sendable { case none, down, up }
    public let norm1: GroupNorm, conv1: Conv2d, timeEmbProj: Linear?, norm2: GroupNorm, conv2: Conv2d, convShortcut: Conv2d?
    public let scaleShift: Bool, outputScaleFactor: Float
    public let resample: Resample

    public init(inChannels: Int, outChannels: Int, tembChannels: Int?, groups: Int, eps: Float,
                timeEmbeddingNorm: String = "default", outputScaleFactor: Float = 1, resample: Resample = .none) {
        let scaleShift = timeEmbeddingNorm == "scale_shift"
        self.scaleShift = scaleShift
        self.outputScaleFactor = outputScaleFactor
        self.resample = resample
        norm1 = GroupNorm(groups: groups, channels: inChannels, eps: eps)
        conv1 = Conv2d(inChannels, outChannels, kernel: 3, padding: 1)
        timeEmbProj = tembChannels.map { Linear($0, scaleShift ? 2 * outChannels : outChannels) }
        norm2 = GroupNorm(groups: groups, channels: outChannels, eps: eps)
        conv2 = Conv2d(outChannels, outChannels, kernel: 3, padding: 1)
        convShortcut = inChannels != outChannels ? Conv2d(inChannels, outChannels, kernel: 1) : nil
    }

    /// `tembAct`: SiLU(time embedding), (B, temb_channels).
    public func callAsFunction(_ input: Tensor, tembAct: Tensor?) -> Tensor {
        var h = norm1(input, silu: true), x = input
        switch resample {
        case .none: break
        case .down:
            h = h.avgPool2d(kernel: 2); x = x.avgPool2d(kernel: 2)
        case .up:
            let (oh, ow) = (x.shape[2] * 2, x.shape[3] * 2)
            h = h.upsampleNearest(height: oh, width: ow); x = x.upsampleNearest(height: oh, width: ow)
        }
        h = conv1(h)
        if let proj = timeEmbProj, let tembAct {
            let t = proj(tembAct)
            let b = t.shape[0], c = t.shape[1]
            if scaleShift {
                let parts = t.reshaped([b, c, 1, 1]).chunk(2, axis: 1)
                h = (norm2(h) * (parts[0] + 1) + parts[1]).silu()
            } else {
                h = norm2(h + t.reshaped([b, c, 1, 1]), silu: true)
            }
        } else {
            h = norm2(h, silu: true)
        }
        h = conv2(h)
        let out = (convShortcut.map { $0(x) } ?? x) + h
        return outputScaleFactor == 1 ? out : out / outputScaleFactor
    }

    public var namedParameters: [(String, Tensor)] {
        scoped("norm1", norm1) + scoped("conv1", conv1) + scoped("time_emb_proj", timeEmbProj)
            + scoped("norm2", norm2) + scoped("conv2", conv2) + scoped("conv_shortcut", convShortcut)
    }
}

/// Downsample2D(use_conv=True): 3x3 conv with stride 2; padding 0 means F.pad(0, 1, 0, 1) first, as diffusers does.
public final class Downsample2D: Module {
    public let conv: Conv2d
    public init(channels: Int, outChannels: Int, padding: Int) {
        conv = Conv2d(channels, outChannels, kernel: 3, stride: 2, padding: padding)
        if padding == 0 { conv.options.padding = (top: 0, left: 0, bottom: 1, right: 1) }
    }
    public func callAsFunction(_ x: Tensor) -> Tensor { conv(x) }
    public var namedParameters: [(String, Tensor)] { scoped("conv", conv) }
}

/// Upsample2D(use_conv=True): nearest-neighbour resize (2x, or to `size` as diffusers' upsample_size) + 3x3 conv.
public final class Upsample2D: Module {
    public let conv: Conv2d
    public init(channels: Int, outChannels: Int) { conv = Conv2d(channels, outChannels, kernel: 3, padding: 1) }
    public func callAsFunction(_ x: Tensor, size: (Int, Int)? = nil) -> Tensor {
        let (h, w) = size ?? (x.shape[2] * 2, x.shape[3] * 2)
        if h == x.shape[2] * 2 && w == x.shape[3] * 2 { return conv.upsampling(x, factor: 2) }
        return conv(x.upsampleNearest(height: h, width: w))
    }
    public var namedParameters: [(String, Tensor)] { scoped("conv", conv) }
}
