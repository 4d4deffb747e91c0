// DoRA (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation"): the adapted weight is a magnitude times a
// unit direction, W' = m * (W + dW) / ||W + dW||, the norm taken per output row or per input column. Merged as the
// references merge it:
// - PEFT / diffusers (`lora_magnitude_vector`, LoraConfig use_dora): peft/tuners/lora/dora.py get_weight_norm takes the
//   norm of each output row (over every other axis: a Linear's in-features, a conv's in-channels x kernel), and
//   fuse_lora(lora_scale) scales dW before the decomposition (scaling = lora_alpha / r x lora_scale), so
//   W' = m / ||W + s dW||_row * (W + s dW).
// - kohya / LyCORIS / AUTOMATIC1111 (`dora_scale`): extensions-builtin/Lora network.py apply_weight_decompose takes the
//   norm of each input column (over the output axis and the kernel) for a dora_scale shaped (1, in, ...), the
//   layout A1111 and LyCORIS' default before wd_on_out wrote; a dora_scale shaped (out, 1, ...) (LyCORIS wd_on_out)
//   is normalised per output row, as diffusers' converter reads it into PEFT's magnitude. The update is scaled by
//   alpha / rank before the decomposition and the result by the multiplier after it:
//   W' = W + w * (m * (W + s dW) / ||W + s dW|| - W).
// The base weight is the model's original (A1111 decomposes against its backed-up weight, also with several
// networks); ModelBundle.mergeLoRAs passes it, and unmerging restores the kept originals bit for bit.
import Foundation

extension LoRA {
    /// The merged update of a DoRA module: `delta` is the unscaled low-rank update, `scale` alpha / rank (or PEFT's).
    static func doraDelta(_ m: LoRAModule, delta: [Float], scale: Float, weight: Float, shape: [Int],
                          baseWeight: ((String) -> [Float]?)?, file: String) throws -> [Float] {
        guard let base = baseWeight?(m.parameter) else {
            throw LoRAError("\(file): \(m.key) is a DoRA module (weight-decomposed): its update depends on the base weight \(m.parameter), which was not given")
        }
        let count = delta.count
        guard base.count == count, shape.count >= 2 else {
            throw LoRAError("\(file): \(m.key): DoRA needs a weight of rank 2 or more, \(m.parameter) has the shape \(shape)")
        }
        let out = shape[0], inputs = shape[1], kernel = count / (out * inputs)
        let peft = m.parts["M"] != nil
        guard let record = peft ? m.parts["M"] : m.parts["dora_scale"] else { return delta }
        let magnitude = try record.floats()
        // PEFT: always per output row. kohya: by the magnitude's layout.
        let perOutput: Bool
        if peft {
            guard magnitude.count == out else {
                throw LoRAError("\(file): \(m.key).lora_magnitude_vector has \(magnitude.count) values, the weight \(m.parameter) \(shape) has \(out) output rows")
            }
            perOutput = true
        } else {
            let rs = record.shape
            if rs.count >= 2, rs[0] == 1, rs[1] == inputs, magnitude.count == inputs { perOutput = false }
            else if rs.count >= 2, rs[0] == out, magnitude.count == out { perOutput = true }
            else if rs.count == 1, magnitude.count == inputs { perOutput = false }
            else if rs.count == 1, magnitude.count == out { perOutput = true }
            else {
                throw LoRAError("\(file): \(m.key).dora_scale \(rs) fits neither the input columns (1, \(inputs)) nor the output rows (\(out), 1) of \(m.parameter) \(shape)")
            }
        }
        // PEFT scales dW by the full scaling (weight included) before decomposing; A1111 by alpha / rank only.
        let inner = peft ? scale * weight : scale
        var merged = [Float](repeating: 0, count: count)
        for i in 0..<count { merged[i] = base[i] + inner * delta[i] }
        // Squared norms, accumulated in double, per output row or per input column.
        var norms = [Double](repeating: 0, count: perOutput ? out : inputs)
        for o in 0..<out {
            for c in 0..<inputs {
                let start = (o * inputs + c) * kernel
                var s = 0.0
                for k in 0..<kernel {
                    let v = Double(merged[start + k])
                    s += v * v
                }
                norms[perOutput ? o : c] += s
            }
        }
        let factor = zip(magnitude, norms).map { Float(Double($0) / $1.squareRoot()) }
        guard factor.allSatisfy(\.isFinite) else {
            throw LoRAError("\(file): \(m.key): W + dW has a zero \(perOutput ? "row" : "column") norm; the DoRA magnitude cannot be applied")
        }
        let outer: Float = peft ? 1 : weight
        var result = [Float](repeating: 0, count: count)
        for o in 0..<out {
            for c in 0..<inputs {
                let f = factor[perOutput ? o : c], start = (o * inputs + c) * kernel
                for k in 0..<kernel { result[start + k] = outer * (merged[start + k] * f - base[start + k]) }
            }
        }
        return result
    }
}
