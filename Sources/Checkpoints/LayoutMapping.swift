// Declarative name mapping between CompVis single-file checkpoints (ldm/modules/diffusionmodules/
// openaimodel.py UNetModel, ldm/modules/diffusionmodules/model.py Encoder/Decoder, FrozenCLIPEmbedder)
// and diffusers folders, following diffusers/loaders/single_file_utils.py (convert_ldm_unet_checkpoint,
// convert_ldm_vae_checkpoint, convert_ldm_clip_checkpoint, DIFFUSERS_TO_LDM_MAPPING; LDM-BERT after
// pipelines/stable_diffusion/convert_from_ckpt.py convert_ldm_bert_checkpoint). The rule table
// is generated from a small layout description (levels, resnets per level, which levels have attention)
// and is applied in both directions: longest CompVis/diffusers prefix, then a leaf-rename table.
import Foundation

/// How the names below a matched prefix are renamed.
public enum LeafKind: Sendable {
    case same, unetResnet, vaeResnet, vaeAttention, bertAttention

    /// (CompVis leaf head, diffusers leaf head); `update_unet_resnet_ldm_to_diffusers`,
    /// `update_vae_resnet_ldm_to_diffusers`, `update_vae_attentions_ldm_to_diffusers`.
    public var renames: [(compvis: String, diffusers: String)] {
        switch self {
        case .same: return []
        case .unetResnet: return [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("out_layers.0", "norm2"),
                                  ("out_layers.3", "conv2"), ("emb_layers.1", "time_emb_proj"), ("skip_connection", "conv_shortcut")]
        case .vaeResnet: return [("nin_shortcut", "conv_shortcut")]
        case .vaeAttention: return [("norm", "group_norm"), ("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")]
        // x_transformer.py Attention (to_out is a plain Linear: on_attn=False) <-> LDMBertAttention.
        case .bertAttention: return [("to_q", "q_proj"), ("to_k", "k_proj"), ("to_v", "v_proj"), ("to_out", "out_proj")]
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
        self.compvis = compvis; self.diffusers = diffusers; self.leaf = leaf
    }
}

/// openaimodel.py UNetModel <-> UNet2DConditionModel block structure.
public struct UNetLayout: Equatable, Sendable {
    public var levels: Int
    public var layersPerBlock: Int
    /// Per down level (diffusers order); up level b mirrors down level `levels - 1 - b`.
    public var attention: [Bool]
    public var midAttention: Bool

    public init(levels: Int, layersPerBlock: Int, attention: [Bool], midAttention: Bool = true) {
        self.levels = levels; self.layersPerBlock = layersPerBlock; self.attention = attention; self.midAttention = midAttention
    }

    public var rules: [LayoutRule] {
        let L = layersPerBlock
        var r = [LayoutRule("time_embed.0", "time_embedding.linear_1"), LayoutRule("time_embed.2", "time_embedding.linear_2"),
                 LayoutRule("input_blocks.0.0", "conv_in"), LayoutRule("out.0", "conv_norm_out"), LayoutRule("out.2", "conv_out")]
        for l in 0..<levels {
            for j in 0..<L {
                let idx = 1 + l * (L + 1) + j
                r.append(LayoutRule("input_blocks.\(idx).0", "down_blocks.\(l).resnets.\(j)", .unetResnet))
                if attention[l] { r.append(LayoutRule("input_blocks.\(idx).1", "down_blocks.\(l).attentions.\(j)")) }
            }
            if l < levels - 1 { r.append(LayoutRule("input_blocks.\((l + 1) * (L + 1)).0.op", "down_blocks.\(l).downsamplers.0.conv")) }
        }
        r.append(LayoutRule("middle_block.0", "mid_block.resnets.0", .unetResnet))
        if midAttention {
            r.append(LayoutRule("middle_block.1", "mid_block.attentions.0"))
            r.append(LayoutRule("middle_block.2", "mid_block.resnets.1", .unetResnet))
        } else {
            r.append(LayoutRule("middle_block.1", "mid_block.resnets.1", .unetResnet))
        }
        for b in 0..<levels {
            let att = attention[levels - 1 - b]
            for j in 0...L {
                let idx = b * (L + 1) + j
                r.append(LayoutRule("output_blocks.\(idx).0", "up_blocks.\(b).resnets.\(j)", .unetResnet))
                if att { r.append(LayoutRule("output_blocks.\(idx).1", "up_blocks.\(b).attentions.\(j)")) }
            }
            if b < levels - 1 {
                r.append(LayoutRule("output_blocks.\(b * (L + 1) + L).\(att ? 2 : 1).conv", "up_blocks.\(b).upsamplers.0.conv"))
            }
        }
        return r
    }

    /// From CompVis names (without "model.diffusion_model."): downsamplers sit at input_blocks.(l+1)(L+1).0.op.
    public static func detect(compvis keys: [String]) throws -> UNetLayout {
        let inputs = indices(keys, "input_blocks."), outputs = indices(keys, "output_blocks.")
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
        return UNetLayout(levels: levels, layersPerBlock: L, attention: att, midAttention: mid)
    }

    /// From diffusers names (without "unet.").
    public static func detect(diffusers keys: [String]) throws -> UNetLayout {
        let levels = indices(keys, "down_blocks.").count
        let L = indices(keys, "down_blocks.0.resnets.").count
        guard levels >= 1, L >= 1 else { throw CheckpointError("UNet: no down_blocks.*.resnets tensors") }
        let att = (0..<levels).map { l in keys.contains { $0.hasPrefix("down_blocks.\(l).attentions.") } }
        return UNetLayout(levels: levels, layersPerBlock: L, attention: att,
                          midAttention: keys.contains { $0.hasPrefix("mid_block.attentions.") })
    }
}

/// ldm/modules/diffusionmodules/model.py Encoder/Decoder <-> AutoencoderKL. Levels whose resolution is in the
/// ddconfig's attn_resolutions hold an AttnBlock after every resnet (`down.N.attn.M`, `up.N.attn.M`), diffusers'
/// AttnDownEncoderBlock2D / AttnUpDecoderBlock2D `attentions.M`.
public struct VAELayout: Equatable, Sendable {
    public var levels: Int
    /// Encoder resnets per level (the decoder has one more).
    public var layersPerBlock: Int
    /// Per encoder level (CompVis down.i = diffusers down_blocks.i): attention after every resnet.
    public var encoderAttention: [Bool]
    /// Per decoder block in diffusers order (up_blocks.i = CompVis up.(levels - 1 - i)).
    public var decoderAttention: [Bool]
    public init(levels: Int, layersPerBlock: Int, encoderAttention: [Bool]? = nil, decoderAttention: [Bool]? = nil) {
        self.levels = levels; self.layersPerBlock = layersPerBlock
        self.encoderAttention = encoderAttention ?? Array(repeating: false, count: levels)
        self.decoderAttention = decoderAttention ?? Array(repeating: false, count: levels)
    }

    public var rules: [LayoutRule] {
        var r = ["encoder.conv_in", "encoder.conv_out", "decoder.conv_in", "decoder.conv_out", "quant_conv", "post_quant_conv"]
            .map { LayoutRule($0, $0) }
        for side in ["encoder", "decoder"] {
            r.append(LayoutRule("\(side).norm_out", "\(side).conv_norm_out"))
            r.append(LayoutRule("\(side).mid.block_1", "\(side).mid_block.resnets.0", .vaeResnet))
            r.append(LayoutRule("\(side).mid.block_2", "\(side).mid_block.resnets.1", .vaeResnet))
            r.append(LayoutRule("\(side).mid.attn_1", "\(side).mid_block.attentions.0", .vaeAttention))
        }
        for i in 0..<levels {
            for j in 0..<layersPerBlock {
                r.append(LayoutRule("encoder.down.\(i).block.\(j)", "encoder.down_blocks.\(i).resnets.\(j)", .vaeResnet))
                if encoderAttention[i] {
                    r.append(LayoutRule("encoder.down.\(i).attn.\(j)", "encoder.down_blocks.\(i).attentions.\(j)", .vaeAttention))
                }
            }
            if i < levels - 1 { r.append(LayoutRule("encoder.down.\(i).downsample.conv", "encoder.down_blocks.\(i).downsamplers.0.conv")) }
            let b = levels - 1 - i   // decoder.up is stored in reverse order
            for j in 0...layersPerBlock {
                r.append(LayoutRule("decoder.up.\(b).block.\(j)", "decoder.up_blocks.\(i).resnets.\(j)", .vaeResnet))
                if decoderAttention[i] {
                    r.append(LayoutRule("decoder.up.\(b).attn.\(j)", "decoder.up_blocks.\(i).attentions.\(j)", .vaeAttention))
                }
            }
            if b > 0 { r.append(LayoutRule("decoder.up.\(b).upsample.conv", "decoder.up_blocks.\(i).upsamplers.0.conv")) }
        }
        return r
    }

    public static func detect(compvis keys: [String]) throws -> VAELayout {
        var layout = try make(indices(keys, "encoder.down.").count, indices(keys, "encoder.down.0.block.").count)
        let n = layout.levels
        layout.encoderAttention = (0..<n).map { i in keys.contains { $0.hasPrefix("encoder.down.\(i).attn.") } }
        layout.decoderAttention = (0..<n).map { i in keys.contains { $0.hasPrefix("decoder.up.\(n - 1 - i).attn.") } }
        return layout
    }

    public static func detect(diffusers keys: [String]) throws -> VAELayout {
        var layout = try make(indices(keys, "encoder.down_blocks.").count, indices(keys, "encoder.down_blocks.0.resnets.").count)
        layout.encoderAttention = (0..<layout.levels).map { i in keys.contains { $0.hasPrefix("encoder.down_blocks.\(i).attentions.") } }
        layout.decoderAttention = (0..<layout.levels).map { i in keys.contains { $0.hasPrefix("decoder.up_blocks.\(i).attentions.") } }
        return layout
    }

    static func make(_ levels: Int, _ L: Int) throws -> VAELayout {
        guard levels >= 1, L >= 1 else { throw CheckpointError("VAE: no encoder down-block resnets found") }
        return VAELayout(levels: levels, layersPerBlock: L)
    }
}

/// CompVis BERTEmbedder (ldm/modules/encoders/modules.py) = x_transformer.py TransformerWrapper(num_tokens=vocab_size,
/// max_seq_len, attn_layers=Encoder(dim=n_embed, depth=n_layer)) under `cond_stage_model.transformer.` <->
/// diffusers LDMBertModel (`bert/`), as convert_ldm_bert_checkpoint copies it. AttentionLayers builds
/// layer_types ('a', 'f') * depth, each `layers.N` a ModuleList [norm, block, Residual()] (pre_norm: norm -> block ->
/// + residual), so Encoder layer i is CompVis layers 2i (LayerNorm + Attention, no q/k/v bias) and 2i+1 (LayerNorm +
/// FeedForward: net.0 = Sequential(Linear, nn.GELU()) since glu=False, net.1 Dropout, net.2 Linear).
/// TransformerWrapper: token_emb, pos_emb.emb (AbsolutePositionalEmbedding, added unscaled), final `norm`; `to_logits`
/// exists in every checkpoint but BERTEmbedder calls the wrapper with return_embeddings=True, which skips it
/// (`unusedByEmbedder`): it is still carried (diffusers' LDMBertModel has it too) but loading does not require it.
public struct BERTLayout: Equatable, Sendable {
    public var layers: Int
    public static let compvisPrefix = "cond_stage_model.transformer."
    /// Tensors BERTEmbedder never reads (diffusers names; the same under CompVis names).
    public static let unusedByEmbedder: Set<String> = ["to_logits.weight", "to_logits.bias"]

    public init(layers: Int) { self.layers = layers }

    public var rules: [LayoutRule] {
        var r = [LayoutRule("token_emb", "model.embed_tokens"), LayoutRule("pos_emb.emb", "model.embed_positions"),
                 LayoutRule("norm", "model.layer_norm"), LayoutRule("to_logits", "to_logits")]
        for i in 0..<layers {
            let a = "attn_layers.layers.\(2 * i)", f = "attn_layers.layers.\(2 * i + 1)", d = "model.layers.\(i)"
            r += [LayoutRule(a + ".0", d + ".self_attn_layer_norm"), LayoutRule(a + ".1", d + ".self_attn", .bertAttention),
                  LayoutRule(f + ".0", d + ".final_layer_norm"), LayoutRule(f + ".1.net.0.0", d + ".fc1"),
                  LayoutRule(f + ".1.net.2", d + ".fc2")]
        }
        return r
    }

    /// Every tensor of LDMBertModel (diffusers names): a mapped name outside this set has no counterpart (e.g. GLU
    /// feed-forwards, memory key/values, ReZero gains of x-transformers options BERTEmbedder does not use).
    public var diffusersKeys: Set<String> {
        var s: Set<String> = ["model.embed_tokens.weight", "model.embed_positions.weight", "model.layer_norm.weight",
                              "model.layer_norm.bias", "to_logits.weight", "to_logits.bias"]
        for i in 0..<layers {
            let d = "model.layers.\(i)."
            for k in ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.out_proj.weight",
                      "self_attn.out_proj.bias", "self_attn_layer_norm.weight", "self_attn_layer_norm.bias", "fc1.weight", "fc1.bias",
                      "fc2.weight", "fc2.bias", "final_layer_norm.weight", "final_layer_norm.bias"] { s.insert(d + k) }
        }
        return s
    }

    /// Whether CompVis names (without `compvisPrefix`) are an x-transformers TransformerWrapper rather than a CLIP model.
    public static func isBERTEmbedder(compvis keys: [String]) -> Bool { keys.contains("token_emb.weight") }

    /// From CompVis names without `compvisPrefix`: attention sub-layers at even indices, feed-forwards at odd ones.
    public static func detect(compvis keys: [String]) throws -> BERTLayout {
        let n = indices(keys, "attn_layers.layers.")
        guard !n.isEmpty, n.count % 2 == 0, n == Set(0..<n.count) else {
            throw CheckpointError("BERTEmbedder: attn_layers.layers.* are not an ('a', 'f') * depth Encoder (\(n.count) sub-layers)")
        }
        for i in stride(from: 0, to: n.count, by: 2) where !keys.contains("attn_layers.layers.\(i).1.to_q.weight") {
            throw CheckpointError("BERTEmbedder: attn_layers.layers.\(i) is not an attention sub-layer (no to_q)")
        }
        return BERTLayout(layers: n.count / 2)
    }

    /// From diffusers names (without "bert.").
    public static func detect(diffusers keys: [String]) throws -> BERTLayout {
        let n = indices(keys, "model.layers.")
        guard !n.isEmpty, n == Set(0..<n.count) else { throw CheckpointError("LDMBertModel: no model.layers.* tensors") }
        return BERTLayout(layers: n.count)
    }

    public var mapping: ComponentMapping { ComponentMapping(compvisPrefix: Self.compvisPrefix, component: "bert", rules: rules) }

    /// CompVis tensors (full names) -> LDMBertModel names; names without a counterpart are returned in `unmapped`.
    public static func toDiffusers(_ tensors: [String: TensorRecord]) throws -> (layout: BERTLayout, mapped: [MappedTensor], unmapped: [String]) {
        let names = tensors.keys.filter { $0.hasPrefix(compvisPrefix) }.sorted()
        let layout = try detect(compvis: names.map { String($0.dropFirst(compvisPrefix.count)) })
        let m = layout.mapping, keys = layout.diffusersKeys
        var out: [MappedTensor] = [], unmapped: [String] = []
        for name in names {
            guard let r = tensors[name], let (k, s) = m.toDiffusers(String(name.dropFirst(compvisPrefix.count)), shape: r.shape),
                  keys.contains(k) else { unmapped.append(name); continue }
            out.append(MappedTensor(name: k, shape: s, source: r))
        }
        return (layout, out, unmapped)
    }
}

/// Distinct integers that follow `prefix` in `keys`.
func indices(_ keys: [String], _ prefix: String) -> Set<Int> {
    var s = Set<Int>()
    for k in keys where k.hasPrefix(prefix) {
        if let seg = k.dropFirst(prefix.count).split(separator: ".", maxSplits: 1).first, let n = Int(seg) { s.insert(n) }
    }
    return s
}

/// transformers CLIPTextModel parameter names: transformers < 5 (and every released SD file, CompVis
/// `cond_stage_model.transformer.text_model.*` and diffusers `text_encoder/`) write them under "text_model.";
/// transformers 5 `save_pretrained` writes `embeddings.*`, `encoder.*`, `final_layer_norm.*` without it.
public enum CLIPTextKeys {
    public static let canonicalPrefix = "text_model."
    static let heads = ["embeddings.", "encoder.", "final_layer_norm."]

    /// `key` in the canonical spelling (with "text_model."); other keys unchanged.
    public static func canonical(_ key: String) -> String {
        heads.contains { key.hasPrefix($0) } ? canonicalPrefix + key : key
    }

    /// Whether CLIPTextModel keys use transformers 5's spelling (no "text_model.").
    public static func lacksPrefix(_ keys: some Sequence<String>) -> Bool {
        keys.contains { k in heads.contains { k.hasPrefix($0) } }
    }
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
        self.compvisPrefix = compvisPrefix; self.component = component; self.rules = rules
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

/// A Stable Diffusion style pipeline: UNet, KL autoencoder, CLIP text encoder (SD1 naming).
public struct PipelineLayout: Sendable {
    public var unet: UNetLayout?
    public var vae: VAELayout?
    public var textEncoder: Bool
    /// The text_encoder component came from SD2's OpenCLIP (cond_stage_model.model.*, OpenCLIPMapping.swift).
    public var openCLIPTextEncoder = false
    /// LDM-BERT text-to-image (CompVis BERTEmbedder <-> diffusers LDMTextToImagePipeline): the text encoder is the
    /// `bert` component and the first stage is named `vqvae` (an AutoencoderKL there).
    public var bert: BERTLayout?
    public var vaeComponent: String { bert != nil ? "vqvae" : "vae" }

    public static let unetPrefix = "model.diffusion_model.", vaePrefix = "first_stage_model.",
                      clipPrefix = "cond_stage_model.transformer."

    public init(unet: UNetLayout?, vae: VAELayout?, textEncoder: Bool) {
        self.unet = unet; self.vae = vae; self.textEncoder = textEncoder
    }

    public var components: [ComponentMapping] {
        var c: [ComponentMapping] = []
        if let unet { c.append(ComponentMapping(compvisPrefix: Self.unetPrefix, component: "unet", rules: unet.rules)) }
        if let vae { c.append(ComponentMapping(compvisPrefix: Self.vaePrefix, component: vaeComponent, rules: vae.rules)) }
        if let bert { c.append(bert.mapping) }
        if textEncoder { c.append(ComponentMapping(compvisPrefix: Self.clipPrefix, component: "text_encoder", rules: nil)) }
        return c
    }

    static func stripped(_ names: [String], _ prefix: String) -> [String] {
        names.filter { $0.hasPrefix(prefix) }.map { String($0.dropFirst(prefix.count)) }
    }

    /// From CompVis names ("model.diffusion_model.*", "first_stage_model.*", "cond_stage_model.transformer.*").
    public static func detect(compvis names: [String]) throws -> PipelineLayout {
        let u = stripped(names, unetPrefix), v = stripped(names, vaePrefix), t = stripped(names, clipPrefix)
        let isBERT = BERTLayout.isBERTEmbedder(compvis: t)
        var layout = PipelineLayout(unet: u.isEmpty ? nil : try UNetLayout.detect(compvis: u),
                                    vae: v.isEmpty ? nil : try VAELayout.detect(compvis: v),
                                    textEncoder: !t.isEmpty && !isBERT)
        if isBERT { layout.bert = try BERTLayout.detect(compvis: t) }
        return layout
    }

    /// From diffusers names "<component>.<key>" (unet., vae., text_encoder.).
    public static func detect(diffusers names: [String]) throws -> PipelineLayout {
        let b = stripped(names, "bert.")
        let u = stripped(names, "unet."), v = stripped(names, b.isEmpty ? "vae." : "vqvae.")
        var layout = PipelineLayout(unet: u.isEmpty ? nil : try UNetLayout.detect(diffusers: u),
                                    vae: v.isEmpty ? nil : try VAELayout.detect(diffusers: v),
                                    textEncoder: names.contains { $0.hasPrefix("text_encoder.") })
        if !b.isEmpty { layout.bert = try BERTLayout.detect(diffusers: b) }
        return layout
    }

    /// CompVis name -> (component, diffusers key, shape); nil when no rule covers it.
    public func toDiffusers(_ name: String, shape: [Int]) -> (component: String, key: String, shape: [Int])? {
        for c in components where name.hasPrefix(c.compvisPrefix) {
            if let (k, s) = c.toDiffusers(String(name.dropFirst(c.compvisPrefix.count)), shape: shape) { return (c.component, k, s) }
        }
        return nil
    }

    /// (component, diffusers key) -> CompVis name and shape; nil when no rule covers it.
    public func toCompVis(component: String, key: String, shape: [Int]) -> (name: String, shape: [Int])? {
        guard let c = components.first(where: { $0.component == component }),
              let (k, s) = c.toCompVis(key, shape: shape) else { return nil }
        return (c.compvisPrefix + k, s)
    }
}
