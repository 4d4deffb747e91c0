// torch.save zip checkpoints (torch/serialization.py `_load` with weights_only=True semantics):
// `<archive>/data.pkl` is unpickled with the restricted Unpickler; persistent ids
// ('storage', <torch.XStorage>, key, location, numel) name zip entries `<archive>/data/<key>`.
// Flattening picks Lightning's checkpoint["state_dict"] or a top-level state dict.
import Foundation

public final class TorchCheckpoint {
    public let archive: ZipArchive
    /// Folder prefix of the entries ("archive" or the saved file's stem).
    public let prefix: String
    public let root: PickleValue
    /// Objects created while unpickling; bounds the work of walking the result.
    public let objectCount: Int

    public convenience init(url: URL, policy: UnknownCallPolicy = .refuse) throws {
        try self.init(buffer: ByteBuffer(mapping: url), policy: policy)
    }

    public init(buffer: ByteBuffer, policy: UnknownCallPolicy = .refuse) throws {
        if buffer.count >= 2, buffer.u8(0) == 0x80, buffer.u8(1) <= 5 {
            throw CheckpointError("legacy (pre-1.6, non-zip) torch.save format is not supported; re-save it with torch >= 1.6")
        }
        let zip = try ZipArchive(buffer: buffer)
        guard let pkl = zip.entries.first(where: { e in
            let parts = e.name.split(separator: "/", omittingEmptySubsequences: false)
            return parts.count == 2 && parts[1] == "data.pkl"
        }) else { throw CheckpointError("torch checkpoint: no <archive>/data.pkl entry in the zip") }
        let prefix = String(pkl.name.dropLast("/data.pkl".count))
        if let bo = zip.entry(prefix + "/byteorder") {
            let s = String(decoding: try zip.data(of: bo), as: UTF8.self)
            guard s == "little" else { throw CheckpointError("torch checkpoint: byteorder \"\(s.prefix(20))\" is not supported (only little)") }
        }
        var storages: [String: TorchStorageRef] = [:]
        let persistentLoad: (PickleValue) throws -> PickleValue = { pid in
            guard let t = pid.sequenceItems, t.count == 5, t[0].stringValue == "storage" else {
                throw CheckpointError("pickle: unsupported persistent id \(pid.summary())")
            }
            guard case .global(let m, let n) = t[1] else { throw CheckpointError("pickle: storage type is not a global") }
            guard let key = t[2].stringValue, !key.isEmpty, key.utf8.allSatisfy({ $0 != UInt8(ascii: "/") && $0 >= 0x20 }), key != "..",
                  let numel = t[4].intValue, numel >= 0 else {
                throw CheckpointError("pickle: malformed storage id \(pid.summary())")
            }
            if let s = storages[key] { return .storage(s) }
            let dtype: StorageDType
            switch (m, n) {
            case ("torch", _) where n.hasSuffix("Storage"):
                guard let d = TorchCheckpoint.storageDType[n] else { throw CheckpointError("torch checkpoint: unsupported storage type torch.\(n)") }
                dtype = d
            case ("torch.storage", "UntypedStorage"), ("torch", "UntypedStorage"): dtype = .U8
            default: throw CheckpointError("pickle: refused storage type \(m).\(n)")
            }
            let name = "\(prefix)/data/\(key)"
            guard let e = zip.entry(name) else { throw CheckpointError("torch checkpoint: storage entry \(name) is missing") }
            let need = try Checked.mul(numel, dtype.byteSize, what: name)
            guard e.uncompressedSize >= need else {
                throw CheckpointError("torch checkpoint: \(name) has \(e.uncompressedSize) bytes, storage needs \(need)")
            }
            let s = TorchStorageRef(key: key, dtype: dtype, typeName: "\(m).\(n)",
                                    location: t[3].stringValue ?? "", elementCount: numel)
            storages[key] = s
            return .storage(s)
        }
        let pklData = try zip.data(of: pkl)
        let (root, count) = try Unpickler.load(pklData, policy: policy, persistentLoad: persistentLoad)
        self.archive = zip
        self.prefix = prefix
        self.root = root
        self.objectCount = count
    }

    static let storageDType: [String: StorageDType] = [
        "FloatStorage": .F32, "DoubleStorage": .F64, "HalfStorage": .F16, "BFloat16Storage": .BF16,
        "LongStorage": .I64, "IntStorage": .I32, "ShortStorage": .I16, "CharStorage": .I8,
        "ByteStorage": .U8, "BoolStorage": .BOOL, "ComplexFloatStorage": .C64,
    ]

    /// The dict holding the weights: checkpoint["state_dict"] (Lightning / CompVis) or the top level.
    public var stateDict: PickleDict? {
        guard let top = root.dictValue else { return nil }
        if let sd = top["state_dict"]?.dictValue { return sd }
        if let sd = top["model"]?.dictValue, top.values.allSatisfy({ $0.tensorValue == nil }) { return sd }
        return top
    }

    /// Tensors of the state dict by name; nested dicts of tensors are joined with ".".
    /// Storages are shared between views; each record is validated against its storage size.
    public func records() throws -> [String: TensorRecord] {
        guard let sd = stateDict else {
            throw CheckpointError("torch checkpoint: top level is \(root.typeName), not a dict of tensors")
        }
        var out: [String: TensorRecord] = [:]
        var storages: [String: TensorStorage] = [:]
        var budget = 4 * objectCount + 1024
        func walk(_ d: PickleDict, _ path: String) throws {
            for i in 0..<d.count {
                budget -= 1
                guard budget >= 0 else { throw CheckpointError("torch checkpoint: too many tensor paths (shared sub-dicts repeated)") }
                let key: String
                switch d.keys[i] {
                case .string(let s): key = s
                case .int(let n): key = String(n)
                default: continue
                }
                let name = path.isEmpty ? key : path + "." + key
                switch d.values[i] {
                case .tensor(let t): out[name] = try record(name, t, &storages)
                case .dict(let sub): try walk(sub, name)
                default: continue
                }
            }
        }
        try walk(sd, "")
        return out
    }

    private func record(_ name: String, _ t: TorchTensorRef, _ storages: inout [String: TensorStorage]) throws -> TensorRecord {
        let storage: TensorStorage
        if let s = storages[t.storage.key] { storage = s } else {
            let entryName = "\(prefix)/data/\(t.storage.key)"
            guard let e = archive.entry(entryName) else { throw CheckpointError("torch checkpoint: \(entryName) is missing") }
            let zip = archive
            storage = TensorStorage(byteCount: t.storage.elementCount * t.storage.dtype.byteSize) { try zip.contents(of: e) }
            storages[t.storage.key] = storage
        }
        let off = try Checked.mul(t.storageOffset, t.dtype.byteSize, what: "tensor \"\(name)\" offset")
        return try TensorRecord(name: name, dtype: t.dtype, shape: t.shape, strides: t.stride, byteOffset: off, storage: storage)
    }

    /// Scalar training info commonly found next to the state dict (global_step, epoch).
    public func integer(_ key: String) -> Int? { root.dictValue?[key]?.intValue }
}
