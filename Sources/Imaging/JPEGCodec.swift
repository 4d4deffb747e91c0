// JPEG decoding through TurboJPEG (turbojpeg.h: tjDecompressHeader3 + tjDecompress2 to TJPF_RGB), which
// runs libjpeg(-turbo) with the same defaults Pillow's JpegDecode.c uses (islow IDCT, fancy upsampling).
// Pixels can differ from PIL's by a level or two when Pillow's bundled libjpeg-turbo is a different
// version (SIMD IDCT/upsampling paths differ between releases); tests compare within a tolerance.
// Warnings (truncated data, corrupt segments) are treated as errors, like PIL without LOAD_TRUNCATED_IMAGES.
import CTurboJPEG
import Foundation

public enum JPEGCodec {
    public static func decode(_ bytes: [UInt8], name: String = "<memory>") throws -> LoadedImage {
        guard let handle = tjInitDecompress() else { throw ImageError.decodeFailed(name, "cannot initialise TurboJPEG") }
        defer { tjDestroy(handle) }
        func fail(_ what: String) -> ImageError {
            let msg = tjGetErrorStr2(handle).map { String(cString: $0) } ?? "unknown TurboJPEG error"
            return ImageError.decodeFailed(name, "\(what): \(msg)")
        }
        var w: Int32 = 0, h: Int32 = 0, subsamp: Int32 = 0, colorspace: Int32 = 0
        let header = bytes.withUnsafeBufferPointer { p in
            tjDecompressHeader3(handle, p.baseAddress, UInt(p.count), &w, &h, &subsamp, &colorspace)
        }
        guard header == 0 else { throw fail("invalid JPEG header") }
        guard w > 0, h > 0 else { throw ImageError.decodeFailed(name, "no image frame header (file truncated?)") }
        try checkDimensions(Int(w), Int(h), source: name)
        if colorspace == Int32(TJCS_CMYK.rawValue) || colorspace == Int32(TJCS_YCCK.rawValue) {
            throw ImageError.unsupportedFormat(name, "CMYK JPEG")
        }
        let width = Int(w), height = Int(h)
        var rgb = [UInt8](repeating: 0, count: width * height * 3)
        let status = rgb.withUnsafeMutableBufferPointer { out in
            bytes.withUnsafeBufferPointer { p in
                tjDecompress2(handle, p.baseAddress, UInt(p.count), out.baseAddress, w, 0, h,
                              Int32(TJPF_RGB.rawValue), 0)
            }
        }
        guard status == 0 else {
            let kind = tjGetErrorCode(handle) == Int32(TJERR_WARNING.rawValue) ? "corrupt or truncated JPEG data" : "JPEG decoding failed"
            throw fail(kind)
        }
        var image = RGBImage(uncheckedWidth: width, height: height, pixels: rgb)
        if let o = exifOrientation(bytes), o != 1 { image = applyEXIFOrientation(image, o) }
        return LoadedImage(image: image, format: .jpeg, alpha: nil,
                           isGrayscale: colorspace == Int32(TJCS_GRAY.rawValue), textChunks: [])
    }
}
