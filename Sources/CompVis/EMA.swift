// CompVis LitEma naming (ldm/modules/ema.py): which buffer of a checkpoint is the EMA copy of which parameter.
import Checkpoints
import Foundation

extension CheckpointFile {
    /// Weights with EMA parameters substituted (see `EMA.substituted`).
    public var emaTensors: [String: TensorRecord]? { EMA.hasEMA(Array(tensors.keys)) ? EMA.substituted(tensors) : nil }
}

/// CompVis LitEma (ldm/modules/ema.py): the EMA copy of parameter `model.<p>` is the buffer
/// `model_ema.<p with '.' removed>` (plus `model_ema.decay` / `model_ema.num_updates`).
public enum EMA {
    public static func litEmaName(_ name: String) -> String? {
        guard name.hasPrefix("model.") else { return nil }
        return "model_ema." + name.dropFirst("model.".count).replacingOccurrences(of: ".", with: "")
    }

    public static func hasEMA(_ keys: [String]) -> Bool {
        keys.contains { $0.hasPrefix("model_ema.") && $0 != "model_ema.decay" && $0 != "model_ema.num_updates" }
    }

    /// model key -> EMA key, for every `model.*` key whose EMA buffer exists.
    public static func keyMap(_ keys: [String]) -> [String: String] {
        let set = Set(keys)
        var out: [String: String] = [:]
        for k in keys { if let e = litEmaName(k), set.contains(e) { out[k] = e } }
        return out
    }

    /// `model.*` tensors replaced by their EMA buffers (under the model names); `model_ema.*` dropped.
    public static func substituted(_ tensors: [String: TensorRecord]) -> [String: TensorRecord] {
        let map = keyMap(Array(tensors.keys))
        var out: [String: TensorRecord] = [:]
        for (k, r) in tensors where !k.hasPrefix("model_ema.") {
            if let e = map[k], let ema = tensors[e] { out[k] = ema.renamed(k) } else { out[k] = r }
        }
        return out
    }
}
