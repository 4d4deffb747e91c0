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

/// Random initialisation as torch.nn's defaults (kaiming-uniform weights, uniform(-1/sqrt(fan_in), ...) biases),
/// drawn from a seeded generator so that training runs are reproducible.
public func initializeParameters(_ module: Module, generator: RandomSource) {
    for (name, t) in module.namedParameters {
        let isNorm = name.contains("norm") && t.rank == 1
        guard !isNorm else { continue }
        let fanIn = t.rank >= 2 ? t.shape[1...].reduce(1, *) : t.count
        let bound = 1 / Float(max(fanIn, 1)).squareRoot()
        let u = generator.uniform(count: t.count).map { ($0 * 2 - 1) * bound }
        t.assign(Tensor(u, shape: t.shape))
    }
}
