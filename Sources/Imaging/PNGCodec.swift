// PNG decoding and encoding through libpng's simplified API (png.h: png_image_begin_read_from_memory,
// png_image_finish_read, png_image_write_to_memory), which catches libpng's longjmp errors internally
// and reports them in png_image.message, so no setjmp is needed from Swift.
// Decoding mirrors what PIL + convert("RGB") gives: 8-bit RGB for every PNG kind (gray, gray+alpha,
// RGB, RGBA, palette, 1/2/4/8/16-bit). 16-bit samples are scaled to 8 bits by libpng
// (round(v * 255 / 65535)); PIL keeps the high byte (v >> 8) for 16-bit RGB(A), so results may differ by 1.
import CPNG
import Foundation

let pngSignature: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]

private let formatFlagAlpha: UInt32 = 0x01   // PNG_FORMAT_FLAG_ALPHA
private let formatFlagColor: UInt32 = 0x02   // PNG_FORMAT_FLAG_COLOR
private let imageFlag16BitSRGB: UInt32 = 0x04 // PNG_IMAGE_FLAG_16BIT_sRGB

public enum PNGCodec {
    private static func message(_ image: inout png_image) -> String {
        let msg = withUnsafeBytes(of: &image.message) { raw -> String in
            let bytes = raw.bindMemory(to: UInt8.self)
            let end = bytes.firstIndex(of: 0) ?? bytes.count
            return String(decoding: bytes[0..<end], as: UTF8.self)
        }
        return msg.isEmpty ? "libpng error" : msg
    }

    /// Decodes PNG bytes to 8-bit RGB (alpha dropped or composited, see `AlphaHandling`).
    public static func decode(_ bytes: [UInt8], name: String = "<memory>",
                              alpha handling: AlphaHandling = .drop) throws -> LoadedImage {
        guard bytes.count >= 8, Array(bytes[0..<8]) == pngSignature else { throw ImageError.notAnImage(name) }
        // IHDR must come first: check the size before libpng allocates anything.
        guard bytes.count >= 33 else { throw ImageError.decodeFailed(name, "file is truncated (no complete IHDR chunk)") }
        let w = Int(readBE32(bytes, 16)), h = Int(readBE32(bytes, 20))
        try checkDimensions(w, h, source: name)
        let chunks = try parsePNGTextChunks(bytes, name: name)

        var image = png_image()
        image.version = png_uint_32(PNG_IMAGE_VERSION)
        defer { png_image_free(&image) }
        let began = bytes.withUnsafeBytes { raw in
            png_image_begin_read_from_memory(&image, raw.baseAddress, raw.count)
        }
        guard began != 0 else { throw ImageError.decodeFailed(name, message(&image)) }
        let width = Int(image.width), height = Int(image.height)
        try checkDimensions(width, height, source: name)
        let isColor = image.format & formatFlagColor != 0
        let hasAlpha = image.format & formatFlagAlpha != 0
        // Gray files are read as gray+alpha so gray levels are copied exactly; everything else as RGBA.
        let channels = isColor ? 4 : 2
        image.format = isColor ? (formatFlagColor | formatFlagAlpha) : formatFlagAlpha
        image.flags |= imageFlag16BitSRGB  // 16-bit data without gAMA/sRGB: treat as sRGB, like PIL
        var buffer = [UInt8](repeating: 0, count: width * height * channels)
        let ok = buffer.withUnsafeMutableBytes { raw in
            png_image_finish_read(&image, nil, raw.baseAddress, 0, nil)
        }
        guard ok != 0 else { throw ImageError.decodeFailed(name, message(&image)) }

        let n = width * height
        var rgba = buffer
        if !isColor {
            rgba = [UInt8](repeating: 0, count: n * 4)
            for i in 0..<n {
                let g = buffer[2 * i]
                rgba[4 * i] = g
                rgba[4 * i + 1] = g
                rgba[4 * i + 2] = g
                rgba[4 * i + 3] = buffer[2 * i + 1]
            }
        }
        let (rgb, a) = splitAlpha(rgba, pixelCount: n, handling: hasAlpha ? handling : .drop)
        return LoadedImage(image: RGBImage(uncheckedWidth: width, height: height, pixels: rgb), format: .png,
                           alpha: hasAlpha ? a : nil, isGrayscale: !isColor, textChunks: chunks)
    }

    /// Encodes 8-bit RGB as PNG, with `text` written as tEXt chunks (iTXt when not Latin-1) right after IHDR.
    public static func encode(_ img: RGBImage, text: [PNGTextChunk] = []) throws -> [UInt8] {
        try encodeRaw(img.pixels, width: img.width, height: img.height, color: true, text: text)
    }

    /// Encodes an 8-bit grayscale image (PIL "L") as PNG.
    public static func encode(_ img: GrayImage, text: [PNGTextChunk] = []) throws -> [UInt8] {
        try encodeRaw(img.pixels, width: img.width, height: img.height, color: false, text: text)
    }

    static func encodeRaw(_ pixels: [UInt8], width: Int, height: Int, color: Bool,
                          text: [PNGTextChunk]) throws -> [UInt8] {
        try checkDimensions(width, height, source: "PNG encoder")
        guard pixels.count == width * height * (color ? 3 : 1) else {
            throw ImageError.pixelCountMismatch(expected: width * height * (color ? 3 : 1), got: pixels.count)
        }
        let textBytes = try text.flatMap { try $0.chunkBytes() }
        var image = png_image()
        image.version = png_uint_32(PNG_IMAGE_VERSION)
        image.width = png_uint_32(width)
        image.height = png_uint_32(height)
        image.format = color ? formatFlagColor : 0
        defer { png_image_free(&image) }
        var size = 0
        // First call sizes the output, second writes it.
        var ok = pixels.withUnsafeBytes { raw in
            png_image_write_to_memory(&image, nil, &size, 0, raw.baseAddress, 0, nil)
        }
        guard ok != 0, size > 0 else { throw ImageError.encodeFailed(message(&image)) }
        var out = [UInt8](repeating: 0, count: size)
        ok = out.withUnsafeMutableBytes { o in
            pixels.withUnsafeBytes { raw in
                png_image_write_to_memory(&image, o.baseAddress, &size, 0, raw.baseAddress, 0, nil)
            }
        }
        guard ok != 0 else { throw ImageError.encodeFailed(message(&image)) }
        out.removeSubrange(size..<out.count)
        // Signature (8) + IHDR chunk (4 length + 4 type + 13 data + 4 CRC) = 33 bytes.
        guard out.count > 33, Array(out[12..<16]) == Array("IHDR".utf8) else {
            throw ImageError.encodeFailed("libpng output does not start with IHDR")
        }
        out.insert(contentsOf: textBytes, at: 33)
        return out
    }
}

@inline(__always)
func readBE32(_ b: [UInt8], _ o: Int) -> UInt32 {
    UInt32(b[o]) << 24 | UInt32(b[o + 1]) << 16 | UInt32(b[o + 2]) << 8 | UInt32(b[o + 3])
}
