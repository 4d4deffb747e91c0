// A CompVis YAML reconciled with the checkpoint it is used with, as the web UIs and diffusers' single-file loader
// read architecture from tensor shapes (diffusers loaders/single_file_utils.py infer_diffusers_model_type /
// create_unet_diffusers_config_from_ldm, AUTOMATIC1111 modules/sd_models_config.py guess_model_config_from_state_dict,
// ComfyUI model_detection.py). People load fine-tunes and small distilled models with the stock
// v1-inference.yaml / v2-inference.yaml; the text encoder's size is never in those files (see
// Conditioning/TextEncoderFromWeights.swift). Here the values the weights pin are read from them:
//   UNet (openaimodel.UNetModel with spatial transformers): in/out channels, model_channels, channel_mult,
//     num_res_blocks, attention_resolutions, context_dim, use_linear_in_transformer, transformer_depth;
//   first stage (ldm/modules/diffusionmodules/model.py Encoder/Decoder of AutoencoderKL / VQModel): ch, ch_mult,
//     num_res_blocks, in_channels, out_ch, z_channels, embed_dim, n_embed, attn_resolutions (at the YAML's resolution).
// A pinned value the YAML contradicts could not load as written; it is replaced and reported in a note. Everything the
// weights do not pin (heads, resolution, scale factor, schedule, parameterization, conditioning) stays as the YAML says.
import Checkpoints
import Foundation

public enum CompVisArchitecture {
    /// `yaml` with the UNet and first-stage values the checkpoint's tensors pin, and one note per changed value.
    public static func reconcile(yaml: [String: Any], records: [String: TensorRecord]) throws -> (yaml: [String: Any], notes: [String]) {
        guard var model = yaml["model"] as? [String: Any], var params = model["params"] as? [String: Any] else { return (yaml, []) }
        var notes: [String] = []
        if var unet = params["unet_config"] as? [String: Any], var p = unet["params"] as? [String: Any] {
            notes += try reconcileUNet(&p, shapes: shapes(records, "model.diffusion_model."))
            unet["params"] = p
            params["unet_config"] = unet
        }
        if var first = params["first_stage_config"] as? [String: Any], var p = first["params"] as? [String: Any],
           let target = first["target"] as? String {
            notes += try reconcileFirstStage(&p, vq: target.hasSuffix("VQModel") || target.hasSuffix("VQModelInterface"),
                                             shapes: shapes(records, "first_stage_model."))
            first["params"] = p
            params["first_stage_config"] = first
        }
        model["params"] = params
        var out = yaml
        out["model"] = model
        return (out, notes)
    }

    /// `reconcile` on a checkpoint file; the YAML unchanged when the file cannot be read (loading it reports why).
    public static func reconcile(yaml: [String: Any], checkpoint url: URL) throws -> (yaml: [String: Any], notes: [String]) {
        guard let file = try? CheckpointFile.open(url) else { return (yaml, []) }
        return try reconcile(yaml: yaml, records: file.tensors)
    }

    static func shapes(_ records: [String: TensorRecord], _ prefix: String) -> [String: [Int]] {
        var out: [String: [Int]] = [:]
        for (k, r) in records where k.hasPrefix(prefix) { out[String(k.dropFirst(prefix.count))] = r.shape }
        return out
    }

    /// A YAML scalar or list as a list of integers (nil when absent or not integers).
    static func intList(_ v: Any?) -> [Int]? {
        switch v {
        case let i as Int: return [i]
        case let a as [Any]:
            let ints = a.compactMap { $0 as? Int }
            return ints.count == a.count ? ints : nil
        default: return nil
        }
    }

    /// Sets `dict[key]` to `value` when `same` says the YAML's value differs, with a note.
    static func set(_ dict: inout [String: Any], _ key: String, _ value: Any, where section: String, same: (Any?) -> Bool,
                    notes: inout [String]) {
        guard !same(dict[key]) else { return }
        let old = dict[key].map { "\($0)" } ?? "absent"
        dict[key] = value
        notes.append("\(section).\(key): YAML \(old) -> \(value) (from the checkpoint's weights)")
    }

    static func reconcileUNet(_ p: inout [String: Any], shapes s: [String: [Int]]) throws -> [String] {
        guard let conv = s["input_blocks.0.0.weight"], conv.count == 4, let out = s["out.2.weight"], !out.isEmpty else { return [] }
        let spatialWeights = s.keys.contains { $0.contains(".transformer_blocks.") }
        let spatialYAML = p["use_spatial_transformer"] as? Bool ?? false
        if spatialWeights != spatialYAML {
            throw CompVisError("the checkpoint's UNet \(spatialWeights ? "has" : "has no") spatial transformers but the YAML's unet_config says use_spatial_transformer: \(spatialYAML)")
        }
        guard spatialWeights else { return [] }   // legacy AttentionBlock UNets (LDM class / unconditional): YAML as is
        let layout: UNetLayout
        do { layout = try UNetLayout.detect(compvis: Array(s.keys)) } catch let e as CheckpointError {
            throw CompVisError("the checkpoint's UNet: \(e.message)")
        }
        let mc = conv[0], L = layout.layersPerBlock
        let channels = try (0..<layout.levels).map { l -> Int in
            guard let c = s["input_blocks.\(1 + l * (L + 1)).0.out_layers.3.weight"]?.first else {
                throw CompVisError("the checkpoint's UNet has no input_blocks.\(1 + l * (L + 1)).0 resnet to read level \(l)'s channels from")
            }
            guard c % mc == 0 else {
                throw CompVisError("the checkpoint's UNet level \(l) has \(c) channels, not a multiple of model_channels \(mc)")
            }
            return c
        }
        let attnLevels = (0..<layout.levels).filter { layout.attention[$0] }
        guard let firstAttn = attnLevels.first else { return [] }
        let block = "input_blocks.\(1 + firstAttn * (L + 1)).1."
        guard let toK = s.first(where: { $0.key.hasSuffix("attn2.to_k.weight") })?.value.last, let projIn = s[block + "proj_in.weight"] else {
            throw CompVisError("the checkpoint's UNet has transformer blocks without cross-attention (attn2.to_k) or proj_in")
        }
        let depths = attnLevels.map { l -> Int in
            let prefix = "input_blocks.\(1 + l * (L + 1)).1.transformer_blocks."
            return indices(s.keys, prefix).count
        }
        var notes: [String] = []
        let section = "unet_config.params"
        func ints(_ v: Any?) -> [Int]? { intList(v) }
        set(&p, "in_channels", conv[1], where: section, same: { ints($0) == [conv[1]] }, notes: &notes)
        set(&p, "out_channels", out[0], where: section, same: { ints($0) == [out[0]] }, notes: &notes)
        set(&p, "model_channels", mc, where: section, same: { ints($0) == [mc] }, notes: &notes)
        let mult = channels.map { $0 / mc }
        set(&p, "channel_mult", mult, where: section, same: { ints($0) == mult }, notes: &notes)
        set(&p, "num_res_blocks", L, where: section, same: { v in ints(v).map { $0 == [L] || $0 == Array(repeating: L, count: mult.count) } ?? false },
            notes: &notes)
        let attnRes = attnLevels.map { 1 << $0 }
        set(&p, "attention_resolutions", attnRes.reversed() as [Int], where: section,
            same: { ints($0).map { Set($0) == Set(attnRes) } ?? false }, notes: &notes)
        set(&p, "context_dim", toK, where: section, same: { ints($0)?.first == toK }, notes: &notes)
        let linear = projIn.count == 2
        set(&p, "use_linear_in_transformer", linear, where: section, same: { ($0 as? Bool ?? false) == linear }, notes: &notes)
        let depth: Any = Set(depths).count == 1 ? depths[0] : depths
        set(&p, "transformer_depth", depth, where: section, same: { v in
            guard let d = v == nil ? [1] : ints(v) else { return false }
            return d.count == 1 ? depths.allSatisfy { $0 == d[0] } : d.count == mult.count && attnLevels.map { d[$0] } == depths
        }, notes: &notes)
        return notes
    }

    static func reconcileFirstStage(_ p: inout [String: Any], vq: Bool, shapes s: [String: [Int]]) throws -> [String] {
        guard var dd = p["ddconfig"] as? [String: Any], let convIn = s["encoder.conv_in.weight"], convIn.count == 4,
              let convOut = s["decoder.conv_out.weight"], let zIn = s["decoder.conv_in.weight"], zIn.count == 4,
              let quant = s["quant_conv.weight"] else { return [] }
        let ch = convIn[0], levels = indices(s.keys, "encoder.down.").count, L = indices(s.keys, "encoder.down.0.block.").count
        guard levels > 0, L > 0 else { return [] }
        let mult = try (0..<levels).map { i -> Int in
            guard let c = s["encoder.down.\(i).block.0.conv2.weight"]?.first, c % ch == 0 else {
                throw CompVisError("the checkpoint's first stage level \(i) channels are not a multiple of ch \(ch)")
            }
            return c / ch
        }
        let resolution = intList(dd["resolution"])?.first ?? 256
        let attn = (0..<levels).filter { i in s.keys.contains { $0.hasPrefix("encoder.down.\(i).attn.") } }.map { resolution >> $0 }
        var notes: [String] = []
        let section = "first_stage_config.params.ddconfig"
        set(&dd, "ch", ch, where: section, same: { intList($0) == [ch] }, notes: &notes)
        set(&dd, "in_channels", convIn[1], where: section, same: { intList($0) == [convIn[1]] }, notes: &notes)
        set(&dd, "out_ch", convOut[0], where: section, same: { intList($0) == [convOut[0]] }, notes: &notes)
        set(&dd, "ch_mult", mult, where: section, same: { intList($0) == mult }, notes: &notes)
        set(&dd, "num_res_blocks", L, where: section, same: { intList($0) == [L] }, notes: &notes)
        set(&dd, "z_channels", zIn[1], where: section, same: { intList($0) == [zIn[1]] }, notes: &notes)
        set(&dd, "attn_resolutions", attn, where: section, same: { v in Set(intList(v) ?? []) == Set(attn) }, notes: &notes)
        p["ddconfig"] = dd
        let embed = vq ? quant[0] : quant[0] / 2
        set(&p, "embed_dim", embed, where: "first_stage_config.params", same: { intList($0) == [embed] }, notes: &notes)
        if vq, let n = s["quantize.embedding.weight"]?.first {
            set(&p, "n_embed", n, where: "first_stage_config.params", same: { intList($0) == [n] }, notes: &notes)
        }
        return notes
    }
}

/// SDXL's added conditioning as its weights pin it (sgm openaimodel `adm_in_channels` = pooled text width + time ids x
/// addition_time_embed_dim; diffusers projection_class_embeddings_input_dim): the UNet's add_embedding.linear_1 input,
/// text_encoder_2's projection width (the pooled embedding) and the number of time ids (6: original size, crop
/// top-left, target size; the refiner's 5: original size, crop, aesthetic score) give addition_time_embed_dim, which
/// has no weights of its own (Fourier features).
public struct SDXLConditioningShape: Equatable, Sendable {
    public var projectionInputDim: Int
    public var pooledDim: Int
    public var timeIDs: Int
    public var additionTimeEmbedDim: Int
    public var contextDim: Int?

    /// `unet`: diffusers UNet names (without "unet."); `pooledDim`: text_encoder_2's text_projection rows (nil when the
    /// file has no text_encoder_2: SDXL's OpenCLIP bigG width 1280).
    public init(unet shapes: [String: [Int]], pooledDim: Int?, refiner: Bool) throws {
        guard let w = shapes["add_embedding.linear_1.weight"], w.count == 2 else {
            throw CheckpointError("SDXL UNet: add_embedding.linear_1.weight (label_emb.0.0) is missing or not 2-d")
        }
        projectionInputDim = w[1]
        self.pooledDim = pooledDim ?? 1280
        timeIDs = refiner ? 5 : 6
        let rest = projectionInputDim - self.pooledDim
        guard rest > 0, rest % timeIDs == 0 else {
            throw CheckpointError("SDXL UNet: added-conditioning input \(projectionInputDim) is not pooled width \(self.pooledDim) + \(timeIDs) time ids x an embedding width")
        }
        additionTimeEmbedDim = rest / timeIDs
        contextDim = shapes.first { $0.key.hasSuffix("attn2.to_k.weight") }?.value.last
    }
}
