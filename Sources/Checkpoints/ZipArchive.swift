// Minimal zip reader for torch.save archives, following the PKWARE APPNOTE layout that
// caffe2/serialize/inline_container.cc (PyTorchStreamReader, via miniz) reads: end of central
// directory (+ ZIP64 locator/record), central directory entries, local headers; stored entries
// are views into the mapped file, deflated entries are inflated with zlib on first use.
import Foundation
import CZlib

public struct ZipEntry {
    public let name: String
    public let method: UInt16
    public let crc32: UInt32
    public let compressedSize: Int
    public let uncompressedSize: Int
    let localHeaderOffset: Int
}

public final class ZipArchive {
    public let buffer: ByteBuffer
    public let entries: [ZipEntry]
    private let index: [String: Int]
    /// Upper bound for one inflated entry, and the deflate expansion bound (zlib's maximum ratio is ~1032:1).
    public static let maxInflatedSize = 1 << 34

    public convenience init(url: URL) throws { try self.init(buffer: ByteBuffer(mapping: url)) }

    public init(buffer: ByteBuffer) throws {
        self.buffer = buffer
        let n = buffer.count
        // End of central directory: 22 bytes + comment (<= 65535) at the end of the file.
        var eocd = -1
        if n >= 22 {
            var p = n - 22
            let stop = max(0, n - 22 - 65535)
            while p >= stop {
                if buffer.u32(p) == 0x0605_4B50 {
                    eocd = p
                    break
                }
                p -= 1
            }
        }
        guard eocd >= 0 else { throw CheckpointError("zip: end of central directory record not found (truncated or not a zip)") }
        var count = Int(buffer.u16(eocd + 10))
        var cdSize = Int(buffer.u32(eocd + 12))
        var cdOffset = Int(buffer.u32(eocd + 16))
        if count == 0xFFFF || cdSize == 0xFFFF_FFFF || cdOffset == 0xFFFF_FFFF {
            guard eocd >= 20, buffer.u32(eocd - 20) == 0x0706_4B50 else {
                throw CheckpointError("zip: ZIP64 end of central directory locator missing")
            }
            let rec64 = buffer.u64(eocd - 20 + 8)
            guard n >= 56, rec64 <= UInt64(n - 56), buffer.u32(Int(rec64)) == 0x0606_4B50 else {
                throw CheckpointError("zip: ZIP64 end of central directory record missing or out of range")
            }
            let r = Int(rec64)
            let c64 = buffer.u64(r + 32), s64 = buffer.u64(r + 40), o64 = buffer.u64(r + 48)
            guard c64 <= UInt64(n / 46), s64 <= UInt64(n), o64 <= UInt64(n) else {
                throw CheckpointError("zip: ZIP64 record claims \(c64) entries / \(s64) bytes at \(o64), impossible in a \(n)-byte file")
            }
            count = Int(c64)
            cdSize = Int(s64)
            cdOffset = Int(o64)
        }
        guard cdOffset <= n, cdSize <= n - cdOffset, cdOffset + cdSize <= eocd else {
            throw CheckpointError("zip: central directory (\(cdSize) bytes at \(cdOffset)) lies outside the file")
        }
        guard count <= cdSize / 46 else {
            throw CheckpointError("zip: \(count) entries cannot fit in a \(cdSize)-byte central directory")
        }
        var list: [ZipEntry] = []
        list.reserveCapacity(count)
        var idx: [String: Int] = [:]
        var p = cdOffset
        let end = cdOffset + cdSize
        for i in 0..<count {
            guard p + 46 <= end, buffer.u32(p) == 0x0201_4B50 else {
                throw CheckpointError("zip: central directory entry \(i) is corrupt or truncated")
            }
            let flags = buffer.u16(p + 8)
            let method = buffer.u16(p + 10)
            let crc = buffer.u32(p + 16)
            var csize = UInt64(buffer.u32(p + 20)), usize = UInt64(buffer.u32(p + 24))
            let nameLen = Int(buffer.u16(p + 28)), extraLen = Int(buffer.u16(p + 30)), commentLen = Int(buffer.u16(p + 32))
            var local = UInt64(buffer.u32(p + 42))
            guard p + 46 + nameLen + extraLen + commentLen <= end else {
                throw CheckpointError("zip: central directory entry \(i) runs past the directory")
            }
            let name = String(decoding: try buffer.slice(p + 46, nameLen, what: "zip name"), as: UTF8.self)
            // ZIP64 extended information: only the fields that are 0xFFFFFFFF, in this order.
            var q = p + 46 + nameLen
            let extraEnd = q + extraLen
            while q + 4 <= extraEnd {
                let tag = buffer.u16(q), size = Int(buffer.u16(q + 2))
                guard q + 4 + size <= extraEnd else { throw CheckpointError("zip: entry \"\(name)\": bad extra field") }
                if tag == 0x0001 {
                    var f = q + 4
                    func next() throws -> UInt64 {
                        guard f + 8 <= q + 4 + size else { throw CheckpointError("zip: entry \"\(name)\": short ZIP64 field") }
                        defer { f += 8 }
                        return buffer.u64(f)
                    }
                    if usize == 0xFFFF_FFFF { usize = try next() }
                    if csize == 0xFFFF_FFFF { csize = try next() }
                    if local == 0xFFFF_FFFF { local = try next() }
                }
                q += 4 + size
            }
            guard flags & 1 == 0 else { throw CheckpointError("zip: entry \"\(name)\" is encrypted") }
            guard method == 0 || method == 8 else {
                throw CheckpointError("zip: entry \"\(name)\" uses compression method \(method) (only stored and deflate are supported)")
            }
            guard csize <= UInt64(n), local <= UInt64(n) else {
                throw CheckpointError("zip: entry \"\(name)\" sizes/offset lie outside the \(n)-byte file")
            }
            if method == 0 && csize != usize {
                throw CheckpointError("zip: stored entry \"\(name)\" has compressed size \(csize) != uncompressed size \(usize)")
            }
            if method == 8 && (usize > UInt64(ZipArchive.maxInflatedSize) || usize > csize &* 1032 &+ 1024) {
                throw CheckpointError("zip: deflated entry \"\(name)\" claims uncompressed size \(usize) from \(csize) bytes (zip bomb?)")
            }
            let e = ZipEntry(name: name, method: method, crc32: crc, compressedSize: Int(csize),
                             uncompressedSize: Int(usize), localHeaderOffset: Int(local))
            _ = try ZipArchive.dataOffset(of: e, in: buffer)   // validates the local header and data range now
            if idx[name] == nil { idx[name] = list.count }
            list.append(e)
            p += 46 + nameLen + extraLen + commentLen
        }
        entries = list
        index = idx
    }

    public func entry(_ name: String) -> ZipEntry? { index[name].map { entries[$0] } }

    static func dataOffset(of e: ZipEntry, in buffer: ByteBuffer) throws -> Int {
        let p = e.localHeaderOffset
        guard p <= buffer.count - 30, buffer.u32(p) == 0x0403_4B50 else {
            throw CheckpointError("zip: entry \"\(e.name)\": local header missing at offset \(p)")
        }
        let start = p + 30 + Int(buffer.u16(p + 26)) + Int(buffer.u16(p + 28))
        guard start <= buffer.count, e.compressedSize <= buffer.count - start else {
            throw CheckpointError("zip: entry \"\(e.name)\": \(e.compressedSize) bytes at \(start) lie outside the \(buffer.count)-byte file")
        }
        return start
    }

    /// The entry's bytes: a view of the file for stored entries, an inflated copy for deflated ones.
    public func contents(of e: ZipEntry, verifyCRC: Bool = false) throws -> (ByteBuffer, Int) {
        let start = try ZipArchive.dataOffset(of: e, in: buffer)
        if e.method == 0 {
            if verifyCRC { try check(e, UnsafeRawBufferPointer(start: buffer.base + start, count: e.compressedSize)) }
            return (buffer, start)
        }
        let out = UnsafeMutableRawPointer.allocate(byteCount: max(e.uncompressedSize, 1), alignment: 16)
        var ok = false
        defer { if !ok { out.deallocate() } }
        var zs = z_stream()
        guard inflateInit2_(&zs, -15, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw CheckpointError("zip: zlib inflateInit failed")
        }
        defer { inflateEnd(&zs) }
        var consumed = 0, produced = 0
        var status = Z_OK
        while status == Z_OK {
            let inChunk = min(e.compressedSize - consumed, Int(UInt32.max))
            let outChunk = min(e.uncompressedSize - produced, Int(UInt32.max))
            zs.next_in = UnsafeMutablePointer(mutating: (buffer.base + start + consumed).assumingMemoryBound(to: Bytef.self))
            zs.avail_in = uInt(inChunk)
            zs.next_out = (out + produced).assumingMemoryBound(to: Bytef.self)
            zs.avail_out = uInt(outChunk)
            status = inflate(&zs, Z_NO_FLUSH)
            consumed += inChunk - Int(zs.avail_in)
            produced += outChunk - Int(zs.avail_out)
            if status == Z_OK && inChunk - Int(zs.avail_in) == 0 && outChunk - Int(zs.avail_out) == 0 { break }
        }
        guard status == Z_STREAM_END else {
            throw CheckpointError("zip: deflated entry \"\(e.name)\" is corrupt or longer than its declared \(e.uncompressedSize) bytes (zlib status \(status))")
        }
        guard produced == e.uncompressedSize else {
            throw CheckpointError("zip: deflated entry \"\(e.name)\" inflated to \(produced) bytes, expected \(e.uncompressedSize)")
        }
        let buf = ByteBuffer(owning: out, count: produced)
        ok = true
        try check(e, UnsafeRawBufferPointer(start: buf.base, count: produced))
        return (buf, 0)
    }

    /// Copy of an entry's bytes (small entries: data.pkl, byteorder, version).
    public func data(of e: ZipEntry, verifyCRC: Bool = true) throws -> Data {
        let (b, o) = try contents(of: e, verifyCRC: verifyCRC)
        return Data(UnsafeRawBufferPointer(start: b.base + o, count: e.uncompressedSize))
    }

    private func check(_ e: ZipEntry, _ bytes: UnsafeRawBufferPointer) throws {
        var crc: uLong = crc32(0, nil, 0)
        var p = bytes.baseAddress?.assumingMemoryBound(to: Bytef.self), left = bytes.count
        while left > 0, let q = p {
            let n = min(left, 1 << 30)
            crc = CZlib.crc32(crc, q, uInt(n))
            p = q + n
            left -= n
        }
        guard UInt32(truncatingIfNeeded: crc) == e.crc32 else {
            throw CheckpointError("zip: entry \"\(e.name)\" fails its CRC-32 check")
        }
    }
}
