import Checkpoints
import DiffusersBlocks
import NeuralNetwork
import TensorCore

// Name mapping between CompVis ldm/modules/diffusionmodules/openaimodel.py `UNetModel` state dicts
// (model.diffusion_model.input_blocks.N.M..., middle_block, output_blocks, time_embed, label_emb, out) and diffusers
// UNet2DConditionModel / UNet2DModel names, generated from the config as diffusers loaders/single_file_utils.py
// `convert_ldm_unet_checkpoint` does: a table of block prefixes, plus the resnet leaf renames of
// `update_unet_resnet_ldm_to_diffusers`. SpatialTransformer leaves have the same names on both sides. With
// resblock_updown the resamplers are ResBlocks (input_blocks.N.0 / output_blocks.N.(1|2) with resnet leaves) mapped
// to the ResnetBlock2D(down/up=True) at downsamplers.0 / upsamplers.0 (diffusers' converter has no rule for them). Legacy
// `AttentionBlock`s (unconditional LDMs) store q, k, v as one 1-d conv `qkv` split per head
// (QKVAttentionLegacy: heads first) or per q/k/v (QKVAttention, use_new_attention_order); `load` splits them.

public struct CompVisUNetKeyMap: Sendable {
    public static let compVisPrefix = "model.diffusion_model."

    public enum Kind: Equatable, Sendable { case plain, resnet, legacyAttention(heads: Int) }
    public struct Entry: Equatable, Sendable {
        public let compvis: String, diffusers: String, kind: Kind
    }
    /// One row per block; longest prefixes first.
    public let entries: [Entry]
    /// openaimodel's use_new_attention_order (QKVAttention) instead of QKVAttentionLegacy.
    public let newAttentionOrder: Bool

    static let resnetLeaves = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("out_layers.0", "norm2"),
                               ("out_layers.3", "conv2"), ("emb_layers.1", "time_emb_proj"), ("skip_connection", "conv_shortcut")]
    static let attentionLeaves = [("norm", "group_norm"), ("proj_out", "to_out.0")]

    public init(config: UNetConfig, newAttentionOrder: Bool = false) throws {
        try config.validate()
        self.newAttentionOrder = newAttentionOrder
        let n = config.blockOutChannels.count, boc = config.blockOutChannels
        var e: [Entry] = []
        func add(_ c: String, _ d: String, _ kind: Kind = .plain) { e.append(Entry(compvis: c, diffusers: d, kind: kind)) }
        func attention(_ kind: BlockAttention?, _ i: Int, channels: Int) -> Kind? {
            switch kind {
            case .crossAttention?: return .plain
            case .spatial?: return .legacyAttention(heads: channels / config.legacyHeadDim(i, channels: channels))
            case nil: return nil
            }
        }
        add("time_embed.0", "time_embedding.linear_1"); add("time_embed.2", "time_embedding.linear_2")
        if config.classEmbedType == "timestep" {
            add("label_emb.0.0", "class_embedding.linear_1"); add("label_emb.0.2", "class_embedding.linear_2")
        } else if config.numClassEmbeds != nil {
            add("label_emb", "class_embedding")
        }
        add("input_blocks.0.0", "conv_in"); add("out.0", "conv_norm_out"); add("out.2", "conv_out")
        var k = 1
        for i in 0..<n {
            let attn = attention(config.downBlockTypes[i].attention, i, channels: boc[i])
            for j in 0..<config.layersPerBlock[i] {
                add("input_blocks.\(k).0", "down_blocks.\(i).resnets.\(j)", .resnet)
                if let attn { add("input_blocks.\(k).1", "down_blocks.\(i).attentions.\(j)", attn) }
                k += 1
            }
            if i < n - 1 {
                // resblock_updown: the downsampler is ResBlock(down=True) instead of Downsample's `op` conv.
                if config.resnetDownsample(i) { add("input_blocks.\(k).0", "down_blocks.\(i).downsamplers.0", .resnet) }
                else { add("input_blocks.\(k).0.op", "down_blocks.\(i).downsamplers.0.conv") }
                k += 1
            }
        }
        if let mid = config.midBlockType {
            add("middle_block.0", "mid_block.resnets.0", .resnet)
            if let attn = attention(mid.attention, n - 1, channels: boc[n - 1]), mid == .unetMidBlock2DCrossAttn || config.addAttention {
                add("middle_block.1", "mid_block.attentions.0", attn)
                add("middle_block.2", "mid_block.resnets.1", .resnet)
            } else {
                add("middle_block.1", "mid_block.resnets.1", .resnet)
            }
        }
        k = 0
        for i in 0..<n {
            let out = boc[n - 1 - i], layers = config.layersPerBlock[n - 1 - i] + 1
            let attn = attention(config.upBlockTypes[i].attention, i, channels: out)
            for j in 0..<layers {
                add("output_blocks.\(k).0", "up_blocks.\(i).resnets.\(j)", .resnet)
                if let attn { add("output_blocks.\(k).1", "up_blocks.\(i).attentions.\(j)", attn) }
                if j == layers - 1 && i < n - 1 {
                    add("output_blocks.\(k).\(attn == nil ? 1 : 2)", "up_blocks.\(i).upsamplers.0", config.resnetUpsample(i) ? .resnet : .plain)
                }
                k += 1
            }
        }
        entries = e.sorted { $0.compvis.count > $1.compvis.count }
    }

    func leaves(_ kind: Kind) -> [(String, String)] {
        switch kind {
        case .plain: return []
        case .resnet: return Self.resnetLeaves
        case .legacyAttention: return Self.attentionLeaves
        }
    }

    /// Our names for a CompVis key given without "model.diffusion_model." (three for a legacy `qkv` tensor: to_q,
    /// to_k, to_v), with the entry it matched; nil when it is not a UNet key.
    public func diffusersNames(_ key: String) -> (names: [String], entry: Entry)? {
        for entry in entries where key.hasPrefix(entry.compvis + ".") {
            var leaf = String(key.dropFirst(entry.compvis.count + 1))
            if case .legacyAttention = entry.kind, leaf.hasPrefix("qkv.") {
                let suffix = leaf.dropFirst(4)
                return (["to_q", "to_k", "to_v"].map { "\(entry.diffusers).\($0).\(suffix)" }, entry)
            }
            if let r = leaves(entry.kind).first(where: { leaf.hasPrefix($0.0 + ".") }) { leaf = r.1 + leaf.dropFirst(r.0.count) }
            return (["\(entry.diffusers).\(leaf)"], entry)
        }
        return nil
    }

    /// Our name for a CompVis key (without "model.diffusion_model."); nil for non-UNet keys and fused qkv tensors.
    public func diffusersName(_ key: String) -> String? {
        guard let r = diffusersNames(key), r.names.count == 1 else { return nil }
        return r.names[0]
    }

    /// The CompVis name (without "model.diffusion_model.") of one of our parameter names (nil for split q/k/v).
    public func compVisName(_ name: String) -> String? {
        for entry in entries.sorted(by: { $0.diffusers.count > $1.diffusers.count }) where name.hasPrefix(entry.diffusers + ".") {
            var leaf = String(name.dropFirst(entry.diffusers.count + 1))
            if let r = leaves(entry.kind).first(where: { leaf.hasPrefix($0.1 + ".") }) { leaf = r.0 + leaf.dropFirst(r.1.count) }
            return entry.compvis + "." + leaf
        }
        return nil
    }

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
        let c3 = t.shape.first ?? 0, rest = t.count / max(c3, 1)
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
            guard let (names, entry) = diffusersNames(String(key.dropFirst(Self.compVisPrefix.count))) else { continue }
            if names.count == 3, case .legacyAttention(let heads) = entry.kind {
                for (i, n) in names.enumerated() { sources[n] = (key, r, i, heads) }
            } else { sources[names[0]] = (key, r, nil, 0) }
        }
        var used = Set<String>(), problems: [String] = [], splitCache: [String: [Tensor]] = [:]
        for (name, param) in model.namedParameters {
            guard let src = sources[name] else { problems.append("missing \(name)"); continue }
            used.insert(src.key)
            var t: Tensor
            if let part = src.part {
                let parts = try splitCache[src.key] ?? splitQKV(src.record.tensor().float32(), heads: src.heads)
                splitCache[src.key] = parts
                t = parts[part]
            } else {
                let s = { (shape: [Int]) in shape.filter { $0 != 1 } }
                guard s(src.record.shape) == s(param.shape) else { problems.append("\(name): expected \(param.shape), found \(src.record.shape)"); continue }
                t = try src.record.tensor()
            }
            guard t.count == param.count else { problems.append("\(name): expected \(param.shape), found \(t.shape)"); continue }
            param.assign(t.reshaped(param.shape))
        }
        guard problems.isEmpty else {
            throw UNetError("cannot load the CompVis UNet: " + problems.prefix(20).joined(separator: "; ") + (problems.count > 20 ? "; ..." : ""))
        }
        return records.keys.filter { $0.hasPrefix(Self.compVisPrefix) && !used.contains($0) }.sorted()
    }
}
