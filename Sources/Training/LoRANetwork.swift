// LoRA adapters for training (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"), as kohya-ss
// sd-scripts networks/lora.py (LoRAModule: lora_down kaiming_uniform_(a=sqrt(5)), lora_up zeros, scale alpha / rank,
// the branch added to the frozen module's output; create_network targets Transformer2DModel's Linear / 1x1 Conv2d
// modules of the UNet and CLIPAttention / CLIPMLP of the text encoder) and PEFT's LoraLayer (same initialisation and
// scaling). The file format is kohya's: `lora_unet_<diffusers module path, dots as underscores>.lora_down.weight`,
// `.lora_up.weight`, `.alpha`, `lora_te_<transformers path>` for the text encoder, ss_* training metadata.
import Checkpoints
import Conditioning
import DiffusersBlocks
import Foundation
import NeuralNetwork
import TensorCore
import UNetModels

/// Which modules get an adapter (kohya's defaults: the attention projections; `projections` and `feedForward` add
/// the rest of what kohya's Transformer2DModel target holds).
public struct LoRATargets: Equatable, Sendable {
    /// attn1 / attn2 to_q, to_k, to_v, to_out.0
    public var attention = true
    /// proj_in / proj_out of each Transformer2DModel (Linear or 1x1 Conv2d)
    public var projections = false
    /// ff.net.0.proj, ff.net.2
    public var feedForward = false
    /// The CLIP text encoder's q/k/v/out_proj and fc1/fc2 (kohya's CLIPAttention + CLIPMLP targets).
    public var textEncoder = false
    public init(attention: Bool = true, projections: Bool = false, feedForward: Bool = false, textEncoder: Bool = false) {
        self.attention = attention
        self.projections = projections
        self.feedForward = feedForward
        self.textEncoder = textEncoder
    }
}

/// One low-rank branch: out += (alpha / rank) * up(down(x)). A Linear target gets Linear factors (down (r, in),
/// up (out, r)), a 1x1 Conv2d target 1x1 Conv2d factors ((r, in, 1, 1), (out, r, 1, 1)), as kohya's LoRAModule.
public final class LoRAAdapter: Module {
    /// The kohya module name, e.g. "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q".
    public let name: String
    /// Our full parameter name of the adapted weight ("unet.<path>.weight" / "text_encoder.<path>.weight").
    public let target: String
    public let rank: Int, alpha: Float
    public let down: Tensor, up: Tensor
    public let isConv: Bool
    public var scale: Float { alpha / Float(rank) }

    init(name: String, target: String, inFeatures: Int, outFeatures: Int, isConv: Bool, rank: Int, alpha: Float,
         generator: TorchGenerator) {
        self.name = name
        self.target = target
        self.rank = rank
        self.alpha = alpha
        self.isConv = isConv
        // kaiming_uniform_(a=sqrt(5)): bound = sqrt(6 / ((1 + a^2) fan_in)) = 1 / sqrt(fan_in).
        let bound = 1 / Float(inFeatures).squareRoot()
        let u = generator.uniform(count: rank * inFeatures)
        let tail = isConv ? [1, 1] : []
        down = Tensor(u.map { ($0 * 2 - 1) * bound }, shape: [rank, inFeatures] + tail).requiringGrad()
        up = Tensor(zeros: [outFeatures, rank] + tail).requiringGrad()
    }

    /// The branch's output for the adapted module's input `x` (autocast like the module itself).
    public func callAsFunction(_ x: Tensor) -> Tensor {
        let h: Tensor
        if isConv {
            let opts = Conv2dOptions()
            let d = Autocast.lowerPrecision(x, down, nil) { conv2d($0, $1, $2, opts) }
            h = Autocast.lowerPrecision(d, up, nil) { conv2d($0, $1, $2, opts) }
        } else {
            let d = Autocast.lowerPrecision(x, down, nil) { linear($0, $1, $2) }
            h = Autocast.lowerPrecision(d, up, nil) { linear($0, $1, $2) }
        }
        return scale == 1 ? h : h * scale
    }

    /// kohya's part names (the optimizer and checkpoints see "<name>.lora_down.weight", ...).
    public var namedParameters: [(String, Tensor)] { [("lora_down.weight", down), ("lora_up.weight", up)] }

    /// up @ down * scale, the update merged into the weight (W + delta), as float32 values of the weight's shape.
    public func delta() -> [Float] {
        let r = rank, o = up.shape[0], i = down.shape[1]
        let d = GradMode.noGrad { matmul(up.reshaped([o, r]), down.reshaped([r, i])) * scale }
        return d.contiguous().float32().toArray()
    }
}

/// The adapters of a UNet (and optionally its text encoder), attached to the frozen modules through their `adapter`
/// hook. As a Module its parameters are the adapters' factors under their kohya names, so the Trainer's optimizer and
/// checkpoints hold exactly those.
public final class LoRANetwork: Module {
    public let adapters: [LoRAAdapter]
    public let rank: Int, alpha: Float
    private var detachers: [() -> Void] = []

    /// Finds the target modules, creates an adapter for each (down drawn from `generator` in module order, up zero) and
    /// attaches it. The base weights are frozen (requiresGrad off) so backward computes no gradient for them.
    public init(unet: UNet2DConditionModel, textEncoder: CLIPTextModel?, targets: LoRATargets, rank: Int, alpha: Float,
                generator: TorchGenerator) throws {
        guard rank > 0 else { throw TrainingError("LoRA rank must be positive, got \(rank)") }
        guard alpha > 0, alpha.isFinite else { throw TrainingError("LoRA alpha must be positive, got \(alpha)") }
        guard targets.attention || targets.projections || targets.feedForward || targets.textEncoder else {
            throw TrainingError("LoRA targets select no module")
        }
        self.rank = rank
        self.alpha = alpha
        var found: [(kohya: String, target: String, module: AnyObject)] = []
        let unetNames = Self.names(unet.namedParameters)
        for t in Self.transformers(unet) {
            var modules: [AnyObject] = []
            if targets.projections {
                let projections: [AnyObject?] = [t.projInLinear, t.projInConv, t.projOutLinear, t.projOutConv]
                modules += projections.compactMap { $0 }
            }
            for b in t.transformerBlocks {
                if targets.attention { modules += [b.attn1, b.attn2].flatMap { [$0.toQ, $0.toK, $0.toV, $0.toOut] as [AnyObject] } }
                if targets.feedForward { modules += [b.ff.proj, b.ff.out] }
            }
            for m in modules {
                guard let path = Self.path(of: m, in: unetNames) else { throw TrainingError("LoRA: a target module of the UNet has no parameter name") }
                found.append(("lora_unet_" + path.replacingOccurrences(of: ".", with: "_"), "unet." + path + ".weight", m))
            }
        }
        if targets.textEncoder {
            guard let textEncoder else { throw TrainingError("LoRA on the text encoder needs a model with a CLIP text encoder") }
            let teNames = Self.names(textEncoder.namedParameters)
            for l in textEncoder.layers {
                for m in [l.qProj, l.kProj, l.vProj, l.outProj, l.fc1, l.fc2] {
                    guard let path = Self.path(of: m, in: teNames) else { throw TrainingError("LoRA: a target module of the text encoder has no parameter name") }
                    found.append(("lora_te_" + path.replacingOccurrences(of: ".", with: "_"), "text_encoder." + path + ".weight", m))
                }
            }
        }
        guard !found.isEmpty else { throw TrainingError("LoRA: the model has none of the target modules (no Transformer2DModel blocks)") }
        var adapters: [LoRAAdapter] = [], detachers: [() -> Void] = []
        for f in found {
            if let lin = f.module as? Linear {
                guard lin.adapter == nil else { throw TrainingError("LoRA: \(f.target) already has an adapter") }
                let a = LoRAAdapter(name: f.kohya, target: f.target, inFeatures: lin.weight.shape[1], outFeatures: lin.weight.shape[0],
                                    isConv: false, rank: rank, alpha: alpha, generator: generator)
                lin.adapter = { [unowned a] x in a(x) }
                detachers.append { [weak lin] in lin?.adapter = nil }
                adapters.append(a)
            } else if let conv = f.module as? Conv2d {
                let s = conv.weight.shape
                guard s.count == 4, s[2] == 1, s[3] == 1, conv.options == Conv2dOptions() else {
                    throw TrainingError("LoRA: \(f.target) is a \(s) convolution; only 1x1 convolutions take a LoRA here")
                }
                guard conv.adapter == nil else { throw TrainingError("LoRA: \(f.target) already has an adapter") }
                let a = LoRAAdapter(name: f.kohya, target: f.target, inFeatures: s[1], outFeatures: s[0], isConv: true,
                                    rank: rank, alpha: alpha, generator: generator)
                conv.adapter = { [unowned a] x in a(x) }
                detachers.append { [weak conv] in conv?.adapter = nil }
                adapters.append(a)
            }
        }
        self.adapters = adapters
        self.detachers = detachers
        for (_, p) in unet.namedParameters { p.requiresGrad = false }
        if let textEncoder { for (_, p) in textEncoder.namedParameters { p.requiresGrad = false } }
    }

    deinit { detach() }

    /// Removes the adapters from the modules (the model computes as before they were attached).
    public func detach() {
        for d in detachers { d() }
        detachers = []
    }

    public var trainsTextEncoder: Bool { adapters.contains { $0.name.hasPrefix("lora_te_") } }

    public var namedParameters: [(String, Tensor)] { adapters.flatMap { a in a.namedParameters.map { ("\(a.name).\($0.0)", $0.1) } } }

    /// The UNet's Transformer2DModel blocks, in parameter order (down, mid, up).
    static func transformers(_ unet: UNet2DConditionModel) -> [Transformer2DModel] {
        let layers = unet.downBlocks.flatMap(\.attentions) + (unet.midBlock?.attentions ?? []) + unet.upBlocks.flatMap(\.attentions)
        return layers.compactMap { $0 as? Transformer2DModel }
    }

    /// weight tensor identity -> module path (the parameter name without ".weight").
    static func names(_ params: [(String, Tensor)]) -> [ObjectIdentifier: String] {
        var out: [ObjectIdentifier: String] = [:]
        for (n, t) in params where n.hasSuffix(".weight") { out[ObjectIdentifier(t)] = String(n.dropLast(7)) }
        return out
    }

    static func path(of module: AnyObject, in names: [ObjectIdentifier: String]) -> String? {
        if let l = module as? Linear { return names[ObjectIdentifier(l.weight)] }
        if let c = module as? Conv2d { return names[ObjectIdentifier(c.weight)] }
        return nil
    }

    /// The kohya-format file: "<name>.lora_down.weight", "<name>.lora_up.weight" in `dtype` and "<name>.alpha" (a
    /// scalar in the same type, as kohya saves it), with `metadata` (ss_* keys); written atomically.
    public func save(to url: URL, dtype: DType = .float32, metadata: [String: String]) throws {
        guard [.float32, .float16, .bfloat16].contains(dtype) else { throw TrainingError("LoRA save dtype must be float32, float16 or bfloat16") }
        let st: StorageDType = dtype == .float32 ? .F32 : (dtype == .bfloat16 ? .BF16 : .F16)
        func entry(_ name: String, _ t: Tensor) -> SafeTensorsEntry {
            let c = t.to(dtype).contiguous()
            let bytes = withExtendedLifetime(c) { Data(bytes: c.storage.base + c.offset * dtype.byteSize, count: c.count * dtype.byteSize) }
            return SafeTensorsEntry(name: name, dtype: st, shape: t.shape, bytes: bytes)
        }
        var entries: [SafeTensorsEntry] = []
        for a in adapters {
            entries.append(entry("\(a.name).lora_down.weight", a.down))
            entries.append(entry("\(a.name).lora_up.weight", a.up))
            let alpha = entry("\(a.name).alpha", Tensor([a.alpha], shape: [1]))
            entries.append(SafeTensorsEntry(name: alpha.name, dtype: st, shape: [], bytes: alpha.bytes))
        }
        try SafeTensors.write(entries, metadata: metadata, to: url)
    }
}
