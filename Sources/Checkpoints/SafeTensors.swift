// Reader and writer for the safetensors format, following huggingface/safetensors
// safetensors/src/tensor.rs: `SafeTensors::read_metadata` / `Metadata::validate` (reader)
// and `prepare` / `serialize_to_file` (writer: dtype-descending then name order, header
// padded with spaces to a multiple of 8, compact JSON with `__metadata__` first).
import FileIO
import Foundation

public struct SafeTensorsEntry {
    public var name: String
    public var dtype: StorageDType
    public var shape: [Int]
    public var bytes: Data
    public init(name: String, dtype: StorageDType, shape: [Int], bytes: Data) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.bytes = bytes
    }
}

public final class SafeTensors {
    /// Same bound as the reference implementation (`MAX_HEADER_SIZE`).
    public static let maxHeaderSize = 100_000_000

    public let buffer: ByteBuffer
    /// `__metadata__`, nil when the header has none.
    public let metadata: [String: String]?
    /// Records in data order (ascending offsets).
    public let records: [TensorRecord]
    public let headerSize: Int

    public var tensors: [String: TensorRecord] {
        Dictionary(records.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
    }
    public subscript(name: String) -> TensorRecord? { records.first { $0.name == name } }

    public convenience init(url: URL) throws {
        try self.init(buffer: ByteBuffer(mapping: url))
    }
    public convenience init(data: Data) throws {
        try self.init(buffer: ByteBuffer(copying: data))
    }

    public init(buffer: ByteBuffer) throws {
        self.buffer = buffer
        let file = buffer.url?.lastPathComponent ?? "safetensors data"
        guard buffer.count >= 8 else { throw CheckpointError("\(file): header too small (\(buffer.count) bytes, need at least 8)") }
        let n64 = buffer.u64(0)
        guard n64 <= UInt64(SafeTensors.maxHeaderSize) else {
            throw CheckpointError("\(file): header size \(n64) exceeds the \(SafeTensors.maxHeaderSize)-byte limit")
        }
        let n = Int(n64)
        guard n + 8 <= buffer.count else {
            throw CheckpointError("\(file): header size \(n) runs past the end of the \(buffer.count)-byte file")
        }
        headerSize = n
        let headerBytes = buffer.data(8, n)
        guard headerBytes.first == UInt8(ascii: "{") else { throw CheckpointError("\(file): header does not start with '{'") }
        guard String(data: headerBytes, encoding: .utf8) != nil else { throw CheckpointError("\(file): header is not valid UTF-8") }
        try SafeTensors.checkNesting(headerBytes, limit: 64, file: file)
        let json: Any
        do { json = try JSONSerialization.jsonObject(with: headerBytes) }
        catch { throw CheckpointError("\(file): header is not valid JSON (\(error.localizedDescription))") }
        guard let top = json as? [String: Any] else { throw CheckpointError("\(file): header is not a JSON object") }

        var meta: [String: String]?
        struct Info {
            let name: String
            let dtype: StorageDType
            let shape: [Int]
            let begin: Int
            let end: Int
        }
        var infos: [Info] = []
        infos.reserveCapacity(top.count)
        for (name, value) in top {
            if name == "__metadata__" {
                guard let m = value as? [String: Any] else { throw CheckpointError("\(file): __metadata__ is not an object") }
                var out: [String: String] = [:]
                for (k, v) in m {
                    guard let s = v as? String else { throw CheckpointError("\(file): __metadata__[\"\(k.prefix(80))\"] is not a string") }
                    out[k] = s
                }
                meta = out
                continue
            }
            let what = "\(file): tensor \"\(name.prefix(200))\""
            guard let obj = value as? [String: Any] else { throw CheckpointError("\(what) is not an object") }
            guard let dt = obj["dtype"] as? String else { throw CheckpointError("\(what) has no dtype string") }
            let dtype: StorageDType
            do { dtype = try StorageDType(parsing: dt) } catch { throw CheckpointError("\(what): \(error)") }
            guard let shapeAny = obj["shape"] as? [Any] else { throw CheckpointError("\(what) has no shape list") }
            let shape = try shapeAny.map { try SafeTensors.jsonInt($0, what: "\(what) shape") }
            guard let offs = obj["data_offsets"] as? [Any], offs.count == 2 else {
                throw CheckpointError("\(what) has no [begin, end] data_offsets")
            }
            let begin = try SafeTensors.jsonInt(offs[0], what: "\(what) data_offsets")
            let end = try SafeTensors.jsonInt(offs[1], what: "\(what) data_offsets")
            infos.append(Info(name: name, dtype: dtype, shape: shape, begin: begin, end: end))
        }
        infos.sort { ($0.begin, $0.end, $0.name) < ($1.begin, $1.end, $1.name) }

        let dataStart = 8 + n
        let dataLength = buffer.count - dataStart
        let storage = TensorStorage(buffer: buffer, offset: dataStart, byteCount: dataLength)
        var cursor = 0
        var recs: [TensorRecord] = []
        recs.reserveCapacity(infos.count)
        for info in infos {
            let what = "\(file): tensor \"\(info.name.prefix(200))\""
            guard info.begin <= info.end else { throw CheckpointError("\(what): begin offset \(info.begin) > end offset \(info.end)") }
            guard info.begin == cursor else {
                throw CheckpointError(info.begin < cursor
                    ? "\(what): data range [\(info.begin), \(info.end)) overlaps the previous tensor (ends at \(cursor))"
                    : "\(what): gap in data before offset \(info.begin) (previous tensor ends at \(cursor))")
            }
            let n = try Checked.product(info.shape, what: what)
            let bytes = try Checked.mul(n, info.dtype.byteSize, what: what)
            guard bytes == info.end - info.begin else {
                throw CheckpointError("\(what): shape \(info.shape) × \(info.dtype.rawValue) needs \(bytes) bytes but data_offsets span \(info.end - info.begin)")
            }
            guard info.end <= dataLength else {
                throw CheckpointError("\(what): data_offsets end \(info.end) beyond the \(dataLength)-byte data section")
            }
            recs.append(try TensorRecord(name: info.name, dtype: info.dtype, shape: info.shape,
                                         byteOffset: info.begin, storage: storage))
            cursor = info.end
        }
        guard cursor == dataLength else {
            throw CheckpointError("\(file): tensors cover \(cursor) bytes but the data section has \(dataLength) (incomplete or trailing data)")
        }
        metadata = meta
        records = recs
    }

    /// Refuses deeply nested JSON before handing it to the (recursive) JSON parser.
    static func checkNesting(_ d: Data, limit: Int, file: String) throws {
        var depth = 0, inString = false, escaped = false
        for b in d {
            if inString {
                if escaped { escaped = false } else if b == 0x5C { escaped = true } else if b == 0x22 { inString = false }
                continue
            }
            switch b {
            case 0x22: inString = true
            case 0x5B, 0x7B:
                depth += 1
                if depth > limit { throw CheckpointError("\(file): header JSON is nested deeper than \(limit) levels") }
            case 0x5D, 0x7D: depth -= 1
            default: break
            }
        }
    }

    static func jsonInt(_ v: Any, what: String) throws -> Int {
        guard let i = v as? Int, i >= 0 else {
            throw CheckpointError("\(what): \("\(v)".prefix(40)) is not a non-negative integer")
        }
        return i
    }

    // MARK: - Writer

    /// Header bytes (JSON + space padding) and the entries in file order, as the reference writes them.
    public static func header(for entries: [SafeTensorsEntry], metadata: [String: String]?) throws -> (Data, [SafeTensorsEntry]) {
        var seen = Set<String>()
        for e in entries {
            guard e.name != "__metadata__" else { throw CheckpointError("tensor name \"__metadata__\" is reserved") }
            guard seen.insert(e.name).inserted else { throw CheckpointError("duplicate tensor name \"\(e.name)\"") }
            let n = try Checked.product(e.shape, what: "tensor \"\(e.name)\"")
            let need = try Checked.mul(n, e.dtype.byteSize, what: "tensor \"\(e.name)\"")
            guard need == e.bytes.count else {
                throw CheckpointError("tensor \"\(e.name)\": shape \(e.shape) × \(e.dtype.rawValue) needs \(need) bytes, got \(e.bytes.count)")
            }
        }
        let ordered = entries.sorted {
            $0.dtype.safetensorsRank != $1.dtype.safetensorsRank
                ? $0.dtype.safetensorsRank > $1.dtype.safetensorsRank
                : Array($0.name.utf8).lexicographicallyPrecedes(Array($1.name.utf8))
        }
        var json = "{"
        var first = true
        if let metadata {
            json += "\"__metadata__\":{"
            for (i, k) in metadata.keys.sorted(by: { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }).enumerated() {
                if i > 0 { json += "," }
                json += jsonString(k) + ":" + jsonString(metadata[k] ?? "")
            }
            json += "}"
            first = false
        }
        var offset = 0
        for e in ordered {
            if !first { json += "," }
            first = false
            let end = offset + e.bytes.count
            json += jsonString(e.name) + ":{\"dtype\":\"\(e.dtype.rawValue)\",\"shape\":["
                + e.shape.map(String.init).joined(separator: ",") + "],\"data_offsets\":[\(offset),\(end)]}"
            offset = end
        }
        json += "}"
        var h = Data(json.utf8)
        h.append(contentsOf: [UInt8](repeating: 0x20, count: (8 - h.count % 8) % 8))
        return (h, ordered)
    }

    /// Whole file in memory (small files, tests).
    public static func serialize(_ entries: [SafeTensorsEntry], metadata: [String: String]? = nil) throws -> Data {
        let (h, ordered) = try header(for: entries, metadata: metadata)
        var out = Data()
        var n = UInt64(h.count).littleEndian
        withUnsafeBytes(of: &n) { out.append(contentsOf: $0) }
        out.append(h)
        for e in ordered { out.append(e.bytes) }
        return out
    }

    /// Writes atomically (FileIO.AtomicFile: temp file in the same folder, fsync, rename over `url`, fsync the folder),
    /// the header and each tensor's bytes in turn.
    public static func write(_ entries: [SafeTensorsEntry], metadata: [String: String]? = nil, to url: URL) throws {
        let (h, ordered) = try header(for: entries, metadata: metadata)
        var n = UInt64(h.count).littleEndian
        let size = withUnsafeBytes(of: &n) { Data($0) }
        do {
            try AtomicFile.write(chunks: [size, h] + ordered.map(\.bytes), to: url.path, overwrite: true)
        } catch let e as AtomicFileError {
            throw CheckpointError(e.description)
        }
    }

    /// Tuple form of the writer, as in `save_file(dict, path, metadata)`.
    public static func write(records: [(name: String, dtype: StorageDType, shape: [Int], bytes: Data)],
                             metadata: [String: String]? = nil, to url: URL) throws {
        try write(records.map { SafeTensorsEntry(name: $0.name, dtype: $0.dtype, shape: $0.shape, bytes: $0.bytes) },
                  metadata: metadata, to: url)
    }

    /// Re-saves tensors read from any checkpoint (strided views become contiguous).
    public static func write(tensors: [TensorRecord], metadata: [String: String]? = nil, to url: URL) throws {
        try write(tensors.map { SafeTensorsEntry(name: $0.name, dtype: $0.dtype, shape: $0.shape, bytes: try $0.rawData()) },
                  metadata: metadata, to: url)
    }

    /// serde_json string escaping (FileIO.JSONString).
    static func jsonString(_ s: String) -> String {
        JSONString.quoted(s)
    }
}
