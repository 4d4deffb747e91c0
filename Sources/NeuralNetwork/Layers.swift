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
    /// A trainable branch added to the output (LoRA training, as PEFT's LoraLayer: y = base(x) + adapter(x)); not a
    /// parameter of this layer. nil (the default) leaves the layer as it is.
    public var adapter: ((Tensor) -> Tensor)?
    /// The weight quantised to int8 for inference (`quantizeToInt8`, Int8Quantization.swift); used instead of `weight`.
    public var int8: Int8Weight?
    public func callAsFunction(_ x: Tensor) -> Tensor {
        let y = int8.map { linearInt8(x, $0, bias) } ?? Autocast.lowerPrecision(x, weight, bias) { linear($0, $1, $2) }
        guard let adapter else { return y }
        return y + adapter(x)
    }
    /// self(x) + residual: in inference the residual is added in the GEMM's float32 accumulator (TensorCore
    /// `linear(_:_:_:adding:)`, one pass over the output less; under bf16 autocast the product unrounded, see
    /// `Autocast.lowerPrecision(_:_:_:adding:_:fused:)`); with an adapter or int8 weights the sum as written.
    public func callAsFunction(_ x: Tensor, adding residual: Tensor) -> Tensor {
        guard adapter == nil, int8 == nil else { return self(x) + residual }
        return Autocast.lowerPrecision(x, weight, bias, adding: residual, { linear($0, $1, $2) }, fused: { linear($0, $1, $2, adding: $3) })
    }
    /// then(self(x)), with the product handed unrounded to `roundingThen` (a `then` that rounds its input to bf16 as it
    /// reads it) in native bf16 inference: `Autocast.lowerPrecision(_:_:_:_:then:roundingThen:)`.
    public func callAsFunction(_ x: Tensor, then: (Tensor) -> Tensor, roundingThen: (Tensor) -> Tensor) -> Tensor {
        guard adapter == nil, int8 == nil else { return then(self(x)) }
        return Autocast.lowerPrecision(x, weight, bias, { linear($0, $1, $2) }, then: then, roundingThen: roundingThen)
    }
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
    /// A trainable branch added to the output (LoRA training on a convolution, e.g. a 1x1 proj_in); not a parameter
    /// of this layer. nil (the default) leaves the layer as it is.
    public var adapter: ((Tensor) -> Tensor)?
    /// The weight quantised to int8 for inference (`quantizeToInt8`, Int8Quantization.swift); used instead of `weight`.
    public var int8: Int8Weight?
    public func callAsFunction(_ x: Tensor) -> Tensor {
        let y = int8.map { conv2dInt8(x, $0, bias, options) } ?? Autocast.lowerPrecision(x, weight, bias) { conv2d($0, $1, $2, options) }
        guard let adapter else { return y }
        return y + adapter(x)
    }
    /// self(x) + residual: a 1x1 convolution in inference adds the residual in its GEMM's float32 accumulator and reads
    /// a channels-innermost input in place (TensorCore `conv2d(_:_:_:_:adding:)`; under bf16 autocast the product
    /// unrounded, see `Autocast.lowerPrecision(_:_:_:adding:_:fused:)`); with an adapter or int8 weights the sum as written.
    public func callAsFunction(_ x: Tensor, adding residual: Tensor) -> Tensor {
        guard adapter == nil, int8 == nil else { return self(x) + residual }
        let options = options
        return Autocast.lowerPrecision(x, weight, bias, adding: residual, { conv2d($0, $1, $2, options) },
                                       fused: { conv2d($0, $1, $2, options, adding: $3) })
    }
    /// self(x) as (N, H*W, O) tokens (a transformer's proj_in): TensorCore `conv2d(tokens:_:_:_:)`, which writes them
    /// directly from a 1x1 convolution under native bf16 instead of permuting and copying the NCHW output.
    public func tokens(_ x: Tensor) -> Tensor {
        guard adapter == nil, int8 == nil else {
            let y = self(x)
            return y.permuted([0, 2, 3, 1]).reshaped([y.shape[0], y.shape[2] * y.shape[3], y.shape[1]])
        }
        let options = options
        return Autocast.lowerPrecision(x, weight, bias) { conv2d(tokens: $0, $1, $2, options) }
    }
    /// self(x.upsampleNearest(factor x)) without materialising the upsampled input when that can be avoided.
    /// (Under bf16 autocast the input is rounded before the upsampling, which commutes with it.)
    public func upsampling(_ x: Tensor, factor: Int) -> Tensor {
        guard adapter == nil && int8 == nil else { return self(x.upsampleNearest(height: x.shape[2] * factor, width: x.shape[3] * factor)) }
        return Autocast.lowerPrecision(x, weight, bias) { conv2d(upsamplingNearest: $0, factor: factor, $1, $2, options) }
    }
    /// self(norm(x, silu:)) without materialising the normalised input when that can be avoided.
    /// (Under bf16 autocast the normalised input is materialised: the convolution sees it rounded to bf16.)
    public func normalized(_ x: Tensor, _ norm: GroupNorm, silu: Bool) -> Tensor {
        guard Autocast.isBF16 || adapter != nil || int8 != nil else {
            return conv2d(groupNormed: x, groups: norm.groups, normWeight: norm.weight, normBias: norm.bias, eps: norm.eps, silu: silu,
                          weight, bias, options)
        }
        return self(norm(x, silu: silu))
    }
    public var namedParameters: [(String, Tensor)] { [("weight", weight)] + (bias.map { [("bias", $0)] } ?? []) }
}

public final class GroupNorm: Module {
    public var weight: Tensor, bias: Tensor
    public let groups: Int, eps: Float
    public init(groups: Int, channels: Int, eps: Float = 1e-5) {
        self.groups = groups
        self.eps = eps
        weight = Tensor.ones([channels]).requiringGrad()
        bias = Tensor(zeros: [channels]).requiringGrad()
    }
    /// `silu: true` fuses the swish that follows most GroupNorms in the reference models. `adding` (N, C): normalises
    /// x + adding broadcast over the spatial axes (a resnet's time embedding), without materialising the sum in inference.
    public func callAsFunction(_ x: Tensor, silu: Bool = false, adding shift: Tensor? = nil) -> Tensor {
        x.groupNorm(groups: groups, weight: weight, bias: bias, eps: eps, silu: silu, adding: shift)
    }
    public var namedParameters: [(String, Tensor)] { [("weight", weight), ("bias", bias)] }
}

/// torch.nn.BatchNorm2d (affine, track_running_stats). In training mode it normalises with the batch statistics
/// (biased variance) and updates running_mean / running_var with `momentum` (running_var from the unbiased
/// variance) and num_batches_tracked; in eval mode it uses the running statistics. Built from autograd ops, so the
/// backward (including through the batch statistics) is autograd's.
public final class BatchNorm2d: Module {
    public var weight: Tensor, bias: Tensor
    /// Buffers (no gradients); num_batches_tracked is int64 in PyTorch, a float32 scalar here.
    public let runningMean: Tensor, runningVar: Tensor, numBatchesTracked: Tensor
    public let eps: Float, momentum: Float
    public var training = true
    public init(_ channels: Int, eps: Float = 1e-5, momentum: Float = 0.1) {
        self.eps = eps
        self.momentum = momentum
        weight = Tensor.ones([channels]).requiringGrad()
        bias = Tensor(zeros: [channels]).requiringGrad()
        runningMean = Tensor(zeros: [channels])
        runningVar = Tensor.ones([channels])
        numBatchesTracked = Tensor(zeros: [])
    }
    /// `frozen`: the affine weight and bias take part without gradients (detached), running statistics still update.
    public func callAsFunction(_ x: Tensor, frozen: Bool = false) -> Tensor {
        let c = weight.count, view = [1, c, 1, 1]
        precondition(x.rank == 4 && x.shape[1] == c, "BatchNorm2d(\(c)): input \(x.shape)")
        let normalized: Tensor
        if training {
            let n = x.count / c
            precondition(n > 1, "BatchNorm2d: expected more than 1 value per channel when training, got input \(x.shape)")
            let mean = x.mean(axes: [0, 2, 3], keepDims: true)
            let centered = x - mean
            let variance = centered.square().mean(axes: [0, 2, 3], keepDims: true)
            normalized = centered * (variance + eps).rsqrt()
            GradMode.noGrad {
                runningMean.assign(runningMean * (1 - momentum) + mean.reshaped([c]) * momentum)
                runningVar.assign(runningVar * (1 - momentum) + variance.reshaped([c]) * (Float(n) / Float(n - 1) * momentum))
                numBatchesTracked.assign(numBatchesTracked + 1)
            }
        } else {
            normalized = (x - runningMean.reshaped(view)) * (runningVar.reshaped(view) + eps).rsqrt()
        }
        let (w, b) = frozen ? (weight.detach(), bias.detach()) : (weight, bias)
        return normalized * w.reshaped(view) + b.reshaped(view)
    }
    public var namedParameters: [(String, Tensor)] {
        [("weight", weight), ("bias", bias), ("running_mean", runningMean), ("running_var", runningVar),
         ("num_batches_tracked", numBatchesTracked)]
    }
    /// weight and bias (what an optimizer updates).
    public var trainableParameters: [(String, Tensor)] { [("weight", weight), ("bias", bias)] }
}

public final class LayerNorm: Module {
    public var weight: Tensor, bias: Tensor
    public let eps: Float
    public init(_ dim: Int, eps: Float = 1e-5) {
        self.eps = eps
        weight = Tensor.ones([dim]).requiringGrad()
        bias = Tensor(zeros: [dim]).requiringGrad()
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
