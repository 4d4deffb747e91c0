// SD2's OpenCLIP text encoder (ldm/modules/encoders/modules.py FrozenOpenCLIPEmbedder, open_clip
// TextTransformer: cond_stage_model.model.*) <-> transformers CLIPTextModel (text_encoder/), as
// diffusers/loaders/single_file_utils.py convert_open_clip_checkpoint does (DIFFUSERS_TO_LDM_MAPPING["openclip"],
// SD_2_TEXT_ENCODER_KEYS_TO_IGNORE: resblocks.23 and text_projection are dropped), and back as
// scripts/convert_diffusers_to_original_stable_diffusion.py convert_openclip_text_enc_state_dict
// (q/k/v concatenated into in_proj). Splits are zero-copy views of the in_proj storage. The same table loads an
// SD 2.x checkpoint's text tower into CLIPTextModel (all resblocks kept: FrozenOpenCLIPEmbedder's layer "penultimate"
// is a CLIPTextModel with one layer fewer, or the full tower with `encode(ids, clipSkip: 1)`; OpenCLIP ViT-H uses exact
// GELU). SDXL (sgm single files) keeps OpenCLIP bigG under conditioner.embedders.1.model. (the refiner's only encoder:
// conditioner.embedders.0.model.) as transformers' CLIPTextModelWithProjection (text_encoder_2/): every resblock is
// kept and `text_projection` (open_clip: x @ P, stored (width, proj)) is the Linear weight transposed
// (scripts/convert_diffusers_to_original_sdxl.py; a zero-copy strided view here).
import Checkpoints
import Conditioning
import Foundation
import NeuralNetwork

/// Where an OpenCLIP text tower sits in a single file and which diffusers component it becomes.
public struct OpenCLIPTower: Equatable, Sendable {
    public let prefix: String
    public let component: String
    /// The resblock diffusers leaves out (SD2's penultimate-layer conditioning), nil: every resblock.
    public let droppedResblock: Int?
    /// `text_projection` is converted (transposed) to CLIPTextModelWithProjection's `text_projection.weight`.
    public let projection: Bool

    /// SD 2.x FrozenOpenCLIPEmbedder -> text_encoder (CLIPTextModel).
    public static let sd2 = OpenCLIPTower(prefix: OpenCLIPMapping.prefix, component: "text_encoder",
                                          droppedResblock: OpenCLIPMapping.droppedResblock, projection: false)
    /// SDXL base's second embedder -> text_encoder_2 (CLIPTextModelWithProjection).
    public static let sdxl = OpenCLIPTower(prefix: "conditioner.embedders.1.model.", component: "text_encoder_2",
                                           droppedResblock: nil, projection: true)
    /// SDXL refiner's only embedder -> text_encoder_2.
    public static let sdxlRefiner = OpenCLIPTower(prefix: "conditioner.embedders.0.model.", component: "text_encoder_2",
                                                  droppedResblock: nil, projection: true)

    public func toDiffusers(_ tensors: [String: TensorRecord]) throws -> (mapped: [MappedTensor], unmapped: [String]) {
        try OpenCLIPMapping.toDiffusers(tensors, prefix: prefix, dropping: droppedResblock, projection: projection)
    }

    /// `tensors`: keys without the component.
    public func toCompVis(_ tensors: [String: TensorRecord]) throws -> (mapped: [MappedTensor], unmapped: [String]) {
        try OpenCLIPMapping.toCompVis(tensors, prefix: prefix, projection: projection)
    }
}

public enum OpenCLIPMapping {
    public static let prefix = "cond_stage_model.model."
    /// SD_2_TEXT_ENCODER_KEYS_TO_IGNORE: SD2 conditions on the penultimate layer, diffusers drops this resblock.
    public static let droppedResblock = 23
    static let resblocks = "transformer.resblocks."
    static let layers = "text_model.encoder.layers."
    /// DIFFUSERS_TO_LDM_MAPPING["openclip"]["layers"] (less text_projection, which diffusers ignores).
    static let direct: [(compvis: String, diffusers: String)] = [
        ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
        ("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
        ("ln_final.weight", "text_model.final_layer_norm.weight"), ("ln_final.bias", "text_model.final_layer_norm.bias")]
    /// DIFFUSERS_TO_LDM_MAPPING["openclip"]["transformer"], per resblock.
    static let leaves: [(compvis: String, diffusers: String)] = [
        ("ln_1.", "layer_norm1."), ("ln_2.", "layer_norm2."), ("mlp.c_fc.", "mlp.fc1."), ("mlp.c_proj.", "mlp.fc2."),
        ("attn.out_proj.", "self_attn.out_proj.")]
    static let qkv = ["q_proj", "k_proj", "v_proj"]
    /// open_clip's `text_projection` parameter <-> CLIPTextModelWithProjection's Linear weight (transposed).
    static let projection = (compvis: "text_projection", diffusers: "text_projection.weight")

    /// A 2-d record viewed transposed (same storage, swapped strides).
    static func transposed(_ r: TensorRecord, name: String) throws -> TensorRecord {
        guard r.shape.count == 2 else { throw CheckpointError("\(r.name): text_projection has shape \(r.shape), not 2-d") }
        return try TensorRecord(name: name, dtype: r.dtype, shape: [r.shape[1], r.shape[0]], strides: [r.strides[1], r.strides[0]],
                                byteOffset: r.byteOffset, storage: r.storage)
    }

    public static let forwardNote = "text_encoder: SD2 OpenCLIP cond_stage_model.model.* -> CLIPTextModel (in_proj split into q/k/v); "
        + "as diffusers, resblocks.\(droppedResblock) and text_projection are dropped, logit_scale is not part of CLIPTextModel"
    public static let reverseNote = "text_encoder: CLIPTextModel -> SD2 OpenCLIP cond_stage_model.model.* (q/k/v fused into in_proj); "
        + "resblocks.\(droppedResblock) (dropped by diffusers), text_projection and logit_scale cannot be restored"

    /// (resblock index, rest) of "transformer.resblocks.N.rest".
    static func resblock(_ key: String, _ head: String) -> (Int, String)? {
        guard key.hasPrefix(head) else { return nil }
        let p = key.dropFirst(head.count).split(separator: ".", maxSplits: 1)
        guard p.count == 2, let n = Int(p[0]), n >= 0 else { return nil }
        return (n, String(p[1]))
    }

    /// Part `part` of 3 equal slices along dim 0, sharing the storage.
    static func third(_ r: TensorRecord, _ part: Int, name: String) throws -> TensorRecord {
        guard let rows3 = r.shape.first, rows3 % 3 == 0 else {
            throw CheckpointError("\(r.name): shape \(r.shape) cannot be split in three along dim 0")
        }
        let rows = rows3 / 3
        return try TensorRecord(name: name, dtype: r.dtype, shape: [rows] + r.shape.dropFirst(), strides: r.strides,
                                byteOffset: r.byteOffset + part * rows * r.strides[0] * r.dtype.byteSize, storage: r.storage)
    }

    /// CompVis tensors (full names) -> text_encoder keys; names under `prefix` that diffusers does not keep are `unmapped`.
    /// `dropping`: the resblock diffusers leaves out (nil keeps every resblock, as loading does).
    /// `projection`: text_projection becomes text_projection.weight (transposed), as for SDXL's text_encoder_2.
    public static func toDiffusers(_ tensors: [String: TensorRecord], prefix: String = OpenCLIPMapping.prefix,
                                   dropping: Int? = droppedResblock, projection convertProjection: Bool = false) throws
        -> (mapped: [MappedTensor], unmapped: [String]) {
        var out: [MappedTensor] = []
        var unmapped: [String] = []
        let width = tensors[prefix + "token_embedding.weight"]?.shape.last
        for name in tensors.keys.sorted() where name.hasPrefix(prefix) {
            guard let r = tensors[name] else { continue }
            let key = String(name.dropFirst(prefix.count))
            if let d = direct.first(where: { $0.compvis == key }) {
                out.append(MappedTensor(name: d.diffusers, shape: r.shape, source: r))
                continue
            }
            if convertProjection && key == projection.compvis {
                let t = try transposed(r, name: name)
                out.append(MappedTensor(name: projection.diffusers, shape: t.shape, source: t))
                continue
            }
            guard let (n, leaf) = resblock(key, resblocks), n != dropping else {
                unmapped.append(name)
                continue
            }
            let head = layers + "\(n).self_attn."
            if leaf == "attn.in_proj_weight" || leaf == "attn.in_proj_bias" {
                // diffusers slices at text_projection.shape[0] (the width): only equal thirds give a loadable model.
                if let w = width, r.shape.first != 3 * w {
                    throw CheckpointError("\(name): shape \(r.shape) is not 3 x width \(w) along dim 0")
                }
                let suffix = leaf.hasSuffix("weight") ? ".weight" : ".bias"
                for (i, q) in qkv.enumerated() {
                    let s = try third(r, i, name: name)
                    out.append(MappedTensor(name: head + q + suffix, shape: s.shape, source: s))
                }
            } else if let l = leaves.first(where: { leaf.hasPrefix($0.compvis) }) {
                out.append(MappedTensor(name: layers + "\(n)." + l.diffusers + leaf.dropFirst(l.compvis.count), shape: r.shape, source: r))
            } else {
                unmapped.append(name)
            }
        }
        return (out, unmapped)
    }

    /// text_encoder keys (without "text_encoder."; with or without transformers 5's missing "text_model.") ->
    /// CompVis tensors; q/k/v are concatenated into in_proj (new bytes, exact).
    /// `projection`: text_projection.weight becomes open_clip's text_projection (transposed), as for SDXL.
    public static func toCompVis(_ tensors: [String: TensorRecord], prefix: String = OpenCLIPMapping.prefix,
                                 projection convertProjection: Bool = false) throws -> (mapped: [MappedTensor], unmapped: [String]) {
        var out: [MappedTensor] = []
        var unmapped: [String] = []
        var fused: [String: [String: TensorRecord]] = [:]   // "N.weight" -> q_proj/k_proj/v_proj
        var fusedFrom: [String: [String]] = [:]
        for name in tensors.keys.sorted() {
            guard let r = tensors[name] else { continue }
            let key = CLIPTextKeys.canonical(name)
            if let d = direct.first(where: { $0.diffusers == key }) {
                out.append(MappedTensor(name: prefix + d.compvis, shape: r.shape, source: r))
                continue
            }
            if convertProjection && key == projection.diffusers {
                let t = try transposed(r, name: prefix + projection.compvis)
                out.append(MappedTensor(name: t.name, shape: t.shape, source: t))
                continue
            }
            guard let (n, leaf) = resblock(key, layers) else {
                unmapped.append(name)
                continue
            }
            let parts = leaf.split(separator: ".")
            if parts.count == 3, parts[0] == "self_attn", qkv.contains(String(parts[1])), parts[2] == "weight" || parts[2] == "bias" {
                fused["\(n).\(parts[2])", default: [:]][String(parts[1])] = r
                fusedFrom["\(n).\(parts[2])", default: []].append(name)
            } else if let l = leaves.first(where: { leaf.hasPrefix($0.diffusers) }) {
                out.append(MappedTensor(name: prefix + resblocks + "\(n)." + l.compvis + leaf.dropFirst(l.diffusers.count),
                                        shape: r.shape, source: r))
            } else {
                unmapped.append(name)
            }
        }
        for (k, group) in fused.sorted(by: { $0.key < $1.key }) {
            guard let q = group["q_proj"], let kk = group["k_proj"], let v = group["v_proj"] else {
                unmapped += fusedFrom[k] ?? []
                continue
            }
            let kv = k.split(separator: ".")
            let name = prefix + resblocks + "\(kv[0]).attn.in_proj_" + kv[1]
            guard q.dtype == kk.dtype, q.dtype == v.dtype, q.shape == kk.shape, q.shape == v.shape, let rows = q.shape.first else {
                throw CheckpointError("\(name): q/k/v projections differ in dtype or shape (\(q.shape), \(kk.shape), \(v.shape))")
            }
            var data = try q.rawData()
            data.append(try kk.rawData())
            data.append(try v.rawData())
            let storage = TensorStorage(buffer: ByteBuffer(copying: data), offset: 0, byteCount: data.count)
            let shape = [3 * rows] + q.shape.dropFirst()
            out.append(MappedTensor(name: name, shape: shape,
                                    source: try TensorRecord(name: name, dtype: q.dtype, shape: shape, storage: storage)))
        }
        return (out, unmapped)
    }

    /// Without a config.json: diffusers' convert_diffusers_to_original_stable_diffusion.py test (a 23rd layer).
    public static func looksLikeOpenCLIP(diffusersKeys keys: [String]) -> Bool {
        keys.contains { $0 == "text_encoder.text_model.encoder.layers.22.layer_norm2.bias" || $0 == "text_encoder.encoder.layers.22.layer_norm2.bias" }
    }
}

extension CLIPTextModel {
    /// CLIPTextModel-named records from OpenCLIP text-tower keys under `prefix` (every resblock); text_projection,
    /// logit_scale and the visual tower are left out.
    public static func openCLIPRecords(_ records: [String: TensorRecord], prefix: String = OpenCLIPMapping.prefix) throws -> [String: TensorRecord] {
        var out: [String: TensorRecord] = [:]
        for m in try OpenCLIPMapping.toDiffusers(records, prefix: prefix, dropping: nil).mapped { out[m.name] = m.source }
        return out
    }

    /// Loads an SD 2.x CompVis checkpoint's text encoder (OpenCLIP names under `prefix`).
    @discardableResult
    public func loadOpenCLIPWeights(_ records: [String: TensorRecord], prefix: String = OpenCLIPMapping.prefix) throws -> LoadReport {
        try load(Self.openCLIPRecords(records, prefix: prefix), component: "OpenCLIP text encoder")
    }
}

extension CLIPTextConfig {
    /// SD 2.x text encoder (FrozenOpenCLIPEmbedder, layer "penultimate") of a CompVis checkpoint: a full open_clip
    /// text tower (it has `text_projection`, as every released SD 2.x file) is used without its last resblock; a tower
    /// written from a diffusers CLIPTextModel (no text_projection: diffusers already dropped that resblock) is used whole.
    public static func frozenOpenCLIPEmbedder(_ records: [String: TensorRecord], prefix: String = OpenCLIPMapping.prefix) throws -> CLIPTextConfig {
        var c = try derived(fromCLIPRecords: CLIPTextModel.openCLIPRecords(records, prefix: prefix), hiddenAct: "gelu",
                            what: "FrozenOpenCLIPEmbedder")
        if records[prefix + "text_projection"] != nil {
            guard c.numHiddenLayers > 1 else {
                throw ConditioningError("FrozenOpenCLIPEmbedder: the penultimate layer of a one-layer text tower does not exist")
            }
            c.numHiddenLayers -= 1
        }
        c.bosTokenID = 0
        c.eosTokenID = 2
        c.padTokenID = 1
        return c
    }
}
