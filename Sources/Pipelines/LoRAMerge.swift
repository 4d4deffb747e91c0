// Merging LoRAs into a loaded model's weights at load time (no per-step cost), as diffusers' fuse_lora and
// AUTOMATIC1111's Lora extension (network_apply_weights: weight += updown) do, and exact unmerging: the original
// values of every changed weight are kept, so a server can switch LoRAs without reloading the base model.
// Also the web UIs' prompt syntax `<lora:NAME:WEIGHT>` (AUTOMATIC1111 modules/extra_networks.py parse_prompt).
import Foundation
import TensorCore

/// LoRAs merged into a bundle: what was applied and the weights' original values.
public final class AppliedLoRAs {
    public struct Entry {
        public let name: String
        public let weight: Float
        public let shortHash: String?
    }
    public let entries: [Entry]
    /// The original tensors (their storage, in place: a mapped file's bytes or a 16-bit weight stay as they were) of
    /// every weight the LoRAs changed, keyed by "unet.<...>" / "text_encoder.<...>".
    let originals: [String: Tensor]
    init(entries: [Entry], originals: [String: Tensor]) {
        self.entries = entries
        self.originals = originals
    }
    public var changedParameters: [String] { originals.keys.sorted() }

    /// AUTOMATIC1111's infotext value: "name: hash, name: hash".
    public var webUIHashes: String? {
        let named = entries.compactMap { e in e.shortHash.map { "\(e.name): \($0)" } }
        return named.isEmpty ? nil : named.joined(separator: ", ")
    }
}

extension ModelBundle {
    /// The parameters a LoRA may change: the UNet's ("unet.<name>"), the CLIP text encoder's ("text_encoder.<name>") and
    /// SDXL's second text encoder's ("text_encoder_2.<name>").
    public var loraTargets: [String: Tensor] {
        var out: [String: Tensor] = [:]
        for (n, t) in unet.namedParameters { out["unet." + n] = t }
        if let te = textEncoder { for (n, t) in te.namedParameters { out["text_encoder." + n] = t } }
        if let te2 = textEncoder2 { for (n, t) in te2.namedParameters { out["text_encoder_2." + n] = t } }   // SDXL
        return out
    }

    /// Merges `loras` (file, weight) in order: W += delta(file, weight). Every file is checked against the model
    /// before any weight changes. Throws if LoRAs are already merged (unmerge first).
    @discardableResult
    public func mergeLoRAs(_ loras: [(file: LoRAFile, weight: Float)]) throws -> AppliedLoRAs {
        try mergeLoRAs(withUNetWeights: loras.map { (file: $0.file, weight: $0.weight, unetWeight: Float?.none) })
    }

    /// As above, with the UNet's part at `unetWeight` where given (A1111's `<lora:NAME:TE:UNET>`; `weight` then
    /// scales the text encoder's part).
    @discardableResult
    public func mergeLoRAs(withUNetWeights loras: [(file: LoRAFile, weight: Float, unetWeight: Float?)]) throws -> AppliedLoRAs {
        guard appliedLoRAs == nil else { throw LoRAError("LoRAs are already merged into this model: unmerge them first") }
        let targets = loraTargets
        let shapes = targets.mapValues(\.shape)
        // DoRA modules decompose against the original weights (all deltas are computed before any merge).
        let deltas = try loras.map { try LoRA.deltas($0.file, baseShapes: shapes, weight: $0.weight, unetWeight: $0.unetWeight,
                                                     baseWeight: { targets[$0]?.contiguous().toArray() }) }
        var originals: [String: Tensor] = [:]
        for d in deltas {
            for (name, delta) in d.sorted(by: { $0.key < $1.key }) {
                guard let t = targets[name] else { continue }
                if originals[name] == nil { originals[name] = t.alias() }
                // float32 sums (of the widened weight when it is held in 16 bits); a bf16 weight (bf16 compute, which
                // rounds weights to bf16 anyway) stays bf16. The original tensor is not written: merged values get
                // their own storage, the weight is rebound to them and back by `unmergeLoRAs`.
                var merged = t.contiguous().toArray()
                for i in merged.indices { merged[i] += delta[i] }
                let m = Tensor(merged, shape: t.shape)
                t.rebind(to: t.dtype == .bfloat16 ? m.to(.bfloat16) : m)
            }
        }
        let entries = try loras.map { AppliedLoRAs.Entry(name: $0.file.name, weight: $0.weight, shortHash: try? $0.file.shortHash()) }
        let applied = AppliedLoRAs(entries: entries, originals: originals)
        appliedLoRAs = applied
        return applied
    }

    /// Restores the weights the merged LoRAs changed, bit for bit.
    public func unmergeLoRAs() {
        guard let applied = appliedLoRAs else { return }
        let targets = loraTargets
        for (name, original) in applied.originals { targets[name]?.rebind(to: original) }
        appliedLoRAs = nil
    }
}

/// One `<lora:NAME:WEIGHT>` of a prompt. `weight` scales the text encoder's part and, unless `unetWeight` is given
/// (`<lora:NAME:TE:UNET>`, `unet=`), the UNet's.
public struct LoRATag: Equatable {
    public let name: String
    public let weight: Float
    public let unetWeight: Float?
    public init(name: String, weight: Float, unetWeight: Float? = nil) {
        self.name = name
        self.weight = weight
        self.unetWeight = unetWeight
    }
}

public enum LoRAPrompt {
    /// Removes every `<lora:NAME>` / `<lora:NAME:WEIGHT>` / `<lora:NAME:TE:UNET>` / `<lora:NAME:te=X:unet=Y>` from
    /// `prompt` (A1111's extra-network syntax, `tag(_:)`) and returns the cleaned text with the tags in order. Other
    /// `<...>` text is left alone; a malformed weight is an error.
    public static func extract(_ prompt: String) throws -> (text: String, tags: [LoRATag]) {
        guard let re = try? NSRegularExpression(pattern: "<lora:([^>]+)>") else { return (prompt, []) }
        let ns = prompt as NSString
        var tags: [LoRATag] = []
        for m in re.matches(in: prompt, range: NSRange(location: 0, length: ns.length)) {
            tags.append(try tag(ns.substring(with: m.range(at: 1))))
        }
        let text = re.stringByReplacingMatches(in: prompt, range: NSRange(location: 0, length: ns.length), withTemplate: "")
        return (text, tags)
    }

    /// The file extensions a Lora folder's entries have (the web UI's Lora folder).
    public static let fileExtensions = ["safetensors", "pt", "ckpt", "bin"]

    /// Finds NAME.safetensors (or .pt, .ckpt, .bin) in `directory` or its subfolders, as the web UI's Lora folder.
    public static func resolve(_ name: String, in directory: URL) throws -> URL {
        let exts = fileExtensions
        for e in exts {
            let u = directory.appendingPathComponent(name).appendingPathExtension(e)
            if FileManager.default.fileExists(atPath: u.path) { return u }
        }
        if let en = FileManager.default.enumerator(at: directory, includingPropertiesForKeys: nil) {
            for case let u as URL in en where exts.contains(u.pathExtension.lowercased()) && u.deletingPathExtension().lastPathComponent == name {
                return u
            }
        }
        throw LoRAError("LoRA '\(name)' not found in \(directory.path) (looked for \(exts.map { "\(name).\($0)" }.joined(separator: ", ")))")
    }
}
