// Image <-> tensor conversions as diffusers' VaeImageProcessor (image_processor.py, diffusers 0.42):
// preprocess: resize (PIL Lanczos, to a multiple of vae_scale_factor) -> pil_to_numpy (x / 255, float32)
//   -> normalize (2x - 1) -> CHW; masks: resize -> convert("L") -> /255 -> binarize (<0.5 -> 0, else 1).
// postprocess: denormalize ((x * 0.5 + 0.5).clamp(0, 1)) -> numpy_to_pil ((x * 255).round(), numpy's
//   round-half-to-even) -> uint8. Also _resize_and_crop / _resize_and_fill-free centre crop and
//   utils/pil_utils.py make_image_grid (with optional torchvision make_grid padding).
import Foundation

/// How `VaeImageProcessor.preprocess` fits an image to the target size (diffusers `resize_mode`).
public enum ResizeMode: String, Sendable { case `default`, crop }

public struct VaeImageProcessor: Sendable {
    public var vaeScaleFactor: Int
    public var resample: ResampleFilter
    public init(vaeScaleFactor: Int = 8, resample: ResampleFilter = .lanczos) {
        self.vaeScaleFactor = vaeScaleFactor
        self.resample = resample
    }

    /// get_default_height_width: the requested (or image) size rounded down to a multiple of vae_scale_factor.
    public func defaultHeightWidth(imageWidth: Int, imageHeight: Int, height: Int? = nil, width: Int? = nil) throws -> (height: Int, width: Int) {
        let w = width ?? imageWidth, h = height ?? imageHeight
        let rw = w - w % vaeScaleFactor, rh = h - h % vaeScaleFactor
        guard rw >= vaeScaleFactor, rh >= vaeScaleFactor else {
            throw ImageError.invalidArgument("image size \(w)x\(h) is smaller than the VAE scale factor \(vaeScaleFactor)")
        }
        return (rh, rw)
    }

    /// Image -> float CHW tensor (3, H, W) in [-1, 1]. Returns the tensor and its height/width.
    public func preprocess(_ image: RGBImage, height: Int? = nil, width: Int? = nil,
                           resizeMode: ResizeMode = .default) throws -> (tensor: [Float], height: Int, width: Int) {
        let (h, w) = try defaultHeightWidth(imageWidth: image.width, imageHeight: image.height, height: height, width: width)
        let resized = resizeMode == .crop ? try resizeAndCrop(image, width: w, height: h, filter: resample)
                                          : try image.resized(width: w, height: h, filter: resample)
        return (VaeImageProcessor.toTensor(resized), h, w)
    }

    /// Mask -> float (1, H, W) in [0, 1] (binarized when `binarize`): resize first, then convert("L").
    public func preprocessMask(_ mask: RGBImage, height: Int? = nil, width: Int? = nil,
                               binarize: Bool = true) throws -> (tensor: [Float], height: Int, width: Int) {
        let (h, w) = try defaultHeightWidth(imageWidth: mask.width, imageHeight: mask.height, height: height, width: width)
        let gray = try mask.resized(width: w, height: h, filter: resample).grayscale()
        return (VaeImageProcessor.maskToTensor(gray, binarize: binarize), h, w)
    }

    /// Same for a mask that is already grayscale (PIL "L").
    public func preprocessMask(_ mask: GrayImage, height: Int? = nil, width: Int? = nil,
                               binarize: Bool = true) throws -> (tensor: [Float], height: Int, width: Int) {
        let (h, w) = try defaultHeightWidth(imageWidth: mask.width, imageHeight: mask.height, height: height, width: width)
        let gray = try mask.resized(width: w, height: h, filter: resample)
        return (VaeImageProcessor.maskToTensor(gray, binarize: binarize), h, w)
    }

    /// pil_to_numpy + normalize, HWC -> CHW: t[c][y][x] = 2 * (p / 255) - 1 in float32.
    public static func toTensor(_ image: RGBImage) -> [Float] {
        let n = image.width * image.height
        var t = [Float](repeating: 0, count: 3 * n)
        for i in 0..<n {
            for c in 0..<3 { t[c * n + i] = 2.0 * (Float(image.pixels[3 * i + c]) / 255.0) - 1.0 }
        }
        return t
    }

    /// pil_to_numpy (+ binarize) for a single-channel mask: (1, H, W) in [0, 1].
    public static func maskToTensor(_ mask: GrayImage, binarize: Bool) -> [Float] {
        mask.pixels.map { p in
            let v = Float(p) / 255.0
            return binarize ? (v < 0.5 ? 0 : 1) : v
        }
    }

    /// denormalize + numpy_to_pil: CHW float in [-1, 1] -> 8-bit RGB.
    public static func toImage(_ tensor: [Float], height: Int, width: Int) throws -> RGBImage {
        try checkDimensions(width, height, source: "tensor")
        guard tensor.count == 3 * width * height else {
            throw ImageError.invalidArgument("tensor has \(tensor.count) values, expected 3x\(height)x\(width) = \(3 * width * height)")
        }
        let n = width * height
        var px = [UInt8](repeating: 0, count: 3 * n)
        for i in 0..<n {
            for c in 0..<3 { px[3 * i + c] = denormalizeToByte(tensor[c * n + i]) }
        }
        return RGBImage(uncheckedWidth: width, height: height, pixels: px)
    }

    /// Same for a CHW tensor already in [0, 1] (do_normalize = False), 1 channel -> gray.
    public static func toGray(_ tensor: [Float], height: Int, width: Int) throws -> GrayImage {
        try checkDimensions(width, height, source: "tensor")
        guard tensor.count == width * height else {
            throw ImageError.invalidArgument("tensor has \(tensor.count) values, expected 1x\(height)x\(width)")
        }
        return GrayImage(uncheckedWidth: width, height: height, pixels: tensor.map { unitToByte($0) })
    }

    /// (x * 0.5 + 0.5).clamp(0, 1), then (v * 255).round() in float32 (NaN maps to 0).
    @inline(__always) static func denormalizeToByte(_ x: Float) -> UInt8 { unitToByte(x * 0.5 + 0.5) }

    @inline(__always) static func unitToByte(_ u: Float) -> UInt8 {
        let v = u.isNaN ? 0 : min(max(u, 0), 1)
        return UInt8((v * 255).rounded(.toNearestOrEven))
    }
}

/// diffusers _resize_and_crop: resize keeping the aspect ratio so the image covers (width, height),
/// then centre it, cutting off the excess.
public func resizeAndCrop(_ image: RGBImage, width: Int, height: Int, filter: ResampleFilter = .lanczos) throws -> RGBImage {
    try checkDimensions(width, height, source: "resize target")
    let ratio = Double(width) / Double(height), srcRatio = Double(image.width) / Double(image.height)
    let srcW = ratio > srcRatio ? width : image.width * height / image.height
    let srcH = ratio <= srcRatio ? height : image.height * width / image.width
    let resized = try image.resized(width: max(srcW, 1), height: max(srcH, 1), filter: filter)
    let left = srcW / 2 - width / 2, top = srcH / 2 - height / 2   // paste offset (width//2 - src_w//2) negated
    return try resized.cropped(left: left, top: top, width: width, height: height)
}

/// Centre crop to (width, height) (torchvision CenterCrop: top = round((H - h) / 2), half to even).
public func centerCrop(_ image: RGBImage, width: Int, height: Int) throws -> RGBImage {
    guard width <= image.width, height <= image.height else {
        throw ImageError.invalidArgument("centre crop \(width)x\(height) is larger than the \(image.width)x\(image.height) image")
    }
    let top = Int((Double(image.height - height) / 2).rounded(.toNearestOrEven))
    let left = Int((Double(image.width - width) / 2).rounded(.toNearestOrEven))
    return try image.cropped(left: left, top: top, width: width, height: height)
}

/// Sample grid (diffusers make_image_grid; with padding > 0, torchvision make_grid layout):
/// images fill rows left to right; `columns` defaults to ceil(count / rows); empty cells stay `padValue`.
public func imageGrid(_ images: [RGBImage], rows: Int, columns: Int? = nil,
                      padding: Int = 0, padValue: UInt8 = 0) throws -> RGBImage {
    guard let first = images.first else { throw ImageError.invalidArgument("image grid needs at least one image") }
    guard rows >= 1, padding >= 0 else { throw ImageError.invalidArgument("image grid needs rows >= 1 and padding >= 0") }
    let cols = columns ?? (images.count + rows - 1) / rows
    guard cols >= 1, rows * cols >= images.count else {
        throw ImageError.invalidArgument("\(images.count) images do not fit in a \(rows)x\(cols) grid")
    }
    let w = first.width, h = first.height
    guard images.allSatisfy({ $0.width == w && $0.height == h }) else {
        throw ImageError.invalidArgument("all images in a grid must have the same size (\(w)x\(h))")
    }
    let gw = cols * (w + padding) + padding, gh = rows * (h + padding) + padding
    try checkDimensions(gw, gh, source: "image grid")
    var px = [UInt8](repeating: padValue, count: gw * gh * 3)
    for (i, img) in images.enumerated() {
        let x0 = (i % cols) * (w + padding) + padding, y0 = (i / cols) * (h + padding) + padding
        for y in 0..<h {
            let d = ((y0 + y) * gw + x0) * 3, s = y * w * 3
            px.replaceSubrange(d..<(d + w * 3), with: img.pixels[s..<(s + w * 3)])
        }
    }
    return RGBImage(uncheckedWidth: gw, height: gh, pixels: px)
}
