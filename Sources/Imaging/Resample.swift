// Resizing as Pillow's Image.resize does for 8-bit "RGB" and "L" images (reducing_gap=None, default box):
// - Lanczos/bilinear/bicubic/hamming/box: libImaging/Resample.c, separable two-pass convolution
//   (horizontal then vertical), filter support scaled by the downscale factor (precompute_coeffs),
//   coefficients normalised then converted to 22-bit fixed point (normalize_coeffs_8bpc), accumulators
//   start at 1 << 21 (rounding) and results are clipped to 0...255 (clip8).
// - Nearest: src/_imaging.c _resize -> libImaging/Geometry.c ImagingScaleAffine (pixel-centre mapping
//   accumulated in double, truncated with COORD()).
import Foundation

public enum ResampleFilter: String, Sendable, CaseIterable {
    case nearest, box, bilinear, hamming, bicubic, lanczos

    var support: Double {
        switch self {
        case .nearest, .box: return 0.5
        case .bilinear, .hamming: return 1.0
        case .bicubic: return 2.0
        case .lanczos: return 3.0
        }
    }

    func weight(_ x0: Double) -> Double {
        switch self {
        case .nearest, .box: return (x0 > -0.5 && x0 <= 0.5) ? 1.0 : 0.0
        case .bilinear:
            let x = abs(x0)
            return x < 1.0 ? 1.0 - x : 0.0
        case .hamming:
            let x = abs(x0)
            if x == 0.0 { return 1.0 }
            if x >= 1.0 { return 0.0 }
            let px = x * Double.pi
            return sin(px) / px * (Double(Float(0.54)) + Double(Float(0.46)) * cos(px))
        case .bicubic:
            let a = -0.5, x = abs(x0)
            if x < 1.0 { return ((a + 2.0) * x - (a + 3.0)) * x * x + 1 }
            if x < 2.0 { return (((x - 5) * x + 8) * x - 4) * a }
            return 0.0
        case .lanczos:
            guard -3.0 <= x0 && x0 < 3.0 else { return 0.0 }
            return sinc(x0) * sinc(x0 / 3)
        }
    }

    private func sinc(_ x: Double) -> Double {
        if x == 0.0 { return 1.0 }
        let px = x * Double.pi
        return sin(px) / px
    }
}

private let precisionBits = 32 - 8 - 2

/// precompute_coeffs + normalize_coeffs_8bpc: per output index, the first input index, tap count and
/// fixed-point weights (ksize slots each).
private func precomputeCoeffs(inSize: Int, outSize: Int, filter: ResampleFilter)
    -> Coeffs {
    let scale = Double(inSize) / Double(outSize)
    let filterscale = max(scale, 1.0)
    let support = filter.support * filterscale
    let ksize = Int(ceil(support)) * 2 + 1
    var bounds = [(Int, Int)](repeating: (0, 0), count: outSize)
    var kk = [Int32](repeating: 0, count: outSize * ksize)
    var k = [Double](repeating: 0, count: ksize)
    for xx in 0..<outSize {
        let center = (Double(xx) + 0.5) * scale
        let ss = 1.0 / filterscale
        let xmin = max(Int(center - support + 0.5), 0)          // C (int) cast truncates toward zero
        let xmax = min(Int(center + support + 0.5), inSize) - xmin
        var ww = 0.0
        for x in 0..<max(xmax, 0) {
            let w = filter.weight((Double(x + xmin) - center + 0.5) * ss)
            k[x] = w
            ww += w
        }
        for x in 0..<max(xmax, 0) {
            let v = ww != 0.0 ? k[x] / ww : k[x]
            let f = v * Double(1 << precisionBits)
            kk[xx * ksize + x] = Int32(v < 0 ? (-0.5 + f).rounded(.towardZero) : (0.5 + f).rounded(.towardZero))
        }
        bounds[xx] = (xmin, max(xmax, 0))
    }
    return (ksize, bounds, kk)
}

@inline(__always)
private func clip8(_ v: Int) -> UInt8 {
    let s = v >> precisionBits
    return s < 0 ? 0 : (s > 255 ? 255 : UInt8(s))
}

private typealias Coeffs = (ksize: Int, bounds: [(Int, Int)], kk: [Int32])

/// ImagingResampleHorizontal_8bpc over every row of `src` (`rows` rows of `width` pixels).
private func horizontalPass(_ src: [UInt8], width: Int, rows: Int, channels c: Int,
                            outWidth: Int, _ co: Coeffs) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: outWidth * rows * c)
    src.withUnsafeBufferPointer { s in
        co.kk.withUnsafeBufferPointer { kk in
            for yy in 0..<rows {
                let row = yy * width * c
                for xx in 0..<outWidth {
                    let (xmin, xmax) = co.bounds[xx]
                    let kb = xx * co.ksize
                    for ch in 0..<c {
                        var ss = 1 << (precisionBits - 1)
                        for x in 0..<xmax { ss += Int(s[row + (x + xmin) * c + ch]) * Int(kk[kb + x]) }
                        out[(yy * outWidth + xx) * c + ch] = clip8(ss)
                    }
                }
            }
        }
    }
    return out
}

/// ImagingResampleVertical_8bpc: rows of `width` pixels; bounds index rows of `src`.
private func verticalPass(_ src: [UInt8], width: Int, channels c: Int, outHeight: Int, _ co: Coeffs) -> [UInt8] {
    let stride = width * c
    var out = [UInt8](repeating: 0, count: stride * outHeight)
    src.withUnsafeBufferPointer { s in
        co.kk.withUnsafeBufferPointer { kk in
            for yy in 0..<outHeight {
                let (ymin, ymax) = co.bounds[yy]
                let kb = yy * co.ksize
                for i in 0..<stride {
                    var ss = 1 << (precisionBits - 1)
                    for y in 0..<ymax { ss += Int(s[(y + ymin) * stride + i]) * Int(kk[kb + y]) }
                    out[yy * stride + i] = clip8(ss)
                }
            }
        }
    }
    return out
}

/// Convolution resize of interleaved 8-bit planes with `c` channels (ImagingResampleInner).
/// Pass order: horizontal then vertical, except that Pillow >= 12.x (PR #9549, "if height is scaled
/// down significantly more than width, resize vertically first") runs the vertical pass first when
/// the height shrinks and (inHeight - outHeight) > 2 * (inWidth - outWidth). The order changes the
/// intermediate 8-bit rounding, so it must match; the rule was checked against Pillow 13 on 5000+ sizes.
func resampleConvolution(_ src: [UInt8], width: Int, height: Int, channels c: Int,
                         outWidth: Int, outHeight: Int, filter: ResampleFilter) -> [UInt8] {
    let needH = outWidth != width, needV = outHeight != height
    let vert = precomputeCoeffs(inSize: height, outSize: outHeight, filter: filter)
    let hor = precomputeCoeffs(inSize: width, outSize: outWidth, filter: filter)
    if needH && needV && outHeight < height && (height - outHeight) > 2 * (width - outWidth) {
        let tmp = verticalPass(src, width: width, channels: c, outHeight: outHeight, vert)
        return horizontalPass(tmp, width: width, rows: outHeight, channels: c, outWidth: outWidth, hor)
    }
    var img = src
    var vco = vert
    if needH {
        // Only the source rows the vertical pass reads (ybox_first ..< ybox_last).
        let first = vert.bounds[0].0
        let last = vert.bounds[outHeight - 1].0 + vert.bounds[outHeight - 1].1
        for i in 0..<outHeight { vco.bounds[i].0 -= first }
        img = horizontalPass(Array(src[(first * width * c)..<(last * width * c)]), width: width,
                             rows: last - first, channels: c, outWidth: outWidth, hor)
    }
    guard needV else { return img }
    return verticalPass(img, width: needH ? outWidth : width, channels: c, outHeight: outHeight, vco)
}

/// Nearest-neighbour resize (ImagingScaleAffine with a = [in/out, 0, 0, 0, in/out, 0]).
func resampleNearest(_ src: [UInt8], width: Int, height: Int, channels c: Int,
                     outWidth: Int, outHeight: Int) -> [UInt8] {
    let a0 = Double(width) / Double(outWidth), a4 = Double(height) / Double(outHeight)
    func coord(_ v: Double) -> Int { v < 0.0 ? -1 : Int(v) }
    var xin = [Int](repeating: 0, count: outWidth)
    var xo = a0 * 0.5
    for x in 0..<outWidth {
        xin[x] = min(max(coord(xo), 0), width - 1)
        xo += a0
    }
    var out = [UInt8](repeating: 0, count: outWidth * outHeight * c)
    var yo = a4 * 0.5
    for y in 0..<outHeight {
        let yi = min(max(coord(yo), 0), height - 1)
        for x in 0..<outWidth {
            for ch in 0..<c { out[(y * outWidth + x) * c + ch] = src[(yi * width + xin[x]) * c + ch] }
        }
        yo += a4
    }
    return out
}

func resamplePlanes(_ src: [UInt8], width: Int, height: Int, channels: Int,
                    outWidth: Int, outHeight: Int, filter: ResampleFilter) throws -> [UInt8] {
    try checkDimensions(outWidth, outHeight, source: "resize target")
    if outWidth == width && outHeight == height { return src }  // Image.resize returns a copy
    if filter == .nearest {
        return resampleNearest(src, width: width, height: height, channels: channels,
                               outWidth: outWidth, outHeight: outHeight)
    }
    return resampleConvolution(src, width: width, height: height, channels: channels,
                               outWidth: outWidth, outHeight: outHeight, filter: filter)
}

extension RGBImage {
    /// PIL `Image.resize((width, height), resample=filter)` for mode "RGB".
    public func resized(width w: Int, height h: Int, filter: ResampleFilter = .lanczos) throws -> RGBImage {
        RGBImage(uncheckedWidth: w, height: h,
                 pixels: try resamplePlanes(pixels, width: width, height: height, channels: 3,
                                            outWidth: w, outHeight: h, filter: filter))
    }
}

extension GrayImage {
    /// PIL `Image.resize((width, height), resample=filter)` for mode "L".
    public func resized(width w: Int, height h: Int, filter: ResampleFilter = .lanczos) throws -> GrayImage {
        GrayImage(uncheckedWidth: w, height: h,
                  pixels: try resamplePlanes(pixels, width: width, height: height, channels: 1,
                                             outWidth: w, outHeight: h, filter: filter))
    }
}
