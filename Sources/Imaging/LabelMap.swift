// Label maps (segmentation maps): one class index per pixel, as the CompVis semantic-synthesis data builds them
// (taming-transformers taming/data/sflckr.py SegmentationBase: `np.array(Image.open(path)).astype(np.uint8)`, then
// `np.eye(n_labels)[segmentation]`). For a palette PNG PIL's array holds the palette INDICES, for a grayscale PNG the
// gray levels; the decoders of PNGCodec (libpng's simplified API) expand palettes to colours, so the raw samples are
// read here: chunks walked with their CRCs, IDAT inflated, scanline filters undone, Adam7 interlacing handled.
// Accepted: grayscale and palette PNGs of 1, 2, 4 or 8 bits (the raw sample value is the index; PIL agrees for 8-bit
// files), gray+alpha (alpha ignored), and 8-bit RGB/RGBA whose pixels are all gray (R = G = B; the index is that
// level). Refused with a message: 16-bit PNGs, colour pixels, JPEG (lossy: indices would not survive).
import Foundation

extension ImageIO {
    /// Reads a label map: per pixel the class index stored in the PNG (see the file comment). `name` in errors.
    public static func loadLabelMap(path: String) throws -> GrayImage {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { throw ImageError.fileNotFound(path) }
        if isDir.boolValue { throw ImageError.unreadable(path, "it is a directory") }
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw ImageError.unreadable(path, error.localizedDescription)
        }
        return try decodeLabelMap([UInt8](data), name: path)
    }

    /// Decodes label-map PNG bytes to their raw per-pixel samples (palette indices or gray levels).
    public static func decodeLabelMap(_ bytes: [UInt8], name: String = "<memory>") throws -> GrayImage {
        if bytes.isEmpty { throw ImageError.emptyFile(name) }
        switch sniff(bytes) {
        case .png?: return try PNGLabelDecoder.decode(bytes, name: name)
        case .jpeg?:
            throw ImageError.decodeFailed(name, "a label map must be a PNG (grayscale or palette): JPEG is lossy, its class indices would not survive")
        case nil:
            if let other = otherFormatName(bytes) { throw ImageError.unsupportedFormat(name, other) }
            throw ImageError.notAnImage(name)
        }
    }
}

enum PNGLabelDecoder {
    static func decode(_ b: [UInt8], name: String) throws -> GrayImage {
        func fail(_ why: String) -> ImageError { .decodeFailed(name, why) }
        guard b.count >= 8, Array(b[0..<8]) == pngSignature else { throw ImageError.notAnImage(name) }
        var pos = 8
        var header: [UInt8]?
        var idat: [UInt8] = []
        var ended = false
        while pos + 12 <= b.count {
            let len = Int(readBE32(b, pos))
            let type = String(decoding: b[(pos + 4)..<(pos + 8)], as: UTF8.self)
            guard len <= 0x7FFF_FFFF, pos + 12 + len <= b.count else { throw fail("file is truncated (chunk \(type) runs past the end)") }
            let critical = b[pos + 4] & 0x20 == 0
            if critical, pngCRC(b[(pos + 4)..<(pos + 8 + len)]) != readBE32(b, pos + 8 + len) {
                throw fail("CRC error in chunk \(type)")
            }
            let data = b[(pos + 8)..<(pos + 8 + len)]
            switch type {
            case "IHDR":
                guard header == nil, len == 13 else { throw fail("bad IHDR chunk") }
                header = Array(data)
            case "IDAT":
                guard header != nil else { throw fail("IDAT before IHDR") }
                idat += data
            case "IEND": ended = true
            default:
                guard !critical || type == "PLTE" else { throw fail("unknown critical chunk \(type)") }
            }
            pos += 12 + len
            if ended { break }
        }
        guard ended else { throw fail("file is truncated (no IEND chunk)") }
        guard let h = header else { throw fail("no IHDR chunk") }
        let width = Int(readBE32(h, 0)), height = Int(readBE32(h, 4))
        try checkDimensions(width, height, source: name)
        let depth = Int(h[8]), colorType = Int(h[9]), interlace = Int(h[12])
        guard h[10] == 0, h[11] == 0, interlace <= 1 else { throw fail("unsupported compression/filter/interlace method") }
        let channels: Int
        switch (colorType, depth) {
        case (_, 16):
            throw fail("16-bit PNG: a label map holds one 8-bit class index per pixel (save it as an 8-bit grayscale or palette PNG)")
        case (0, 1), (0, 2), (0, 4), (0, 8), (3, 1), (3, 2), (3, 4), (3, 8): channels = 1
        case (4, 8): channels = 2
        case (2, 8): channels = 3
        case (6, 8): channels = 4
        default: throw fail("invalid PNG colour type \(colorType) with bit depth \(depth)")
        }
        let bitsPerPixel = channels * depth
        let filterDistance = max(1, bitsPerPixel / 8)
        let passes: [(x0: Int, y0: Int, dx: Int, dy: Int)] = interlace == 0 ? [(0, 0, 1, 1)]
            : [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
        func passSize(_ p: (x0: Int, y0: Int, dx: Int, dy: Int)) -> (Int, Int) {
            (width > p.x0 ? (width - p.x0 + p.dx - 1) / p.dx : 0, height > p.y0 ? (height - p.y0 + p.dy - 1) / p.dy : 0)
        }
        var expected = 0
        for p in passes {
            let (pw, ph) = passSize(p)
            if pw > 0 { expected += ph * (1 + (pw * bitsPerPixel + 7) / 8) }
        }
        guard let raw = zlibInflate(idat[...], limit: expected), raw.count >= expected else {
            throw fail("image data (IDAT) is damaged or truncated")
        }
        var out = [UInt8](repeating: 0, count: width * height)
        var offset = 0
        for p in passes {
            let (pw, ph) = passSize(p)
            guard pw > 0, ph > 0 else { continue }
            let rowBytes = (pw * bitsPerPixel + 7) / 8
            var prev = [UInt8](repeating: 0, count: rowBytes), row = prev
            for y in 0..<ph {
                let filter = raw[offset]
                for i in 0..<rowBytes { row[i] = raw[offset + 1 + i] }
                offset += 1 + rowBytes
                try unfilter(&row, prev, type: filter, distance: filterDistance, fail: fail)
                let oy = p.y0 + y * p.dy
                for x in 0..<pw {
                    let v: UInt8
                    if depth < 8 {
                        let bit = x * depth
                        v = (row[bit >> 3] >> UInt8(8 - depth - (bit & 7))) & UInt8((1 << depth) - 1)
                    } else {
                        let s = x * channels
                        v = row[s]
                        if channels >= 3, row[s + 1] != v || row[s + 2] != v {
                            throw fail("pixel (\(p.x0 + x * p.dx), \(oy)) has colour (\(v), \(row[s + 1]), \(row[s + 2])): a label map holds one class index per pixel (a grayscale or palette PNG, or gray RGB)")
                        }
                    }
                    out[oy * width + p.x0 + x * p.dx] = v
                }
                swap(&prev, &row)
            }
        }
        return GrayImage(uncheckedWidth: width, height: height, pixels: out)
    }

    /// PNG scanline filters (None, Sub, Up, Average, Paeth) undone in place.
    static func unfilter(_ row: inout [UInt8], _ prev: [UInt8], type: UInt8, distance d: Int,
                         fail: (String) -> ImageError) throws {
        let n = row.count
        switch type {
        case 0: break
        case 1: for i in d..<max(d, n) { row[i] &+= row[i - d] }
        case 2: for i in 0..<n { row[i] &+= prev[i] }
        case 3:
            for i in 0..<n {
                let left = i >= d ? Int(row[i - d]) : 0
                row[i] &+= UInt8((left + Int(prev[i])) / 2)
            }
        case 4:
            for i in 0..<n {
                let a = i >= d ? Int(row[i - d]) : 0, b = Int(prev[i]), c = i >= d ? Int(prev[i - d]) : 0
                let p = a + b - c
                let pa = abs(p - a), pb = abs(p - b), pc = abs(p - c)
                row[i] &+= UInt8(pa <= pb && pa <= pc ? a : (pb <= pc ? b : c))
            }
        default: throw fail("invalid scanline filter \(type)")
        }
    }
}
