// LoRA weight deltas (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") and the LyCORIS
// variants, computed as AUTOMATIC1111's extensions-builtin/Lora computes them (network_lora.py: up @ down, with
// lora_mid the CP rebuild of lyco_helpers.rebuild_cp_decomposition; network_hada.py: LoHa (w1a @ w1b) * (w2a @ w2b),
// hada_t1/t2 through lyco_helpers.make_weight_cp; network_lokr.py: LoKr kron(w1, w2), factors whole, low-rank or
// tucker; network.py calc_scale: alpha / dim, 1 without alpha) and as diffusers / PEFT scale their LoRAs
// (peft LoraLayer: lora_alpha / r, or / sqrt(r) with use_rslora; rank_pattern / alpha_pattern per module; diffusers
// loaders/lora_base.py stores the adapter configs in the safetensors metadata `lora_adapter_metadata`).
// Key formats: kohya / A1111 (`lora_unet_<module_path_with_underscores>.lora_down.weight`, `lora_te_...`),
// diffusers / PEFT (`unet.<module.path>.lora_A.weight` / `lora_B`, `text_encoder.<...>`, older `.lora.down/.lora.up`,
// raw PEFT `base_model.model.<...>` as UNet). Keys are matched strictly: a key that maps to no module is an error.
import Checkpoints
import Foundation
import TensorCore

/// A LoRA file: its tensors and safetensors metadata.
public struct LoRAFile {
    public let url: URL
    public let records: [String: TensorRecord]
    public let metadata: [String: String]
    /// The file name without extension (the name A1111's `<lora:NAME:W>` and `Lora hashes` use).
    public var name: String { url.deletingPathExtension().lastPathComponent }

    public init(url: URL) throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDir), !isDir.boolValue else {
            throw LoRAError("LoRA file \(url.path) does not exist")
        }
        let file: CheckpointFile
        do { file = try CheckpointFile.open(url) } catch { throw LoRAError("LoRA file \(url.path) cannot be read: \(error)") }
        guard !file.tensors.isEmpty else { throw LoRAError("LoRA file \(url.path) holds no tensors") }
        self.url = url
        records = file.tensors
        metadata = file.metadata
    }

    public init(url: URL, records: [String: TensorRecord], metadata: [String: String] = [:]) {
        self.url = url
        self.records = records
        self.metadata = metadata
    }

    /// AUTOMATIC1111's short hash of a safetensors LoRA (the addnet hash: SHA-256 of the bytes after the 8-byte
    /// header length and the JSON header; other files: of the whole file), first 12 hex digits.
    public func shortHash() throws -> String {
        let data = try Data(contentsOf: url, options: .alwaysMapped)
        var body = data
        if url.pathExtension.lowercased() == "safetensors", data.count >= 8 {
            let n = data.prefix(8).enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
            if n <= UInt64(data.count - 8) { body = data.subdata(in: (8 + Int(n))..<data.count) }
        }
        return String(SHA256.hex(body).prefix(12))
    }
}

/// One module's factors, gathered from the file's keys.
struct LoRAModule {
    var key: String            // the file's module name (for messages)
    var parameter: String      // our full parameter name: "unet.<...>.weight" / "text_encoder.<...>.weight"
    var peft = false
    var parts: [String: TensorRecord] = [:]
}

public enum LoRA {
    /// Parts a module may have; anything else (bias, diff, ...) is refused. DoRA magnitudes: kohya / LyCORIS
    /// `dora_scale`, PEFT `lora_magnitude_vector` ("M"), applied by LoRADoRA.swift.
    static let knownParts: Set<String> = ["lora_down.weight", "lora_up.weight", "lora_mid.weight", "alpha", "hada_w1_a",
                                          "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "lokr_w1",
                                          "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2",
                                          "A", "B", "dora_scale", "M"]

    /// The pure function: `baseShapes` (our parameter names, "unet.<...>" and "text_encoder.<...>", with shapes) and a
    /// LoRA file at `weight` -> the scaled delta of every weight it changes (W' = W + delta), keyed by those names.
    /// Throws, changing nothing, for a key that maps to no module, a part this does not implement, or a shape that
    /// does not fit. DoRA modules need the base weight (`baseWeight`: our parameter name -> its values), since their
    /// update renormalises W + delta. `unetWeight` (A1111's `<lora:NAME:TE:UNET>`) replaces `weight` for the UNet's
    /// modules.
    public static func deltas(_ file: LoRAFile, baseShapes: [String: [Int]], weight: Float, unetWeight: Float? = nil,
                              baseWeight: ((String) -> [Float]?)? = nil) throws -> [String: [Float]] {
        guard weight.isFinite, unetWeight?.isFinite ?? true else {
            throw LoRAError("\(file.name): LoRA weight must be a finite number, got \(unetWeight.map { "\($0) (UNet), " } ?? "")\(weight)")
        }
        let modules = try group(file, baseShapes: baseShapes)
        let peftConfig = try PEFTConfig(metadata: file.metadata)
        var out: [String: [Float]] = [:]
        for m in modules.values.sorted(by: { $0.parameter < $1.parameter }) {
            guard let shape = baseShapes[m.parameter] else { throw LoRAError("\(file.name): no parameter \(m.parameter)") }
            var (delta, rank) = try moduleDelta(m, shape: shape, file: file.name)
            let alpha = try m.parts["alpha"].map { r -> Float in
                let v = try r.floats()
                guard v.count == 1 else { throw LoRAError("\(file.name): \(m.key).alpha must hold one value, has \(v.count)") }
                return v[0]
            }
            var scale: Float = 1
            if m.peft, let c = peftConfig {
                scale = c.scale(parameter: m.parameter, fileRank: rank)
            } else if let alpha, let rank {
                scale = alpha / Float(rank)
            }
            let weight = m.parameter.hasPrefix("unet.") ? unetWeight ?? weight : weight
            if m.parts["dora_scale"] != nil || m.parts["M"] != nil {
                delta = try doraDelta(m, delta: delta, scale: scale, weight: weight, shape: shape, baseWeight: baseWeight, file: file.name)
            } else {
                let s = scale * weight
                for i in delta.indices { delta[i] *= s }
            }
            out[m.parameter] = delta
        }
        return out
    }

    /// Groups keys by module and resolves each module to our parameter name.
    static func group(_ file: LoRAFile, baseShapes: [String: [Int]]) throws -> [String: LoRAModule] {
        var kohya: [String: String] = [:]
        for name in baseShapes.keys where name.hasSuffix(".weight") {
            let path = String(name.dropLast(".weight".count))
            if path.hasPrefix("unet.") { kohya["lora_unet_" + path.dropFirst(5).replacingOccurrences(of: ".", with: "_")] = name }
            if path.hasPrefix("text_encoder.") {
                kohya["lora_te_" + path.dropFirst(13).replacingOccurrences(of: ".", with: "_")] = name
            }
        }
        for (k, v) in extraKohyaNames(baseShapes) where kohya[k] == nil { kohya[k] = v }   // SDXL: LoRASDXL.swift
        var modules: [String: LoRAModule] = [:]
        for key in file.records.keys.sorted() {
            let (module, part, peft) = try split(key, file: file.name)
            guard knownParts.contains(part) else {
                throw LoRAError("\(file.name): LoRA key '\(key)': '\(part)' is not a supported LoRA part (bias updates are not implemented)")
            }
            let parameter: String
            if peft {
                var path = module
                if path.hasPrefix("base_model.model.") { path = "unet." + path.dropFirst("base_model.model.".count) }
                var candidates = [path + ".weight"]
                if path.hasPrefix("text_encoder."), !path.hasPrefix("text_encoder.text_model.") {
                    candidates.append("text_encoder.text_model." + path.dropFirst(13) + ".weight")  // transformers 5 names
                }
                candidates += textEncoder2Candidates(path)
                guard let p = candidates.first(where: { baseShapes[$0] != nil }) else {
                    throw LoRAError("\(file.name): LoRA key '\(key)' maps to no module of the model")
                }
                parameter = p
            } else {
                guard let p = kohya[module] else { throw LoRAError("\(file.name): LoRA key '\(key)' maps to no module of the model") }
                parameter = p
            }
            modules[parameter, default: LoRAModule(key: module, parameter: parameter, peft: peft)].parts[part] = file.records[key]
        }
        guard !modules.isEmpty else { throw LoRAError("\(file.name): no LoRA modules found") }
        return modules
    }

    /// (module name, part, is diffusers/PEFT) of a key.
    static func split(_ key: String, file: String) throws -> (String, String, Bool) {
        for (marker, part) in [(".lora_A.weight", "A"), (".lora_B.weight", "B"), (".lora.down.weight", "A"), (".lora.up.weight", "B"),
                               (".lora_A.default.weight", "A"), (".lora_B.default.weight", "B"),
                               (".lora_magnitude_vector.weight", "M"), (".lora_magnitude_vector", "M")] where key.hasSuffix(marker) {
            return (String(key.dropLast(marker.count)), part, true)
        }
        if key.hasPrefix("lora_unet_") || key.hasPrefix("lora_te_") || key.hasPrefix("lora_te1_") || key.hasPrefix("lora_te2_") {
            guard let dot = key.firstIndex(of: ".") else { throw LoRAError("\(file): LoRA key '\(key)' has no part after the module name") }
            return (String(key[..<dot]), String(key[key.index(after: dot)...]), false)
        }
        if key.hasPrefix("unet.") || key.hasPrefix("text_encoder.") || key.hasPrefix("text_encoder_2.") || key.hasPrefix("base_model.model."),
           key.hasSuffix(".alpha") {
            return (String(key.dropLast(6)), "alpha", true)
        }
        throw LoRAError("\(file): LoRA key '\(key)' is in no known LoRA format (kohya lora_unet_/lora_te_/lora_te1_/lora_te2_, diffusers unet./text_encoder./text_encoder_2. lora_A/lora_B)")
    }

    /// The unscaled delta of one module (element count of `shape`) and its rank (A1111's `dim`; nil: none).
    static func moduleDelta(_ m: LoRAModule, shape: [Int], file: String) throws -> ([Float], Int?) {
        let p = m.parts
        let count = shape.reduce(1, *), out = shape[0], inK = count / max(out, 1)
        func mat(_ name: String) throws -> Matrix {
            guard let r = p[name] else { throw LoRAError("\(file): \(m.key) lacks \(name)") }
            return try Matrix(r)
        }
        func fit(_ d: [Float], _ what: String) throws -> [Float] {
            guard d.count == count else {
                throw LoRAError("\(file): \(m.key): the \(what) update has \(d.count) values, the weight \(m.parameter) \(shape) has \(count)")
            }
            return d
        }
        if p["A"] != nil || p["B"] != nil || p["lora_down.weight"] != nil || p["lora_up.weight"] != nil {
            let down = try mat(p["A"] != nil ? "A" : "lora_down.weight"), up = try mat(p["B"] != nil ? "B" : "lora_up.weight")
            let r = down.rows
            if p["lora_mid.weight"] != nil {
                let mid = try mat("lora_mid.weight")
                return (try fit(cpRebuild(mid, left: up.transposed(), right: down, file: file, key: m.key), "LoCon"), r)
            }
            guard up.cols == r else { throw LoRAError("\(file): \(m.key): up \(up.shape) does not match down \(down.shape)") }
            return (try fit(up.times(down).values, "LoRA"), r)
        }
        if p["hada_w1_a"] != nil {
            let w1a = try mat("hada_w1_a"), w1b = try mat("hada_w1_b"), w2a = try mat("hada_w2_a"), w2b = try mat("hada_w2_b")
            let d1: [Float], d2: [Float]
            if p["hada_t1"] != nil || p["hada_t2"] != nil {
                d1 = try cpRebuild(try mat("hada_t1"), left: w1a, right: w1b, file: file, key: m.key)
                d2 = try cpRebuild(try mat("hada_t2"), left: w2a, right: w2b, file: file, key: m.key)
            } else {
                guard w1a.cols == w1b.rows, w2a.cols == w2b.rows else { throw LoRAError("\(file): \(m.key): LoHa factor shapes do not chain") }
                d1 = w1a.times(w1b).values
                d2 = w2a.times(w2b).values
            }
            guard d1.count == d2.count else { throw LoRAError("\(file): \(m.key): LoHa halves differ in size") }
            return (try fit(zip(d1, d2).map { $0 * $1 }, "LoHa"), w1b.rows)
        }
        if p["lokr_w1"] != nil || p["lokr_w1_a"] != nil {
            let w1 = p["lokr_w1"] != nil ? try mat("lokr_w1") : try mat("lokr_w1_a").times(try mat("lokr_w1_b"))
            guard w1.rows > 0, w1.cols > 0, out % w1.rows == 0, shape.count >= 2, shape[1] % w1.cols == 0 else {
                throw LoRAError("\(file): \(m.key): LoKr w1 \(w1.shape) does not divide the weight \(shape)")
            }
            let o2 = out / w1.rows, i2 = shape[1] / w1.cols, k = inK / shape[1]
            let w2: [Float]
            if p["lokr_w2"] != nil { w2 = try mat("lokr_w2").values }
            else if p["lokr_t2"] != nil { w2 = try cpRebuild(try mat("lokr_t2"), left: try mat("lokr_w2_a"), right: try mat("lokr_w2_b"), file: file, key: m.key) }
            else { w2 = try mat("lokr_w2_a").times(try mat("lokr_w2_b")).values }
            guard w2.count == o2 * i2 * k else { throw LoRAError("\(file): \(m.key): LoKr w2 has \(w2.count) values, expected \(o2 * i2 * k)") }
            var d = [Float](repeating: 0, count: count)
            for a in 0..<w1.rows { for c in 0..<w1.cols {
                let s = w1.values[a * w1.cols + c]
                for b in 0..<o2 { for e in 0..<i2 {
                    let dst = ((a * o2 + b) * shape[1] + c * i2 + e) * k, src = (b * i2 + e) * k
                    for kk in 0..<k { d[dst + kk] = s * w2[src + kk] }
                } }
            } }
            let dim = p["lokr_w1_b"].map { $0.shape[0] } ?? p["lokr_w2_b"].map { $0.shape[0] }
            return (d, dim)
        }
        throw LoRAError("\(file): \(m.key): incomplete module (parts: \(p.keys.sorted().joined(separator: ", ")))")
    }

    /// result[p, q, k] = sum_{i, j} t[i, j, k] left[i, p] right[j, q] (lyco_helpers make_weight_cp and
    /// rebuild_cp_decomposition with left = up^T).
    static func cpRebuild(_ t: Matrix, left: Matrix, right: Matrix, file: String, key: String) throws -> [Float] {
        guard t.shape.count >= 2, t.shape[0] == left.rows, t.shape[1] == right.rows else {
            throw LoRAError("\(file): \(key): tucker core \(t.shape) does not match its factors \(left.shape), \(right.shape)")
        }
        let (a, b) = (t.shape[0], t.shape[1]), k = t.values.count / (a * b), (P, Q) = (left.cols, right.cols)
        var out = [Float](repeating: 0, count: P * Q * k)
        for p in 0..<P { for q in 0..<Q { for i in 0..<a {
            let l = left.values[i * P + p]
            for j in 0..<b {
                let lr = l * right.values[j * Q + q], base = (i * b + j) * k, dst = (p * Q + q) * k
                for kk in 0..<k { out[dst + kk] += lr * t.values[base + kk] }
            }
        } } }
        return out
    }
}

/// A factor as a row-major matrix: rows = first axis, the remaining axes flattened (kept in `shape`).
struct Matrix {
    var values: [Float]
    var shape: [Int]
    var rows: Int { shape.first ?? 0 }
    var cols: Int { rows == 0 ? 0 : values.count / rows }

    init(values: [Float], shape: [Int]) {
        self.values = values
        self.shape = shape
    }
    init(_ r: TensorRecord) throws {
        guard !r.shape.isEmpty else { throw LoRAError("tensor \(r.name) is a scalar where a matrix is expected") }
        values = try r.floats()
        shape = r.shape
    }

    func transposed() -> Matrix {
        var v = [Float](repeating: 0, count: values.count)
        for i in 0..<rows { for j in 0..<cols { v[j * rows + i] = values[i * cols + j] } }
        return Matrix(values: v, shape: [cols, rows])
    }

    /// self (m, k) @ other (k, n) through sgemm.
    func times(_ other: Matrix) -> Matrix {
        let c = matmul(Tensor(values, shape: [rows, cols]), Tensor(other.values, shape: [other.rows, other.cols]))
        return Matrix(values: c.contiguous().toArray(), shape: [rows, other.cols])
    }
}

/// diffusers' `lora_adapter_metadata`: PEFT LoraConfig dicts flattened with "unet." / "text_encoder." prefixes.
struct PEFTConfig {
    struct Part {
        var r: Int?
        var alpha: Double?
        var rslora = false
        var rankPattern: [String: Int] = [:]
        var alphaPattern: [String: Double] = [:]
    }
    var parts: [String: Part] = [:]

    init?(metadata: [String: String]) throws {
        guard let raw = metadata["lora_adapter_metadata"] else { return nil }
        guard let obj = try? JSONSerialization.jsonObject(with: Data(raw.utf8)) as? [String: Any] else {
            throw LoRAError("lora_adapter_metadata is not a JSON object")
        }
        for (k, v) in obj {
            guard let dot = k.firstIndex(of: ".") else { continue }
            let comp = String(k[..<dot]), field = String(k[k.index(after: dot)...])
            var p = parts[comp] ?? Part()
            switch field {
            case "r": p.r = (v as? NSNumber)?.intValue
            case "lora_alpha": p.alpha = (v as? NSNumber)?.doubleValue
            case "use_rslora": p.rslora = (v as? Bool) ?? false
            case "rank_pattern": p.rankPattern = ((v as? [String: Any]) ?? [:]).compactMapValues { ($0 as? NSNumber)?.intValue }
            case "alpha_pattern": p.alphaPattern = ((v as? [String: Any]) ?? [:]).compactMapValues { ($0 as? NSNumber)?.doubleValue }
            default: break
            }
            parts[comp] = p
        }
    }

    /// lora_alpha / r (or / sqrt(r)), with PEFT's per-module patterns (a key matches a module path ending in it).
    func scale(parameter: String, fileRank: Int?) -> Float {
        let comp = LoRA.component(ofParameter: parameter)
        guard let p = parts[comp] else { return 1 }
        var module = String(parameter.dropLast(".weight".count).dropFirst(comp.count + 1))
        if comp != "unet", module.hasPrefix("text_model.") { module = String(module.dropFirst(11)) }
        func matches(_ key: String) -> Bool { module == key || module.hasSuffix("." + key) }
        let r = p.rankPattern.first { matches($0.key) }?.value ?? p.r ?? fileRank ?? 1
        let alpha = p.alphaPattern.first { matches($0.key) }?.value ?? p.alpha ?? Double(r)
        return Float(p.rslora ? alpha / Double(r).squareRoot() : alpha / Double(r))
    }
}
