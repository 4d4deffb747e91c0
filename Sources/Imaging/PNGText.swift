// PNG text chunks (PNG spec sections 11.3.4.3-11.3.4.5: tEXt, zTXt, iTXt), written the way Pillow's
// PngImagePlugin.PngInfo.add_text does for AUTOMATIC1111's "parameters" chunk: tEXt when the text is
// Latin-1, otherwise an uncompressed iTXt. CRCs come from zlib's crc32, decompression from zlib inflate (CZlib).
import CZlib
import Foundation

public struct PNGTextChunk: Equatable, Sendable {
    public var keyword: String
    public var text: String
    public init(keyword: String, text: String) {
        self.keyword = keyword
        self.text = text
    }

    static func latin1(_ s: String) -> [UInt8]? {
        var out: [UInt8] = []
        for u in s.unicodeScalars {
            guard u.value < 256 else { return nil }
            out.append(UInt8(u.value))
        }
        return out
    }

    /// The complete chunk (length, type, data, CRC).
    func chunkBytes() throws -> [UInt8] {
        guard let key = PNGTextChunk.latin1(keyword), (1...79).contains(key.count), !key.contains(0),
              key.first != 0x20, key.last != 0x20 else {
            throw ImageError.encodeFailed("invalid PNG text keyword \"\(keyword)\" (1-79 Latin-1 characters, no NUL, no leading/trailing space)")
        }
        if let t = PNGTextChunk.latin1(text) {
            return makePNGChunk("tEXt", key + [0] + t)
        }
        // iTXt: keyword NUL, compression flag 0, method 0, empty language tag NUL, empty translated keyword NUL, UTF-8.
        return makePNGChunk("iTXt", key + [0, 0, 0, 0, 0] + Array(text.utf8))
    }
}

func pngCRC(_ bytes: ArraySlice<UInt8>) -> UInt32 {
    bytes.withUnsafeBufferPointer { p in UInt32(crc32(0, p.baseAddress, uInt(p.count))) }
}

func makePNGChunk(_ type: String, _ data: [UInt8]) -> [UInt8] {
    let n = UInt32(data.count)
    var out: [UInt8] = [UInt8(n >> 24), UInt8(n >> 16 & 0xFF), UInt8(n >> 8 & 0xFF), UInt8(n & 0xFF)]
    out += Array(type.utf8) + data
    let crc = pngCRC(out[4...])
    out += [UInt8(crc >> 24), UInt8(crc >> 16 & 0xFF), UInt8(crc >> 8 & 0xFF), UInt8(crc & 0xFF)]
    return out
}

/// Inflates a zlib stream, refusing output larger than `limit` bytes.
func zlibInflate(_ input: ArraySlice<UInt8>, limit: Int = 16 << 20) -> [UInt8]? {
    var stream = z_stream()
    guard inflateInit_(&stream, ZLIB_VERSION, Int32(MemoryLayout<z_stream>.size)) == Z_OK else { return nil }
    defer { inflateEnd(&stream) }
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    let input = Array(input)
    return input.withUnsafeBufferPointer { inp -> [UInt8]? in
        stream.next_in = UnsafeMutablePointer(mutating: inp.baseAddress)
        stream.avail_in = uInt(inp.count)
        while true {
            let status: Int32 = chunk.withUnsafeMutableBufferPointer { c in
                stream.next_out = c.baseAddress
                stream.avail_out = uInt(c.count)
                return inflate(&stream, Z_NO_FLUSH)
            }
            out += chunk[0..<(chunk.count - Int(stream.avail_out))]
            if out.count > limit { return nil }
            if status == Z_STREAM_END { return out }
            if status != Z_OK { return nil }
            if stream.avail_in == 0 && stream.avail_out != 0 { return nil }  // truncated stream
        }
    }
}

/// Reads the text chunks of a PNG (signature already checked). Damaged text chunks are skipped,
/// as libpng and Pillow do for ancillary chunks; a broken chunk structure throws.
func parsePNGTextChunks(_ b: [UInt8], name: String) throws -> [PNGTextChunk] {
    var chunks: [PNGTextChunk] = []
    var pos = 8
    while pos + 12 <= b.count {
        let len = Int(readBE32(b, pos))
        let type = String(decoding: b[(pos + 4)..<(pos + 8)], as: UTF8.self)
        guard len <= 0x7FFF_FFFF, pos + 12 + len <= b.count else {
            throw ImageError.decodeFailed(name, "file is truncated (chunk \(type) runs past the end)")
        }
        let data = b[(pos + 8)..<(pos + 8 + len)]
        let crcOK = pngCRC(b[(pos + 4)..<(pos + 8 + len)]) == readBE32(b, pos + 8 + len)
        if crcOK, let c = decodeTextChunk(type, data) { chunks.append(c) }
        pos += 12 + len
        if type == "IEND" { return chunks }
    }
    throw ImageError.decodeFailed(name, "file is truncated (no IEND chunk)")
}

private func decodeTextChunk(_ type: String, _ data: ArraySlice<UInt8>) -> PNGTextChunk? {
    guard ["tEXt", "zTXt", "iTXt"].contains(type), let nul = data.firstIndex(of: 0) else { return nil }
    let latin1 = { (s: ArraySlice<UInt8>) in String(String.UnicodeScalarView(s.map { Unicode.Scalar($0) })) }
    let keyword = latin1(data[data.startIndex..<nul])
    let rest = data[(nul + 1)...]
    switch type {
    case "tEXt":
        return PNGTextChunk(keyword: keyword, text: latin1(rest))
    case "zTXt":
        guard rest.count >= 1, rest.first == 0, let t = zlibInflate(rest.dropFirst()) else { return nil }
        return PNGTextChunk(keyword: keyword, text: latin1(t[...]))
    default:  // iTXt
        guard rest.count >= 2 else { return nil }
        let compressed = rest[rest.startIndex] == 1
        var r = rest.dropFirst(2)
        guard let langEnd = r.firstIndex(of: 0) else { return nil }
        r = r[(langEnd + 1)...]
        guard let transEnd = r.firstIndex(of: 0) else { return nil }
        r = r[(transEnd + 1)...]
        if compressed {
            guard let t = zlibInflate(r) else { return nil }
            return PNGTextChunk(keyword: keyword, text: String(decoding: t, as: UTF8.self))
        }
        return PNGTextChunk(keyword: keyword, text: String(decoding: r, as: UTF8.self))
    }
}
