// Image containers for the image layer (errors: ImageError.swift).
// Follows the PIL data model used by diffusers (utils/loading_utils.py load_image,
// image_processor.py VaeImageProcessor): 8-bit RGB ("RGB") and 8-bit grayscale ("L") images,
// rows top to bottom, channels interleaved.
import Foundation

/// Largest accepted width or height for decoded images and for images built in memory.
public let maxImageDimension = 16384

/// Checks a width/height pair against `maxImageDimension`; `source` names the file or operation.
@inline(__always)
func checkDimensions(_ width: Int, _ height: Int, source: String) throws {
    guard width >= 1, height >= 1, width <= maxImageDimension, height <= maxImageDimension else {
        throw ImageError.invalidDimensions(source, width, height)
    }
}

/// 8-bit RGB image, PIL mode "RGB": `pixels[(y * width + x) * 3 + c]`.
public struct RGBImage: Equatable, Sendable {
    public let width: Int
    public let height: Int
    public var pixels: [UInt8]

    public init(width: Int, height: Int, pixels: [UInt8]) throws {
        try checkDimensions(width, height, source: "RGBImage")
        guard pixels.count == width * height * 3 else {
            throw ImageError.pixelCountMismatch(expected: width * height * 3, got: pixels.count)
        }
        self.width = width
        self.height = height
        self.pixels = pixels
    }

    /// A solid-colour image (PIL `Image.new("RGB", size, color)`).
    public init(width: Int, height: Int, fill: (UInt8, UInt8, UInt8) = (0, 0, 0)) throws {
        try checkDimensions(width, height, source: "RGBImage")
        var p = [UInt8](repeating: 0, count: width * height * 3)
        if fill != (0, 0, 0) {
            for i in 0..<(width * height) {
                p[3 * i] = fill.0
                p[3 * i + 1] = fill.1
                p[3 * i + 2] = fill.2
            }
        }
        self.width = width
        self.height = height
        self.pixels = p
    }

    /// Internal initializer for sizes already validated by the caller.
    init(uncheckedWidth width: Int, height: Int, pixels: [UInt8]) {
        self.width = width
        self.height = height
        self.pixels = pixels
    }

    public subscript(x: Int, y: Int) -> (UInt8, UInt8, UInt8) {
        let i = (y * width + x) * 3
        return (pixels[i], pixels[i + 1], pixels[i + 2])
    }

    /// PIL `convert("L")`: ITU-R 601-2 luma in 16-bit fixed point (Pillow Convert.c, L24 macro):
    /// L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16.
    public func grayscale() -> GrayImage {
        var out = [UInt8](repeating: 0, count: width * height)
        pixels.withUnsafeBufferPointer { p in
            for i in 0..<(width * height) {
                let v = Int(p[3 * i]) * 19595 + Int(p[3 * i + 1]) * 38470 + Int(p[3 * i + 2]) * 7471 + 0x8000
                out[i] = UInt8(truncatingIfNeeded: v >> 16)
            }
        }
        return GrayImage(uncheckedWidth: width, height: height, pixels: out)
    }

    /// Crops the rectangle [left, left+width) x [top, top+height); it must lie inside the image.
    public func cropped(left: Int, top: Int, width w: Int, height h: Int) throws -> RGBImage {
        RGBImage(uncheckedWidth: w, height: h,
                 pixels: try cropPlanes(pixels, width, height, 3, left, top, w, h))
    }
}

/// 8-bit grayscale image, PIL mode "L": `pixels[y * width + x]`.
public struct GrayImage: Equatable, Sendable {
    public let width: Int
    public let height: Int
    public var pixels: [UInt8]

    public init(width: Int, height: Int, pixels: [UInt8]) throws {
        try checkDimensions(width, height, source: "GrayImage")
        guard pixels.count == width * height else {
            throw ImageError.pixelCountMismatch(expected: width * height, got: pixels.count)
        }
        self.width = width
        self.height = height
        self.pixels = pixels
    }

    init(uncheckedWidth width: Int, height: Int, pixels: [UInt8]) {
        self.width = width
        self.height = height
        self.pixels = pixels
    }

    public subscript(x: Int, y: Int) -> UInt8 { pixels[y * width + x] }

    /// PIL `convert("RGB")` from "L": the gray level is copied into R, G and B.
    public func rgb() -> RGBImage {
        var out = [UInt8](repeating: 0, count: width * height * 3)
        for i in 0..<(width * height) {
            let v = pixels[i]
            out[3 * i] = v
            out[3 * i + 1] = v
            out[3 * i + 2] = v
        }
        return RGBImage(uncheckedWidth: width, height: height, pixels: out)
    }

    public func cropped(left: Int, top: Int, width w: Int, height h: Int) throws -> GrayImage {
        GrayImage(uncheckedWidth: w, height: h,
                  pixels: try cropPlanes(pixels, width, height, 1, left, top, w, h))
    }
}

func cropPlanes(_ src: [UInt8], _ width: Int, _ height: Int, _ c: Int,
                _ left: Int, _ top: Int, _ w: Int, _ h: Int) throws -> [UInt8] {
    guard w >= 1, h >= 1, left >= 0, top >= 0, left + w <= width, top + h <= height else {
        throw ImageError.invalidArgument(
            "crop box (left \(left), top \(top), \(w)x\(h)) does not fit in a \(width)x\(height) image")
    }
    var out = [UInt8](repeating: 0, count: w * h * c)
    for y in 0..<h {
        let s = ((top + y) * width + left) * c
        out.replaceSubrange((y * w * c)..<((y + 1) * w * c), with: src[s..<(s + w * c)])
    }
    return out
}
