// The declarative rename table shared by every CompVis component (UNetTable.swift, VAETable.swift, BERTTable.swift,
// CLIPTable.swift; OpenCLIPTable.swift for the fused in_proj): rows of (CompVis block prefix, diffusers block prefix,
// leaf renames), as diffusers/loaders/single_file_utils.py writes its converters (convert_ldm_unet_checkpoint,
// convert_ldm_vae_checkpoint, DIFFUSERS_TO_LDM_MAPPING) and scripts/convert_diffusers_to_original_stable_diffusion.py
// reverses them. A name is renamed by its longest matching block prefix, then the leaf table of that row; the same
// rows serve loading (CompVis checkpoint -> our modules) and `ldm convert` in both directions.
import Checkpoints
import Conditioning
import Foundation

/// How the names below a matched prefix are renamed.
public enum LeafKind: Equatable, Sendable {
    case same, unetResnet, vaeResnet, vaeAttention, bertAttention
    /// openaimodel.py AttentionBlock (unconditional / class-conditional LDMs): `qkv` is one 1-d conv holding q, k, v
    /// (QKVAttentionLegacy: grouped per head), split on load (UNetTable.swift).
    case legacyAttention(heads: Int)

    /// (CompVis leaf head, diffusers leaf head); `update_unet_resnet_ldm_to_diffusers`,
    /// `update_vae_resnet_ldm_to_diffusers`, `update_vae_attentions_ldm_to_diffusers`.
    public var renames: [(compvis: String, diffusers: String)] {
        switch self {
        case .same:
            return []
        case .unetResnet:
            return [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("out_layers.0", "norm2"),
                    ("out_layers.3", "conv2"), ("emb_layers.1", "time_emb_proj"), ("skip_connection", "conv_shortcut")]
        case .vaeResnet:
            return [("nin_shortcut", "conv_shortcut")]
        case .vaeAttention:
            return [("norm", "group_norm"), ("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")]
        // x_transformer.py Attention (to_out is a plain Linear: on_attn=False) <-> LDMBertAttention.
        case .bertAttention:
            return [("to_q", "q_proj"), ("to_k", "k_proj"), ("to_v", "v_proj"), ("to_out", "out_proj")]
        case .legacyAttention:
            return [("norm", "group_norm"), ("proj_out", "to_out.0")]
        }
    }

    /// Leaves stored as 1x1 convolutions by CompVis and as Linear by diffusers (`conv_attn_to_linear`).
    var convAsLinear: Set<String> { self == .vaeAttention ? ["q.weight", "k.weight", "v.weight", "proj_out.weight"] : [] }
}

/// One row of the table: everything under `compvis.` corresponds to everything under `diffusers.`.
public struct LayoutRule: Equatable, Sendable {
    public let compvis: String
    public let diffusers: String
    public let leaf: LeafKind
    public init(_ compvis: String, _ diffusers: String, _ leaf: LeafKind = .same) {
        self.compvis = compvis
        self.diffusers = diffusers
        self.leaf = leaf
    }
}

/// A tensor under its output name and shape (same element count and bytes as `source`).
public struct MappedTensor {
    public let name: String
    public let shape: [Int]
    public let source: TensorRecord
}

/// Distinct integers that follow `prefix` in `keys`.
func indices(_ keys: some Sequence<String>, _ prefix: String) -> Set<Int> {
    var s = Set<Int>()
    for k in keys where k.hasPrefix(prefix) {
        if let seg = k.dropFirst(prefix.count).split(separator: ".", maxSplits: 1).first, let n = Int(seg) { s.insert(n) }
    }
    return s
}

/// One model of the pipeline: CompVis prefix, diffusers component folder, and its rule table
/// (nil: the names after the prefix are identical, as for SD1's CLIP text model).
public struct ComponentMapping: Sendable {
    public let compvisPrefix: String
    public let component: String
    public let rules: [LayoutRule]?
    let byCompVis: [String: LayoutRule]
    let byDiffusers: [String: LayoutRule]

    public init(compvisPrefix: String, component: String, rules: [LayoutRule]?) {
        self.compvisPrefix = compvisPrefix
        self.component = component
        self.rules = rules
        byCompVis = Dictionary((rules ?? []).map { ($0.compvis, $0) }, uniquingKeysWith: { a, _ in a })
        byDiffusers = Dictionary((rules ?? []).map { ($0.diffusers, $0) }, uniquingKeysWith: { a, _ in a })
    }

    /// Longest dotted prefix of `key` present in `table`, and the rest after it.
    static func match(_ key: String, _ table: [String: LayoutRule]) -> (LayoutRule, String)? {
        let parts = key.split(separator: ".", omittingEmptySubsequences: false)
        for n in stride(from: parts.count - 1, through: 1, by: -1) {
            if let r = table[parts[0..<n].joined(separator: ".")] { return (r, parts[n...].joined(separator: ".")) }
        }
        return nil
    }

    static func renameLeaf(_ leaf: String, _ pairs: [(String, String)]) -> String {
        for (from, to) in pairs where leaf.hasPrefix(from + ".") { return to + leaf.dropFirst(from.count) }
        return leaf
    }

    /// Names without a rule table are the same on both sides, except that the CLIP text model's are written in
    /// their canonical spelling (`CLIPTextKeys.canonical`) whichever spelling came in.
    func sameName(_ key: String) -> String { component == "text_encoder" ? CLIPTextKeys.canonical(key) : key }

    /// The row covering `key` (without the CompVis prefix) and the leaf after its block prefix.
    public func rule(compvis key: String) -> (rule: LayoutRule, leaf: String)? {
        ComponentMapping.match(key, byCompVis).map { (rule: $0.0, leaf: $0.1) }
    }

    /// `key` without the CompVis prefix -> diffusers key (without the component) and shape.
    public func toDiffusers(_ key: String, shape: [Int]) -> (String, [Int])? {
        guard rules != nil else { return (sameName(key), shape) }
        guard let (rule, leaf) = ComponentMapping.match(key, byCompVis) else { return nil }
        let newLeaf = ComponentMapping.renameLeaf(leaf, rule.leaf.renames.map { ($0.compvis, $0.diffusers) })
        var s = shape
        if rule.leaf.convAsLinear.contains(leaf), s.count == 4, s[2] == 1, s[3] == 1 { s = Array(s[0..<2]) }
        return (rule.diffusers + "." + newLeaf, s)
    }

    /// diffusers key (without the component) -> CompVis key (without the prefix) and shape.
    public func toCompVis(_ key: String, shape: [Int]) -> (String, [Int])? {
        guard rules != nil else { return (sameName(key), shape) }
        guard let (rule, leaf) = ComponentMapping.match(key, byDiffusers) else { return nil }
        let newLeaf = ComponentMapping.renameLeaf(leaf, rule.leaf.renames.map { ($0.diffusers, $0.compvis) })
        var s = shape
        if rule.leaf.convAsLinear.contains(newLeaf), s.count == 2 { s += [1, 1] }
        return (rule.compvis + "." + newLeaf, s)
    }
}
