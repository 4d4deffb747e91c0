// Loading images by content sniffing (magic bytes), like PIL's Image.open as used by diffusers
// utils/loading_utils.py load_image (which then calls .convert("RGB")).
import Foundation

public enum ImageFormat: String, Sendable { case png = "PNG", jpeg = "JPEG" }

/// What to do with an alpha channel when reducing to RGB.
public enum AlphaHandling: Sendable {
    /// Drop alpha and keep the stored colour (PIL `convert("RGB")`, what diffusers' load_image does).
    case drop
    /// Composite over white in 8-bit sRGB: c' = (c*a + 255*(255-a) + 127) / 255 (integer division).
    case compositeOverWhite
}

/// A decoded image with what came with it.
public struct LoadedImage: Sendable {
    public var image: RGBImage
    public var format: ImageFormat
    /// The source alpha channel (one byte per pixel), when the file had one (PNG RGBA/GA/tRNS).
    public var alpha: [UInt8]?
    /// True when the source had no colour (PNG gray, JPEG grayscale).
    public var isGrayscale: Bool
    /// PNG text chunks (tEXt, zTXt, iTXt) in file order; empty for JPEG.
    public var textChunks: [PNGTextChunk]

    /// The first text chunk with this keyword (e.g. "parameters").
    public func text(_ keyword: String) -> String? { textChunks.first { $0.keyword == keyword }?.text }

    /// The AUTOMATIC1111 "parameters" chunk parsed, when present.
    public var generationParameters: GenerationParameters? { text("parameters").map(GenerationParameters.init(parsing:)) }
}

public enum ImageIO {
    /// Identifies the format from the first bytes; nil when neither PNG nor JPEG.
    public static func sniff(_ data: [UInt8]) -> ImageFormat? {
        if data.count >= 8, Array(data[0..<8]) == pngSignature { return .png }
        if data.count >= 3, data[0] == 0xFF, data[1] == 0xD8, data[2] == 0xFF { return .jpeg }
        return nil
    }

    /// Names a few other formats so errors can say what the file is.
    static func otherFormatName(_ d: [UInt8]) -> String? {
        func starts(_ s: [UInt8]) -> Bool { d.count >= s.count && Array(d[0..<s.count]) == s }
        if starts(Array("GIF8".utf8)) { return "GIF" }
        if starts(Array("BM".utf8)) { return "BMP" }
        if starts(Array("RIFF".utf8)), d.count >= 12, Array(d[8..<12]) == Array("WEBP".utf8) { return "WebP" }
        if starts([0x49, 0x49, 0x2A, 0x00]) || starts([0x4D, 0x4D, 0x00, 0x2A]) { return "TIFF" }
        if d.count >= 12, Array(d[4..<8]) == Array("ftyp".utf8) { return "HEIF/AVIF" }
        return nil
    }

    /// Reads a PNG or JPEG file, choosing the decoder from its content, never from its extension.
    public static func load(path: String, alpha: AlphaHandling = .drop) throws -> LoadedImage {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw ImageError.fileNotFound(path)
        }
        if isDir.boolValue { throw ImageError.unreadable(path, "it is a directory") }
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw ImageError.unreadable(path, error.localizedDescription)
        }
        return try decode([UInt8](data), name: path, alpha: alpha)
    }

    /// Decodes PNG or JPEG bytes; `name` is used in error messages.
    public static func decode(_ bytes: [UInt8], name: String = "<memory>",
                              alpha: AlphaHandling = .drop) throws -> LoadedImage {
        if bytes.isEmpty { throw ImageError.emptyFile(name) }
        switch sniff(bytes) {
        case .png?: return try PNGCodec.decode(bytes, name: name, alpha: alpha)
        case .jpeg?: return try JPEGCodec.decode(bytes, name: name)
        case nil:
            if let other = otherFormatName(bytes) { throw ImageError.unsupportedFormat(name, other) }
            throw ImageError.notAnImage(name)
        }
    }

    /// Convenience: the RGB image only.
    public static func loadRGB(path: String, alpha: AlphaHandling = .drop) throws -> RGBImage {
        try load(path: path, alpha: alpha).image
    }

    /// Loads an inpainting mask as PIL "L": the file's gray level (for RGB sources, convert("L")).
    public static func loadMask(path: String) throws -> GrayImage {
        try load(path: path, alpha: .drop).image.grayscale()
    }
}

/// Reduces interleaved RGBA (4 bytes a pixel) to RGB plus its alpha plane.
func splitAlpha(_ rgba: [UInt8], pixelCount n: Int, handling: AlphaHandling) -> (rgb: [UInt8], alpha: [UInt8]) {
    var rgb = [UInt8](repeating: 0, count: n * 3)
    var a = [UInt8](repeating: 0, count: n)
    rgba.withUnsafeBufferPointer { s in
        for i in 0..<n {
            let al = Int(s[4 * i + 3])
            a[i] = UInt8(al)
            for c in 0..<3 {
                let v = Int(s[4 * i + c])
                switch handling {
                case .drop: rgb[3 * i + c] = UInt8(v)
                case .compositeOverWhite: rgb[3 * i + c] = UInt8((v * al + 255 * (255 - al) + 127) / 255)
                }
            }
        }
    }
    return (rgb, a)
}
