import TensorCore

// The torch.nn layers latent diffusion is built from. Parameter names are those of the PyTorch modules
// (weight, bias), so a layer's namedParameters are its state_dict.

public final class Linear: Module {
    public var weight: Tensor
    public var bias: Tensor?
    public init(_ inFeatures: Int, _ outFeatures: Int, bias: Bool = true) {
        weight = Tensor(zeros: [outFeatures, inFeatures]).requiringGrad()
        self.bias = bias ? Tensor(zeros: [outFeatures]).requiringGrad() : nil
    }
    public func callAsFunction(_ x: Tensor) -> Tensor { linear(x, weight, bias) }
    public var namedParameters: [(String, Tensor)] { [("weight", weight)] + (bias.map { [("bias", $0)] } ?? []) }
}

public final class Conv2d: Module {
    public var weight: Tensor
    public var bias: Tensor?
    public var options: Conv2dOptions
    public init(_ inChannels: Int, _ outChannels: Int, kernel: Int, stride: Int = 1, padding: Int = 0,
                dilation: Int = 1, groups: Int = 1, bias: Bool = true) {
        weight = Tensor(zeros: [outChannels, inChannels / groups, kernel, kernel]).requiringGrad()
        self.bias = bias ? Tensor(zeros: [outChannels]).requiringGrad() : nil
        options = Conv2dOptions(stride: stride, padding: padding, dilation: dilation, groups: groups)
    }
    public func callAsFunction(_ x: Tensor) -> Tensor { conv2d(x, weight, bias, options) }
    public var namedParameters: [(String, Tensor)] { [("weight", weight)] + (bias.map { [("bias", $0)] } ?? []) }
}

public final class GroupNorm: Module {
    public var weight: Tensor, bias: Tensor
    public let groups: Int, eps: Float
    public init(groups: Int, channels: Int, eps: Float = 1e-5) {
        self.groups = groups; self.eps = eps
        weight = Tensor.ones([channels]).requiringGrad(); bias = Tensor(zeros: [channels]).requiringGrad()
    }
    /// `silu: true` fuses the swish that follows most GroupNorms in the reference models.
    public func callAsFunction(_ x: Tensor, silu: Bool = false) -> Tensor {
        x.groupNorm(groups: groups, weight: weight, bias: bias, eps: eps, silu: silu)
    }
    public var namedParameters: [(String, Tensor)] { [("weight", weight), ("bias", bias)] }
}

public final class LayerNorm: Module {
    public var weight: Tensor, bias: Tensor
    public let eps: Float
    public init(_ dim: Int, eps: Float = 1e-5) {
        self.eps = eps
        weight = Tensor.ones([dim]).requiringGrad(); bias = Tensor(zeros: [dim]).requiringGrad()
    }
    public func callAsFunction(_ x: Tensor) -> Tensor { x.layerNorm(weight: weight, bias: bias, eps: eps) }
    public var namedParameters: [(String, Tensor)] { [("weight", weight), ("bias", bias)] }
}

public final class Embedding: Module {
    public var weight: Tensor
    public init(_ count: Int, _ dim: Int) { weight = Tensor(zeros: [count, dim]).requiringGrad() }
    public func callAsFunction(_ ids: [Int], shape: [Int]) -> Tensor { embedding(ids, shape: shape, weight: weight) }
    public var namedParameters: [(String, Tensor)] { [("weight", weight)] }
}

/// Random initialisation with torch.nn's default bounds (kaiming-uniform(a=sqrt(5)) weights and biases both
/// uniform in +-1/sqrt(fan_in)), seeded from `generator` but drawn with SplitMix64 so that initialising an 860M
/// parameter model takes a second rather than minutes (the values are reproducible, not torch's own draws).
public func initializeParameters(_ module: Module, generator: RandomSource) {
    var state = UInt64(generator.uniform(count: 2).reduce(0) { $0 * 16_777_216 + Double($1 * 16_777_216) })
    for (name, t) in module.namedParameters {
        let isNorm = name.contains("norm") && t.rank == 1
        guard !isNorm, t.dtype == .float32 else { continue }
        let fanIn = t.rank >= 2 ? t.shape[1...].reduce(1, *) : t.count
        let bound = 1 / Float(max(fanIn, 1)).squareRoot()
        let c = t.contiguous()
        let p = c.data
        for i in 0..<c.count {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            z ^= z >> 31
            p[i] = (Float(z >> 40) * (1.0 / 16_777_216.0) * 2 - 1) * bound
        }
        if c !== t { t.assign(c) } else { t.bumpVersion() }
    }
}
