// The UNet's rename table: CompVis ldm/modules/diffusionmodules/openaimodel.py `UNetModel` state dicts
// (model.diffusion_model.input_blocks.N.M..., middle_block, output_blocks, time_embed, label_emb, out) <-> diffusers
// UNet2DConditionModel / UNet2DModel names, generated from a block layout as diffusers loaders/single_file_utils.py
// `convert_ldm_unet_checkpoint` does: one row per block prefix, plus the resnet leaf renames of
// `update_unet_resnet_ldm_to_diffusers`. SpatialTransformer leaves have the same names on both sides. The layout comes
// from a UNetConfig (loading) or from the tensor names (`ldm convert`, the shape-derived single-file load). With
// resblock_updown the resamplers are ResBlocks (input_blocks.N.0 / output_blocks.N.(1|2) with resnet leaves) mapped to
// the ResnetBlock2D(down/up=True) at downsamplers.0 / upsamplers.0 (diffusers' converter has no rule for them). Legacy
// `AttentionBlock`s (unconditional LDMs) store q, k, v as one 1-d conv `qkv` split per head (QKVAttentionLegacy: heads
// first) or per q/k/v (QKVAttention, use_new_attention_order); `CompVisUNetKeyMap.load` splits them. SDXL (sgm
// openaimodel with num_classes "sequential"): label_emb.0.{0,2} is the "text_time" added-conditioning MLP
// (diffusers add_embedding.linear_{1,2}, convert_diffusers_to_original_sdxl.py unet_conversion_map).
import Checkpoints
import DiffusersBlocks
import NeuralNetwork
import TensorCore
import UNetModels

/// openaimodel.py UNetModel <-> UNet2DConditionModel / UNet2DModel block structure.
public struct UNetLayout: Equatable, Sendable {
    /// What follows a block's resnet: nothing, a SpatialTransformer (same names on both sides), or a legacy
    /// AttentionBlock of `heads` heads.
    public enum Attention: Equatable, Sendable {
        case none, transformer
        case legacy(heads: Int)
    }
    /// label_emb: absent, a timestep-style MLP (class_embed_type "timestep"), a class table (num_class_embeds), or
    /// SDXL's added-conditioning MLP (addition_embed_type "text_time": add_embedding).
    public enum ClassEmbedding: Equatable, Sendable { case none, timestep, table, textTime }

    /// Resnets per down level (the up block mirroring level l has one more).
    public var layers: [Int]
    /// Per down level (diffusers order).
    public var down: [Attention]
    /// Per up block (diffusers order: up block b mirrors down level `levels - 1 - b`).
    public var up: [Attention]
    /// The mid block's attention; nil when there is no mid block.
    public var mid: Attention?
    /// Per down level / up block: the resampler is a ResBlock (resblock_updown).
    public var resnetDownsample: [Bool]
    public var resnetUpsample: [Bool]
    public var classEmbedding: ClassEmbedding = .none

    public var levels: Int { layers.count }
    /// Resnets per down level of the first level (the layouts read from names have one count for every level).
    public var layersPerBlock: Int { layers.first ?? 0 }
    /// Per down level: whether it has attention.
    public var attention: [Bool] { down.map { $0 != .none } }
    public var midAttention: Bool { mid.map { $0 != .none } ?? false }

    /// A Stable Diffusion style layout: spatial transformers at the `attention` levels, conv resamplers.
    public init(levels: Int, layersPerBlock: Int, attention: [Bool], midAttention: Bool = true) {
        layers = Array(repeating: layersPerBlock, count: levels)
        down = attention.map { $0 ? .transformer : .none }
        up = down.reversed()
        mid = midAttention ? .transformer : Attention.none
        resnetDownsample = Array(repeating: false, count: levels)
        resnetUpsample = Array(repeating: false, count: levels)
    }

    /// The layout of the model `config` builds.
    public init(config: UNetConfig) throws {
        try config.validate()
        let n = config.blockOutChannels.count
        let boc = config.blockOutChannels
        func attention(_ kind: BlockAttention?, _ i: Int, channels: Int) -> Attention {
            switch kind {
            case .crossAttention?: return .transformer
            case .spatial?: return .legacy(heads: channels / config.legacyHeadDim(i, channels: channels))
            case nil: return .none
            }
        }
        layers = Array(config.layersPerBlock.prefix(n))
        down = (0..<n).map { attention(config.downBlockTypes[$0].attention, $0, channels: boc[$0]) }
        up = (0..<n).map { attention(config.upBlockTypes[$0].attention, $0, channels: boc[n - 1 - $0]) }
        if let m = config.midBlockType {
            let a = attention(m.attention, n - 1, channels: boc[n - 1])
            mid = m == .unetMidBlock2DCrossAttn || config.addAttention ? a : Attention.none
        } else {
            mid = nil
        }
        resnetDownsample = (0..<n).map { config.resnetDownsample($0) }
        resnetUpsample = (0..<n).map { config.resnetUpsample($0) }
        if config.usesTextTimeEmbedding {
            classEmbedding = .textTime
        } else if config.classEmbedType == "timestep" {
            classEmbedding = .timestep
        } else if config.numClassEmbeds != nil {
            classEmbedding = .table
        }
    }

    static func leaf(_ a: Attention) -> LeafKind {
        if case .legacy(let heads) = a { return .legacyAttention(heads: heads) }
        return .same
    }

    /// The rename table, one row per block.
    public var rules: [LayoutRule] {
        let n = levels
        var r = [LayoutRule("time_embed.0", "time_embedding.linear_1"), LayoutRule("time_embed.2", "time_embedding.linear_2")]
        switch classEmbedding {
        case .timestep:
            r.append(LayoutRule("label_emb.0.0", "class_embedding.linear_1"))
            r.append(LayoutRule("label_emb.0.2", "class_embedding.linear_2"))
        case .table:
            r.append(LayoutRule("label_emb", "class_embedding"))
        case .textTime:
            r.append(LayoutRule("label_emb.0.0", "add_embedding.linear_1"))
            r.append(LayoutRule("label_emb.0.2", "add_embedding.linear_2"))
        case .none:
            break
        }
        r += [LayoutRule("input_blocks.0.0", "conv_in"), LayoutRule("out.0", "conv_norm_out"), LayoutRule("out.2", "conv_out")]
        var k = 1
        for l in 0..<n {
            for j in 0..<layers[l] {
                r.append(LayoutRule("input_blocks.\(k).0", "down_blocks.\(l).resnets.\(j)", .unetResnet))
                if down[l] != .none { r.append(LayoutRule("input_blocks.\(k).1", "down_blocks.\(l).attentions.\(j)", Self.leaf(down[l]))) }
                k += 1
            }
            if l < n - 1 {
                // resblock_updown: the downsampler is ResBlock(down=True) instead of Downsample's `op` conv.
                if resnetDownsample[l] {
                    r.append(LayoutRule("input_blocks.\(k).0", "down_blocks.\(l).downsamplers.0", .unetResnet))
                } else {
                    r.append(LayoutRule("input_blocks.\(k).0.op", "down_blocks.\(l).downsamplers.0.conv"))
                }
                k += 1
            }
        }
        if let mid {
            r.append(LayoutRule("middle_block.0", "mid_block.resnets.0", .unetResnet))
            if mid != .none {
                r.append(LayoutRule("middle_block.1", "mid_block.attentions.0", Self.leaf(mid)))
                r.append(LayoutRule("middle_block.2", "mid_block.resnets.1", .unetResnet))
            } else {
                r.append(LayoutRule("middle_block.1", "mid_block.resnets.1", .unetResnet))
            }
        }
        k = 0
        for b in 0..<n {
            let count = layers[n - 1 - b] + 1
            for j in 0..<count {
                r.append(LayoutRule("output_blocks.\(k).0", "up_blocks.\(b).resnets.\(j)", .unetResnet))
                if up[b] != .none { r.append(LayoutRule("output_blocks.\(k).1", "up_blocks.\(b).attentions.\(j)", Self.leaf(up[b]))) }
                if j == count - 1 && b < n - 1 {
                    r.append(LayoutRule("output_blocks.\(k).\(up[b] == .none ? 1 : 2)", "up_blocks.\(b).upsamplers.0",
                                        resnetUpsample[b] ? .unetResnet : .same))
                }
                k += 1
            }
        }
        return r
    }

    /// From CompVis names (without "model.diffusion_model."): downsamplers sit at input_blocks.(l+1)(L+1).0.op.
    /// `textTime`: the file is an sgm (SDXL) checkpoint, whose label_emb.0 is the added-conditioning MLP.
    public static func detect(compvis keys: [String], textTime: Bool = false) throws -> UNetLayout {
        let inputs = indices(keys, "input_blocks.")
        let outputs = indices(keys, "output_blocks.")
        guard let maxIn = inputs.max(), !outputs.isEmpty else { throw CheckpointError("UNet: no input_blocks / output_blocks tensors") }
        let ops = keys.compactMap { k -> Int? in
            let p = k.split(separator: ".")
            return p.count >= 4 && p[0] == "input_blocks" && p[2] == "0" && p[3] == "op" ? Int(p[1]) : nil
        }
        let L = ops.min().map { $0 - 1 } ?? maxIn
        guard L >= 1, outputs.count % (L + 1) == 0 else {
            throw CheckpointError("UNet: cannot infer the block layout (\(inputs.count) input blocks, \(outputs.count) output blocks)")
        }
        let levels = outputs.count / (L + 1)
        let att = (0..<levels).map { l in keys.contains { $0.hasPrefix("input_blocks.\(1 + l * (L + 1)).1.") } }
        let mid = keys.contains { $0.hasPrefix("middle_block.2.") }
        var layout = UNetLayout(levels: levels, layersPerBlock: L, attention: att, midAttention: mid)
        if textTime && keys.contains("label_emb.0.0.weight") { layout.classEmbedding = .textTime }
        return layout
    }

    /// From diffusers names (without "unet.").
    public static func detect(diffusers keys: [String]) throws -> UNetLayout {
        let levels = indices(keys, "down_blocks.").count
        let L = indices(keys, "down_blocks.0.resnets.").count
        guard levels >= 1, L >= 1 else { throw CheckpointError("UNet: no down_blocks.*.resnets tensors") }
        let att = (0..<levels).map { l in keys.contains { $0.hasPrefix("down_blocks.\(l).attentions.") } }
        var layout = UNetLayout(levels: levels, layersPerBlock: L, attention: att,
                                midAttention: keys.contains { $0.hasPrefix("mid_block.attentions.") })
        if keys.contains("add_embedding.linear_1.weight") { layout.classEmbedding = .textTime }
        return layout
    }
}

/// The UNet table of one UNetConfig, loading a CompVis checkpoint's UNet into our modules.
public struct CompVisUNetKeyMap: Sendable {
    public static let compVisPrefix = "model.diffusion_model."

    public let layout: UNetLayout
    public let mapping: ComponentMapping
    /// openaimodel's use_new_attention_order (QKVAttention) instead of QKVAttentionLegacy.
    public let newAttentionOrder: Bool

    public init(config: UNetConfig, newAttentionOrder: Bool = false) throws {
        layout = try UNetLayout(config: config)
        mapping = ComponentMapping(compvisPrefix: Self.compVisPrefix, component: "unet", rules: layout.rules)
        self.newAttentionOrder = newAttentionOrder
    }

    /// Our names for a CompVis key given without "model.diffusion_model." (three for a legacy `qkv` tensor: to_q,
    /// to_k, to_v), with the row it matched; nil when it is not a UNet key.
    public func diffusersNames(_ key: String) -> (names: [String], rule: LayoutRule)? {
        guard let (rule, leaf) = mapping.rule(compvis: key) else { return nil }
        if case .legacyAttention = rule.leaf, leaf.hasPrefix("qkv.") {
            let suffix = leaf.dropFirst(4)
            return (["to_q", "to_k", "to_v"].map { "\(rule.diffusers).\($0).\(suffix)" }, rule)
        }
        guard let (name, _) = mapping.toDiffusers(key, shape: []) else { return nil }
        return ([name], rule)
    }

    /// Our name for a CompVis key (without "model.diffusion_model."); nil for non-UNet keys and fused qkv tensors.
    public func diffusersName(_ key: String) -> String? {
        guard let r = diffusersNames(key), r.names.count == 1 else { return nil }
        return r.names[0]
    }

    /// The CompVis name (without "model.diffusion_model.") of one of our parameter names (nil for split q/k/v).
    public func compVisName(_ name: String) -> String? { mapping.toCompVis(name, shape: []).map(\.0) }

    /// The UNet tensors of a CompVis checkpoint that rename one to one (everything but fused qkv), under our names.
    public func map(_ records: [String: TensorRecord]) -> [String: TensorRecord] {
        var out: [String: TensorRecord] = [:]
        for (key, r) in records where key.hasPrefix(Self.compVisPrefix) {
            if let name = diffusersName(String(key.dropFirst(Self.compVisPrefix.count))) { out[name] = r }
        }
        return out
    }

    /// q, k, v of a fused qkv weight (3C, C, 1) or bias (3C), each (C, C) or (C).
    public func splitQKV(_ t: Tensor, heads: Int) throws -> [Tensor] {
        let c3 = t.shape.first ?? 0
        let rest = t.count / max(c3, 1)
        guard c3 > 0, c3 % 3 == 0, heads > 0, (c3 / 3) % heads == 0 else {
            throw UNetError("CompVis qkv tensor \(t.shape) cannot be split into q, k, v of \(heads) heads")
        }
        let c = c3 / 3
        let grouped = newAttentionOrder ? t.reshaped([1, 3, c, rest]) : t.reshaped([heads, 3, c / heads, rest])
        return (0..<3).map { grouped.narrow(1, $0, 1).contiguous().reshaped(rest == 1 ? [c] : [c, rest]) }
    }

    /// Loads the UNet of a CompVis checkpoint into `model` (strict: every parameter must be found with a matching
    /// shape), splitting legacy qkv tensors. Returns the model.diffusion_model.* keys that were not used.
    @discardableResult
    public func load(_ records: [String: TensorRecord], into model: Module) throws -> [String] {
        var sources: [String: (key: String, record: TensorRecord, part: Int?, heads: Int)] = [:]
        for (key, r) in records where key.hasPrefix(Self.compVisPrefix) {
            guard let (names, rule) = diffusersNames(String(key.dropFirst(Self.compVisPrefix.count))) else { continue }
            if names.count == 3, case .legacyAttention(let heads) = rule.leaf {
                for (i, n) in names.enumerated() { sources[n] = (key, r, i, heads) }
            } else {
                sources[names[0]] = (key, r, nil, 0)
            }
        }
        var used = Set<String>()
        var problems: [String] = []
        var splitCache: [String: [Tensor]] = [:]
        let storage = WeightStorage.current
        let lower = storage == .float32 ? [] : model.lowerPrecisionWeights(embeddings: storage == .asStored)
        for (name, param) in model.namedParameters {
            guard let src = sources[name] else {
                problems.append("missing \(name)")
                continue
            }
            used.insert(src.key)
            let t: Tensor
            if let part = src.part {
                let parts = try splitCache[src.key] ?? splitQKV(src.record.tensor().float32(), heads: src.heads)
                splitCache[src.key] = parts
                t = parts[part]
            } else {
                let s = { (shape: [Int]) in shape.filter { $0 != 1 } }
                guard s(src.record.shape) == s(param.shape) else {
                    problems.append("\(name): expected \(param.shape), found \(src.record.shape)")
                    continue
                }
                guard src.record.elementCount == param.count else {
                    problems.append("\(name): expected \(param.shape), found \(src.record.shape)")
                    continue
                }
                try param.load(src.record, storage: storage, lowerPrecision: lower.contains(ObjectIdentifier(param)))
                continue
            }
            guard t.count == param.count else {
                problems.append("\(name): expected \(param.shape), found \(t.shape)")
                continue
            }
            if storage == .float32 { param.assign(t.reshaped(param.shape)) } else { param.rebind(to: t.contiguous().reshaped(param.shape)) }
        }
        guard problems.isEmpty else {
            throw UNetError("cannot load the CompVis UNet: " + problems.prefix(20).joined(separator: "; ") + (problems.count > 20 ? "; ..." : ""))
        }
        return records.keys.filter { $0.hasPrefix(Self.compVisPrefix) && !used.contains($0) }.sorted()
    }
}

extension UNet2DConditionModel {
    /// The UNet of a CompVis single-file checkpoint (model.diffusion_model.*) for the architecture in `config`.
    public convenience init(config: UNetConfig, compVisCheckpoint records: [String: TensorRecord],
                            newAttentionOrder: Bool = false) throws {
        try self.init(config: config)
        try CompVisUNetKeyMap(config: config, newAttentionOrder: newAttentionOrder).load(records, into: self)
    }
}
