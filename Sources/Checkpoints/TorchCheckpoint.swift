// torch.save checkpoints, read with torch.load(weights_only=True) semantics (torch/serialization.py):
//  - zip (torch >= 1.6, `_load`): `<archive>/data.pkl` is unpickled with the restricted Unpickler; persistent ids
//    ('storage', <torch.XStorage>, key, location, numel) name zip entries `<archive>/data/<key>`.
//  - legacy (torch < 1.6, or _use_new_zipfile_serialization=False; `_legacy_load`): pickles in a row, the magic number
//    0x1950a86a20f9469cfc6c, the protocol version 1001, sys_info, the object itself (persistent ids ('storage',
//    <torch.XStorage>, root_key, location, numel, view_metadata), view_metadata None or (view_key, offset, numel) in
//    elements), the list of storage keys; then, for each key in that list's order, the storage's bytes as
//    torch/csrc/serialization.cpp `THPStorage_writeFileRaw` (save_size=true) writes them: the element count as a
//    little-endian int64, then count * element size bytes, little-endian. The data stays in the (mapped) file.
//  - the legacy tar format (torch < 0.4: tar members `storages`, `tensors`, `pickle`) is refused, as torch.load refuses
//    it with weights_only=True.
// Flattening picks Lightning's checkpoint["state_dict"] or a top-level state dict.
import Foundation

public final class TorchCheckpoint {
    private enum Source {
        case zip(ZipArchive, prefix: String)
        /// The file and, for every storage key (roots and views), the byte range of its data in the file.
        case legacy(ByteBuffer, [String: Range<Int>])
    }
    private let source: Source
    /// The zip archive (nil for a legacy file).
    public var archive: ZipArchive? {
        if case .zip(let z, _) = source { return z }
        return nil
    }
    /// Folder prefix of the zip entries ("archive" or the saved file's stem); nil for a legacy file.
    public var prefix: String? {
        if case .zip(_, let p) = source { return p }
        return nil
    }
    /// True for the legacy (pre-1.6, non-zip) format.
    public var isLegacy: Bool {
        if case .legacy = source { return true }
        return false
    }
    public let root: PickleValue
    /// Objects created while unpickling; bounds the work of walking the result.
    public let objectCount: Int

    public convenience init(url: URL, policy: UnknownCallPolicy = .refuse) throws {
        try self.init(buffer: ByteBuffer(mapping: url), policy: policy)
    }

    public init(buffer: ByteBuffer, policy: UnknownCallPolicy = .refuse) throws {
        if Self.isLegacyTar(buffer) {
            throw CheckpointError("legacy tar torch.save format (torch < 0.4) is not supported (torch.load refuses it with "
                                  + "weights_only=True); load it with that torch and re-save it with torch.save")
        }
        if Self.isLegacyPickle(buffer) {
            (source, root, objectCount) = try Self.loadLegacy(buffer, policy: policy)
        } else {
            (source, root, objectCount) = try Self.loadZip(buffer, policy: policy)
        }
    }

    /// A pickle protocol 2-5 header: the legacy format's first pickle (the magic number).
    static func isLegacyPickle(_ b: ByteBuffer) -> Bool { b.count >= 2 && b.u8(0) == 0x80 && b.u8(1) <= 5 }
    /// A POSIX/GNU tar header ("ustar" at byte 257).
    static func isLegacyTar(_ b: ByteBuffer) -> Bool {
        b.count >= 512 && Array(UnsafeRawBufferPointer(rebasing: b.bytes[257..<262])) == Array("ustar".utf8)
    }

    /// Parses a storage persistent id: ('storage', storage_type, key, location, numel) in zip files, plus
    /// view_metadata (None or (view_key, offset, numel), elements of the storage's dtype) in legacy files.
    private static func storageID(_ pid: PickleValue, legacy: Bool) throws -> (TorchStorageRef, view: (key: String, offset: Int, count: Int)?) {
        guard let t = pid.sequenceItems, t.count == (legacy ? 6 : 5), t[0].stringValue == "storage" else {
            throw CheckpointError("pickle: unsupported persistent id \(pid.summary())")
        }
        guard case .global(let m, let n) = t[1] else { throw CheckpointError("pickle: storage type is not a global") }
        func validKey(_ v: PickleValue) -> String? {
            guard let key = v.stringValue, !key.isEmpty, key.utf8.allSatisfy({ $0 != UInt8(ascii: "/") && $0 >= 0x20 }), key != ".." else { return nil }
            return key
        }
        guard let key = validKey(t[2]), let numel = t[4].intValue, numel >= 0 else {
            throw CheckpointError("pickle: malformed storage id \(pid.summary())")
        }
        let dtype: StorageDType
        switch (m, n) {
        case ("torch", _) where n.hasSuffix("Storage"):
            guard let d = storageDType[n] else { throw CheckpointError("torch checkpoint: unsupported storage type torch.\(n)") }
            dtype = d
        case ("torch.storage", "UntypedStorage"), ("torch", "UntypedStorage"): dtype = .U8
        default: throw CheckpointError("pickle: refused storage type \(m).\(n)")
        }
        _ = try Checked.mul(numel, dtype.byteSize, what: "storage \(key)")
        var view: (key: String, offset: Int, count: Int)?
        if legacy, !t[5].isNone {
            guard let v = t[5].sequenceItems, v.count == 3, let vk = validKey(v[0]), let off = v[1].intValue,
                  let count = v[2].intValue, off >= 0, count >= 0 else {
                throw CheckpointError("pickle: malformed storage view \(t[5].summary())")
            }
            _ = try Checked.mul(try Checked.add(off, count, what: "storage view \(vk)"), dtype.byteSize, what: "storage view \(vk)")
            view = (vk, off, count)
        }
        let ref = TorchStorageRef(key: key, dtype: dtype, typeName: "\(m).\(n)", location: t[3].stringValue ?? "", elementCount: numel)
        return (ref, view)
    }

    private static func loadZip(_ buffer: ByteBuffer, policy: UnknownCallPolicy) throws -> (Source, PickleValue, Int) {
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
            let (s, _) = try storageID(pid, legacy: false)
            if let seen = storages[s.key] { return .storage(seen) }
            let name = "\(prefix)/data/\(s.key)"
            guard let e = zip.entry(name) else { throw CheckpointError("torch checkpoint: storage entry \(name) is missing") }
            let need = s.elementCount * s.dtype.byteSize
            guard e.uncompressedSize >= need else {
                throw CheckpointError("torch checkpoint: \(name) has \(e.uncompressedSize) bytes, storage needs \(need)")
            }
            storages[s.key] = s
            return .storage(s)
        }
        let (root, count) = try Unpickler.load(try zip.data(of: pkl), policy: policy, persistentLoad: persistentLoad)
        return (.zip(zip, prefix: prefix), root, count)
    }

    /// 0x1950a86a20f9469cfc6c as a pickle LONG: little-endian two's complement bytes.
    static let legacyMagic: [UInt8] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]

    private static func loadLegacy(_ buffer: ByteBuffer, policy: UnknownCallPolicy) throws -> (Source, PickleValue, Int) {
        var pos = 0, objects = 0
        let noPersistentIDs: (PickleValue) throws -> PickleValue = { pid in
            throw CheckpointError("pickle: unexpected persistent id \(pid.summary())")
        }
        func pickle(_ what: String, _ persistentLoad: @escaping (PickleValue) throws -> PickleValue) throws -> PickleValue {
            do {
                let (v, n, used) = try Unpickler.loadPrefix(UnsafeRawBufferPointer(rebasing: buffer.bytes[pos...]), policy: policy,
                                                            persistentLoad: persistentLoad)
                pos += used
                objects += n
                return v
            } catch let e as CheckpointError {
                throw CheckpointError("legacy torch file: \(what) (pickle at byte \(pos)): \(e.message)")
            }
        }
        guard case .bigInt(let magic) = try pickle("magic number", noPersistentIDs), Array(magic) == legacyMagic else {
            throw CheckpointError("legacy torch file: invalid magic number (not a torch.save file, or a corrupt one)")
        }
        let version = try pickle("protocol version", noPersistentIDs)
        guard version.intValue == 1001, case .int = version else {
            throw CheckpointError("legacy torch file: invalid protocol version \(version.summary(maxLength: 40)) (expected 1001)")
        }
        _ = try pickle("sys_info", noPersistentIDs)

        // The object. Storages are created on first use (the first dtype seen for a key is the one of the data on
        // disk); a view is a slice of its root's bytes.
        var roots: [String: TorchStorageRef] = [:]
        var views: [String: (ref: TorchStorageRef, root: String, byteOffset: Int)] = [:]
        let persistentLoad: (PickleValue) throws -> PickleValue = { pid in
            let (s, view) = try storageID(pid, legacy: true)
            guard views[s.key] == nil else { throw CheckpointError("pickle: storage key \(s.key) is also a view key") }
            var base = s
            if let r = roots[s.key] {
                if r.dtype == s.dtype { base = r }
                // torch reinterprets the bytes when the size in bytes agrees (and has no data otherwise).
                else if r.elementCount * r.dtype.byteSize != s.elementCount * s.dtype.byteSize {
                    throw CheckpointError("pickle: storage \(s.key) is \(r.elementCount) \(r.typeName) and \(s.elementCount) \(s.typeName)")
                }
            } else { roots[s.key] = s }
            guard let v = view else { return .storage(base) }
            if let seen = views[v.key] { return .storage(seen.ref) }
            guard roots[v.key] == nil else { throw CheckpointError("pickle: storage view key \(v.key) is also a storage key") }
            let ref = TorchStorageRef(key: v.key, dtype: base.dtype, typeName: base.typeName, location: base.location, elementCount: v.count)
            views[v.key] = (ref, base.key, v.offset * base.dtype.byteSize)
            return .storage(ref)
        }
        let root = try pickle("object", persistentLoad)
        let keyList = try pickle("storage key list", noPersistentIDs)
        guard let items = keyList.sequenceItems else {
            throw CheckpointError("legacy torch file: the storage key list is a \(keyList.typeName), not a list")
        }

        var ranges: [String: Range<Int>] = [:]
        for item in items {
            guard let key = item.stringValue else { throw CheckpointError("legacy torch file: storage key \(item.summary(maxLength: 40)) is not a str") }
            guard let s = roots[key] else { throw CheckpointError("legacy torch file: storage \(key) of the key list is not used by the object") }
            guard ranges[key] == nil else { throw CheckpointError("legacy torch file: storage \(key) is listed twice") }
            guard buffer.count - pos >= 8 else {
                throw CheckpointError("legacy torch file: storage \(key): the element count at byte \(pos) runs past the end of the \(buffer.count)-byte file (truncated?)")
            }
            let count = buffer.u64(pos)
            guard count == UInt64(s.elementCount) else {
                throw CheckpointError("legacy torch file: storage \(key) has \(count) elements in the file, the object says \(s.elementCount) (\(s.typeName))")
            }
            let n = s.elementCount * s.dtype.byteSize
            guard n <= buffer.count - pos - 8 else {
                throw CheckpointError("legacy torch file: storage \(key): \(n) bytes of data at byte \(pos + 8) run past the end of the \(buffer.count)-byte file (truncated?)")
            }
            ranges[key] = (pos + 8)..<(pos + 8 + n)
            pos += 8 + n
        }
        if let key = roots.keys.sorted().first(where: { ranges[$0] == nil }) {
            throw CheckpointError("legacy torch file: storage \(key) has no data (missing from the storage key list)")
        }
        for (key, v) in views {
            let r = ranges[v.root]!, n = v.ref.elementCount * v.ref.dtype.byteSize
            guard v.byteOffset <= r.count, n <= r.count - v.byteOffset else {
                throw CheckpointError("legacy torch file: storage view \(key) (bytes \(v.byteOffset)..<\(v.byteOffset + n)) lies outside its storage \(v.root) (\(r.count) bytes)")
            }
            ranges[key] = (r.lowerBound + v.byteOffset)..<(r.lowerBound + v.byteOffset + n)
        }
        return (.legacy(buffer, ranges), root, objects)
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
            switch source {
            case .zip(let zip, let prefix):
                let entryName = "\(prefix)/data/\(t.storage.key)"
                guard let e = zip.entry(entryName) else { throw CheckpointError("torch checkpoint: \(entryName) is missing") }
                storage = TensorStorage(byteCount: t.storage.elementCount * t.storage.dtype.byteSize) { try zip.contents(of: e) }
            case .legacy(let buffer, let ranges):
                guard let r = ranges[t.storage.key] else { throw CheckpointError("torch checkpoint: storage \(t.storage.key) has no data") }
                storage = TensorStorage(buffer: buffer, offset: r.lowerBound, byteCount: r.count)
            }
            storages[t.storage.key] = storage
        }
        let off = try Checked.mul(t.storageOffset, t.dtype.byteSize, what: "tensor \"\(name)\" offset")
        return try TensorRecord(name: name, dtype: t.dtype, shape: t.shape, strides: t.stride, byteOffset: off, storage: storage)
    }

    /// Scalar training info commonly found next to the state dict (global_step, epoch).
    public func integer(_ key: String) -> Int? { root.dictValue?[key]?.intValue }
}
