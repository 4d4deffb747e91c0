import Checkpoints
import Foundation
import TensorCore

// Strict state-dict loading: every parameter of a module must be found with the right shape; keys the module does
// not use are reported. Source layouts (CompVis, diffusers, LitEma) are mapped to our names by declarative rules.

/// One renaming rule from a checkpoint's key to our parameter name.
public enum KeyRule: Sendable {
    /// Keep only keys starting with `prefix` and drop it.
    case stripPrefix(String)
    /// Replace every occurrence of `from` with `to`.
    case replace(String, String)
    /// Regular-expression substitution (NSRegularExpression template syntax, $1 ...).
    case regex(String, String)

    func apply(_ key: String) -> String? {
        switch self {
        case .stripPrefix(let p): return key.hasPrefix(p) ? String(key.dropFirst(p.count)) : nil
        case .replace(let a, let b): return key.replacingOccurrences(of: a, with: b)
        case .regex(let pattern, let template):
            guard let re = try? NSRegularExpression(pattern: pattern) else { return key }
            return re.stringByReplacingMatches(in: key, range: NSRange(key.startIndex..., in: key), withTemplate: template)
        }
    }
}

public struct LoadReport: CustomStringConvertible {
    public var loaded: [String] = []
    public var missing: [String] = []
    public var unexpected: [String] = []
    public var mismatched: [(name: String, expected: [Int], found: [Int])] = []
    /// Parameters the caller declared optional that the records lack (left as initialised).
    public var skipped: [String] = []
    public var isComplete: Bool { missing.isEmpty && mismatched.isEmpty }
    public var description: String {
        var lines = ["loaded \(loaded.count) tensors"]
        if !missing.isEmpty { lines.append("missing (\(missing.count)): " + missing.prefix(20).joined(separator: ", ") + (missing.count > 20 ? ", ..." : "")) }
        if !mismatched.isEmpty { lines.append("shape mismatches: " + mismatched.prefix(20).map { "\($0.name) expected \($0.expected) found \($0.found)" }.joined(separator: "; ")) }
        if !unexpected.isEmpty { lines.append("unexpected (\(unexpected.count)): " + unexpected.prefix(20).joined(separator: ", ") + (unexpected.count > 20 ? ", ..." : "")) }
        return lines.joined(separator: "\n")
    }
}

extension TensorRecord {
    /// The record as a tensor: float32 kept, bfloat16/float16 kept as storage types, other types converted to float32.
    public func tensor() throws -> Tensor {
        switch dtype {
        case .BF16, .F16:
            let t = Tensor(storage: Storage(byteCount: elementCount * 2), shape: shape, dtype: dtype == .BF16 ? .bfloat16 : .float16)
            if isContiguous {
                try withRawBytes { raw in t.storage.base.copyMemory(from: raw.baseAddress!, byteCount: elementCount * 2) }
                return t
            }
            return Tensor(try floats(), shape: shape).to(t.dtype)
        default:
            let t = Tensor.empty(shape)
            try copyFloats(into: t.data)
            return t
        }
    }
}

extension Module {
    /// Loads `records` (already renamed to our names, e.g. by `mapKeys`) into the parameters. Throws a `LoadError`
    /// listing missing and mis-shaped weights; unexpected keys are returned in the report. 1x1-conv <-> linear
    /// reshapes (SD1 vs SD2 proj_in/proj_out) are accepted when the element counts agree. Names in `optional` (weights
    /// the forward pass never reads) may be absent; they are listed in `skipped`. Parameters are stored as
    /// `WeightStorage.current` says (owned float32 copies unless a scope asks for inference storage).
    @discardableResult
    public func load(_ records: [String: TensorRecord], component: String = "model", optional: Set<String> = []) throws -> LoadReport {
        var report = LoadReport()
        var used = Set<String>()
        let storage = WeightStorage.current
        let lower = storage == .float32 ? [] : lowerPrecisionWeights(embeddings: storage == .asStored)
        for (name, param) in namedParameters {
            guard let r = records[name] else {
                if optional.contains(name) { report.skipped.append(name) } else { report.missing.append(name) }
                continue
            }
            used.insert(name)
            let squeezed = { (s: [Int]) in s.filter { $0 != 1 } }
            guard r.shape == param.shape || (squeezed(r.shape) == squeezed(param.shape) && r.elementCount == param.count) else {
                report.mismatched.append((name, param.shape, r.shape))
                continue
            }
            try param.load(r, storage: storage, lowerPrecision: lower.contains(ObjectIdentifier(param)))
            report.loaded.append(name)
        }
        report.unexpected = records.keys.filter { !used.contains($0) }.sorted()
        guard report.isComplete else { throw LoadError(report: report, component: component) }
        return report
    }

    /// Writes the parameters to a safetensors file (float32, or bfloat16 when `dtype` says so).
    public func save(to url: URL, dtype: DType = .float32, metadata: [String: String] = [:]) throws {
        let entries: [SafeTensorsEntry] = namedParameters.map { name, t in
            let c = t.to(dtype).contiguous()
            let bytes = Data(bytes: c.storage.base + c.offset * dtype.byteSize, count: c.count * dtype.byteSize)
            return SafeTensorsEntry(name: name, dtype: dtype == .float32 ? .F32 : (dtype == .bfloat16 ? .BF16 : .F16), shape: t.shape, bytes: bytes)
        }
        try SafeTensors.write(entries, metadata: metadata, to: url)
    }
}

/// Applies rules in order to every key; a key that a `stripPrefix` rule rejects is dropped.
public func mapKeys(_ records: [String: TensorRecord], _ rules: [KeyRule]) -> [String: TensorRecord] {
    var out: [String: TensorRecord] = [:]
    for (key, r) in records {
        var k: String? = key
        for rule in rules { k = k.flatMap(rule.apply) }
        if let k { out[k] = r }
    }
    return out
}
