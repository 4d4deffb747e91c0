// Uniform entry point: format detection by magic bytes (zip "PK" -> torch.save, 0x80 -> legacy torch.save
// pickles, "ustar" at 257 -> legacy tar (refused), otherwise safetensors' u64 header length + '{') or folder
// (diffusers), giving
// `[String: TensorRecord]` plus metadata. CompVis naming (LitEma, model families) lives in the CompVis module.
import Foundation

public struct CheckpointFile {
    public enum Format: String { case safetensors, torchZip = "torch zip", torchLegacy = "torch legacy", diffusersFolder = "diffusers folder" }
    public let url: URL?
    public let format: Format
    public let tensors: [String: TensorRecord]
    public let metadata: [String: String]
    public let diffusers: DiffusersFolder?
    public let torch: TorchCheckpoint?

    public init(url: URL?, format: Format, tensors: [String: TensorRecord], metadata: [String: String],
                diffusers: DiffusersFolder?, torch: TorchCheckpoint?) {
        self.url = url
        self.format = format
        self.tensors = tensors
        self.metadata = metadata
        self.diffusers = diffusers
        self.torch = torch
    }

    public static func open(_ url: URL, variant: String? = nil) throws -> CheckpointFile {
        if DiffusersFolder.isFolder(url) {
            let f = try DiffusersFolder(url: url, variant: variant)
            var all: [String: TensorRecord] = [:]
            for c in f.components {
                for (k, r) in try c.tensors() {
                    let name = c.name.isEmpty ? k : c.name + "." + k
                    all[name] = r.renamed(name)
                }
            }
            var meta: [String: String] = [:]
            if let cls = f.className { meta["_class_name"] = cls }
            if let v = f.modelIndex?["_diffusers_version"] as? String { meta["_diffusers_version"] = v }
            return CheckpointFile(url: url, format: .diffusersFolder, tensors: all, metadata: meta, diffusers: f, torch: nil)
        }
        return try openFile(url)
    }

    static func openFile(_ url: URL) throws -> CheckpointFile {
        do { return try open(buffer: ByteBuffer(mapping: url), url: url) }
        catch let e as CheckpointError where !e.message.contains(url.lastPathComponent) {
            throw CheckpointError("\(url.lastPathComponent): \(e.message)")
        }
    }

    /// In-memory input (tests, fuzzing).
    public static func open(data: Data) throws -> CheckpointFile {
        try open(buffer: ByteBuffer(copying: data), url: nil)
    }

    public static func detectFormat(_ b: ByteBuffer) -> Format {
        if b.count >= 2, b.u8(0) == UInt8(ascii: "P"), b.u8(1) == UInt8(ascii: "K") { return .torchZip }
        // A safetensors header is JSON: '{' right after the 8-byte length. Checked before the legacy-pickle magic,
        // because a header length of 0x80 + 256k also starts with the bytes 0x80, k.
        if b.count >= 9, b.u8(8) == UInt8(ascii: "{") { return .safetensors }
        if TorchCheckpoint.isLegacyPickle(b) || TorchCheckpoint.isLegacyTar(b) { return .torchLegacy }   // tar: refused
        return .safetensors
    }

    static func open(buffer: ByteBuffer, url: URL?) throws -> CheckpointFile {
        switch detectFormat(buffer) {
        case .torchZip, .torchLegacy:
            let ck = try TorchCheckpoint(buffer: buffer)
            var meta: [String: String] = [:]
            if let top = ck.root.dictValue {
                for i in 0..<top.count {
                    guard let k = top.keys[i].stringValue, k != "state_dict" else { continue }
                    switch top.values[i] {
                    case .int(let n): meta[k] = String(n)
                    case .string(let s): meta[k] = s
                    case .float(let f): meta[k] = String(f)
                    default: break
                    }
                }
            }
            return CheckpointFile(url: url, format: ck.isLegacy ? .torchLegacy : .torchZip, tensors: try ck.records(), metadata: meta, diffusers: nil, torch: ck)
        default:
            let st = try SafeTensors(buffer: buffer)
            return CheckpointFile(url: url, format: .safetensors, tensors: st.tensors, metadata: st.metadata ?? [:],
                                  diffusers: nil, torch: nil)
        }
    }
}
