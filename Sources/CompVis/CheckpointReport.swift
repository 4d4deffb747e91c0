// Text report of a checkpoint for `ldm inspect`: format, metadata, detected family, parameter
// counts per top-level component (CompVis prefixes or diffusers component folders), dtypes,
// and the tensor list. Component prefixes follow ldm/models/diffusion/ddpm.py LatentDiffusion.
import Checkpoints
import Foundation

public enum CheckpointReport {
    static let knownPrefixes = ["model.diffusion_model", "model_ema", "first_stage_model", "cond_stage_model", "depth_model"]

    /// Top-level component of a tensor name.
    public static func component(of name: String, diffusers: Bool) -> String {
        if !diffusers, let p = knownPrefixes.first(where: { name.hasPrefix($0 + ".") }) { return p }
        return name.split(separator: ".", maxSplits: 1).first.map(String.init) ?? name
    }

    public static func make(path: String, variant: String? = nil, maxTensors: Int = .max) throws -> String {
        let url = URL(fileURLWithPath: path)
        return make(try CheckpointFile.open(url, variant: variant), title: path, maxTensors: maxTensors)
    }

    public static func make(_ file: CheckpointFile, title: String, maxTensors: Int = .max) -> String {
        var out = "checkpoint: \(title)\nformat: \(file.format.rawValue)\n"
        let family = file.diffusers.map(ModelFamily.detect) ?? ModelFamily.detect(file.tensors)
        out += "family: \(family)\n"
        for k in file.metadata.keys.sorted() { out += "metadata \(k): \(file.metadata[k]!.prefix(200))\n" }
        if let d = file.diffusers {
            for c in d.components {
                out += "component \(c.name.isEmpty ? "(model)" : c.name): \(c.className ?? "?")"
                out += c.weightFiles.isEmpty ? "" : " weights " + c.weightFiles.map(\.lastPathComponent).joined(separator: ", ")
                if let v = c.variant { out += " [variant \(v)]" }
                out += "\n"
            }
        }
        if EMA.hasEMA(Array(file.tensors.keys)) {
            out += "EMA: \(EMA.keyMap(Array(file.tensors.keys)).count) parameters have LitEma copies (model_ema.*)\n"
        }
        var params: [String: Int] = [:], counts: [String: Int] = [:], bytes: [String: Int] = [:]
        var dtypes: [String: Int] = [:]
        for (name, r) in file.tensors {
            let c = component(of: name, diffusers: file.format == .diffusersFolder)
            params[c, default: 0] += r.elementCount
            counts[c, default: 0] += 1
            bytes[c, default: 0] += r.byteCount
            dtypes[r.dtype.rawValue, default: 0] += 1
        }
        let total = params.values.reduce(0, +)
        out += "tensors: \(file.tensors.count), parameters: \(total) (\(human(total)))\n"
        out += "dtypes: " + dtypes.keys.sorted().map { "\($0)×\(dtypes[$0]!)" }.joined(separator: ", ") + "\n"
        out += "components:\n"
        for c in params.keys.sorted() {
            out += "  \(c): \(counts[c]!) tensors, \(params[c]!) parameters (\(human(params[c]!))), \(bytes[c]!) bytes\n"
        }
        out += "tensor list:\n"
        for (i, name) in file.tensors.keys.sorted().enumerated() {
            if i >= maxTensors {
                out += "  … \(file.tensors.count - maxTensors) more\n"
                break
            }
            let r = file.tensors[name]!
            out += "  \(name) \(r.dtype.rawValue) \(r.shape)\(r.isContiguous ? "" : " (strided view)")\n"
        }
        return out
    }

    static func human(_ n: Int) -> String {
        if n >= 1_000_000_000 { return String(format: "%.2fB", Double(n) / 1e9) }
        if n >= 1_000_000 { return String(format: "%.2fM", Double(n) / 1e6) }
        if n >= 1_000 { return String(format: "%.1fK", Double(n) / 1e3) }
        return String(n)
    }
}
