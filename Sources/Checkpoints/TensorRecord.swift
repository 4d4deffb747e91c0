// A named tensor whose bytes stay in the checkpoint file until asked for.
// Strided views follow torch's as_strided semantics (torch/_utils.py `_rebuild_tensor_v2`:
// storage, storage_offset, size, stride); safetensors records are always contiguous.
import Foundation

/// Backing bytes of one storage: a range of a mapped file, or a zip entry inflated on first use.
public final class TensorStorage {
    public let byteCount: Int
    private let loader: () throws -> (ByteBuffer, Int)
    private var cached: (ByteBuffer, Int)?
    private let lock = NSLock()

    /// A range of an already validated buffer.
    public init(buffer: ByteBuffer, offset: Int, byteCount: Int) {
        self.byteCount = byteCount
        loader = { (buffer, offset) }
        cached = (buffer, offset)
    }

    /// Lazily produced bytes; `loader` must return exactly `byteCount` bytes from the offset.
    init(byteCount: Int, loader: @escaping () throws -> (ByteBuffer, Int)) {
        self.byteCount = byteCount
        self.loader = loader
    }

    func resolve() throws -> (ByteBuffer, Int) {
        lock.lock()
        defer { lock.unlock() }
        if let c = cached { return c }
        let c = try loader()
        guard c.1 >= 0, c.1 <= c.0.count, c.0.count - c.1 >= byteCount else {
            throw CheckpointError("storage produced fewer than \(byteCount) bytes")
        }
        cached = c
        return c
    }
}

public struct TensorRecord {
    public let name: String
    public let dtype: StorageDType
    public let shape: [Int]
    /// Strides in elements (contiguous row-major for safetensors).
    public let strides: [Int]
    /// Offset of element 0 into the storage, in bytes.
    public let byteOffset: Int
    public let storage: TensorStorage
    public let elementCount: Int

    public var byteCount: Int { elementCount * dtype.byteSize }

    public static func contiguousStrides(_ shape: [Int]) -> [Int] {
        var s = [Int](repeating: 1, count: shape.count)
        var acc = 1
        for i in stride(from: shape.count - 1, through: 0, by: -1) {
            s[i] = acc
            acc = acc &* max(shape[i], 1)
        }
        return s
    }

    /// Validates that every addressed element lies inside the storage.
    public init(name: String, dtype: StorageDType, shape: [Int], strides: [Int]? = nil,
                byteOffset: Int = 0, storage: TensorStorage) throws {
        let what = "tensor \"\(name.prefix(200))\""
        let n = try Checked.product(shape, what: what)
        let st = strides ?? TensorRecord.contiguousStrides(shape)
        guard st.count == shape.count else { throw CheckpointError("\(what): \(st.count) strides for \(shape.count) dims") }
        guard byteOffset >= 0 else { throw CheckpointError("\(what): negative storage offset") }
        if n > 0 {
            var maxIndex = 0
            for (d, s) in zip(shape, st) {
                guard s >= 0 else { throw CheckpointError("\(what): negative stride \(s)") }
                maxIndex = try Checked.add(maxIndex, Checked.mul(d - 1, s, what: what), what: what)
            }
            let endByte = try Checked.add(byteOffset, Checked.mul(Checked.add(maxIndex, 1, what: what), dtype.byteSize, what: what), what: what)
            guard endByte <= storage.byteCount else {
                throw CheckpointError("\(what): needs bytes up to \(endByte) but its storage has \(storage.byteCount)")
            }
        }
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.strides = st
        self.byteOffset = byteOffset
        self.storage = storage
        self.elementCount = n
    }

    /// Same bytes under another name (EMA views, prefix stripping).
    public func renamed(_ newName: String) -> TensorRecord { TensorRecord(unchecked: newName, self) }
    private init(unchecked name: String, _ o: TensorRecord) {
        self.name = name
        dtype = o.dtype
        shape = o.shape
        strides = o.strides
        byteOffset = o.byteOffset
        storage = o.storage
        elementCount = o.elementCount
    }

    public var isContiguous: Bool {
        var expected = 1
        for i in stride(from: shape.count - 1, through: 0, by: -1) where shape[i] != 1 {
            if strides[i] != expected { return false }
            expected *= shape[i]
        }
        return true
    }

    /// Calls `body` with the tensor's contiguous little-endian bytes. For a contiguous
    /// tensor these are the mapped file bytes themselves; a strided view is copied first.
    public func withRawBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        let (buf, off) = try storage.resolve()
        let start = buf.base + off + byteOffset
        if isContiguous || elementCount == 0 {
            return try withExtendedLifetime(buf) { try body(UnsafeRawBufferPointer(start: start, count: byteCount)) }
        }
        let tmp = UnsafeMutableRawPointer.allocate(byteCount: byteCount, alignment: 16)
        defer { tmp.deallocate() }
        withExtendedLifetime(buf) { gather(from: start, to: tmp) }
        return try body(UnsafeRawBufferPointer(start: tmp, count: byteCount))
    }

    /// The tensor's bytes in place, when they are contiguous in a buffer already in memory (a mapped file, an
    /// inflated zip entry): the pointer, the object that keeps it valid, and whether it is a read-only file mapping.
    /// Nil for strided views (they need a copy).
    public func bytesInPlace() throws -> (pointer: UnsafeRawPointer, owner: AnyObject, fileMapping: Bool)? {
        guard isContiguous || elementCount == 0 else { return nil }
        let (buf, off) = try storage.resolve()
        return (buf.base + off + byteOffset, buf, buf.isFileMapping)
    }

    /// Drops this record's pages from the process's resident set when it lies in a file mapping (after its values
    /// were copied or converted: the loaded model does not keep the file's pages as well as its own copy).
    public func releasePages() {
        guard let (buf, off) = try? storage.resolve() else { return }
        let first = byteOffset, span = elementCount == 0 ? 0 : zip(shape, strides).reduce(1) { $0 + ($1.0 - 1) * $1.1 } * dtype.byteSize
        buf.dropPages(off + first, span)
    }

    /// Contiguous bytes as Data: zero-copy (keeps the mapping alive) when already contiguous.
    public func rawData() throws -> Data {
        let (buf, off) = try storage.resolve()
        if isContiguous || elementCount == 0 { return buf.data(off + byteOffset, byteCount) }
        return try withRawBytes { Data($0) }
    }

    public func floats() throws -> [Float] {
        guard dtype.isConvertibleToFloat else { throw CheckpointError("tensor \"\(name)\": cannot convert \(dtype.rawValue) to Float") }
        return try [Float](unsafeUninitializedCapacity: elementCount) { p, n in
            if let b = p.baseAddress { try copyFloats(into: b) }
            n = elementCount
        }
    }

    /// Converts the elements to Float into `into` (room for `elementCount` values), row-major.
    public func copyFloats(into dst: UnsafeMutablePointer<Float>) throws {
        guard elementCount > 0 else { return }
        try withRawBytes { raw in
            guard let b = raw.baseAddress else { return }
            try convertToFloat(dtype, b, count: elementCount, into: dst)
        }
    }

    /// Copies a strided view into a contiguous row-major buffer (odometer over all but the last dim).
    private func gather(from src: UnsafeRawPointer, to dst: UnsafeMutableRawPointer) {
        let es = dtype.byteSize
        let nd = shape.count
        let inner = shape[nd - 1], innerStride = strides[nd - 1] * es
        var idx = [Int](repeating: 0, count: nd)
        var out = dst
        let rows = elementCount / max(inner, 1)
        for _ in 0..<rows {
            var off = 0
            for d in 0..<(nd - 1) { off += idx[d] * strides[d] }
            var p = src + off * es
            for _ in 0..<inner {
                out.copyMemory(from: p, byteCount: es)
                out += es
                p += innerStride
            }
            var d = nd - 2
            while d >= 0 {
                idx[d] += 1
                if idx[d] < shape[d] { break }
                idx[d] = 0
                d -= 1
            }
        }
    }
}
