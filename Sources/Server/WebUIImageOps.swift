// The image and latent operations AUTOMATIC1111 applies around its sampler (modules/processing.py
// StableDiffusionProcessingImg2Img.init and apply_overlay, sample_hr_pass; modules/images.py resize_image;
// modules/rng.py slerp), written against the libraries the web UI calls so the results match them exactly:
// - mask_blur: OpenCV's cv2.GaussianBlur on an 8-bit mask (imgproc/src/smooth.dispatch.cpp: the bit-exact path for
//   CV_8U, getGaussianKernelBitExact with 8 fraction bits, BORDER_REFLECT_101), once along x and once along y;
// - resize_mode 1 (crop and resize) and 2 (resize and fill: the edges stretched with Pillow's bicubic resize of a
//   zero-size box);
// - the inpainting overlay: Pillow's paste with an "L" mask into RGBa, RGBa -> RGBA, alpha_composite
//   (libImaging/Paste.c, Convert.c, AlphaComposite.c integer arithmetic);
// - the latent mask: Image.resize (bicubic) of the mask to the latent grid, rounded;
// - variation seeds: slerp of two noises; latent upscale modes: torch.nn.functional.interpolate
//   (aten/src/ATen/native/UpSample.h: nearest, nearest-exact, bilinear/bicubic with align_corners=False, and the
//   antialiased separable kernels of UpSampleKernel.cpp).
// Checked against tools/fixtures/webui_processing.py (OpenCV, Pillow and torch themselves).
import Foundation
import Imaging

enum WebUIImageOps {
    // MARK: mask blur (cv2.GaussianBlur, CV_8U)

    /// getGaussianKernelBitExact, then getGaussianKernelFixedPoint_ED for ufixedpoint16 (8 fraction bits): the outer
    /// taps rounded (half to even) with the rounding error carried to the next tap inwards, the centre tap takes what
    /// is left of 256.
    static func gaussianKernel(size n: Int, sigma: Double) -> [Int] {
        let scale2X = -0.125 / (sigma * sigma)
        let half = (n - 1) / 2
        var values = [Double](), sum = 0.0
        var x = 1 - n
        for _ in 0..<half {
            let t = exp(Double(x * x) * scale2X)
            values.append(t)
            sum += t
            x += 2
        }
        sum = sum * 2 + 1
        if n % 2 == 0 { sum += 1 }
        let mul = 1 / sum
        var k = [Int](repeating: 0, count: n), sum2 = 0, err = 0.0
        for i in 0..<half {
            let adj = values[i] * mul * 256 + err
            let t = Int(adj.rounded(.toNearestOrEven))
            err = adj - Double(t)
            k[i] = t
            k[n - 1 - i] = t
            sum2 += t
        }
        k[half] = max(0, 256 - 2 * sum2)
        if n % 2 == 0 { k[half + 1] = k[half] }
        return k
    }

    /// OpenCV borderInterpolate for BORDER_REFLECT_101 (gfedcb|abcdefgh|gfedcba).
    static func reflect101(_ p: Int, _ len: Int) -> Int {
        if len == 1 { return 0 }
        var p = p
        while p < 0 || p >= len { p = p < 0 ? -p : 2 * len - p - 2 }
        return p
    }

    /// One 1-D cv2.GaussianBlur pass of kernel size 2 * int(2.5 r + 0.5) + 1 and sigma r along x or y.
    static func blurPass(_ m: GrayImage, radius: Int, horizontal: Bool) -> GrayImage {
        let n = 2 * Int(2.5 * Double(radius) + 0.5) + 1
        let k = gaussianKernel(size: n, sigma: Double(radius)), r = n / 2
        let (w, h) = (m.width, m.height)
        var out = m
        for y in 0..<h {
            for x in 0..<w {
                var s = 0
                for i in 0..<n {
                    let p = horizontal ? m.pixels[y * w + reflect101(x + i - r, w)] : m.pixels[reflect101(y + i - r, h) * w + x]
                    s += k[i] * Int(p)
                }
                out.pixels[y * w + x] = UInt8(min(255, (s + 128) >> 8))
            }
        }
        return out
    }

    /// A1111 mask_blur: the x blur, then the y blur (each rounded to 8 bits).
    static func blurMask(_ m: GrayImage, radius: Int) -> GrayImage {
        guard radius > 0 else { return m }
        return blurPass(blurPass(m, radius: radius, horizontal: true), radius: radius, horizontal: false)
    }

    // MARK: resize_image

    static func lanczos(_ x: Double) -> Double {
        func sinc(_ v: Double) -> Double { v == 0 ? 1 : sin(v * Double.pi) / (v * Double.pi) }
        return (-3.0 <= x && x < 3.0) ? sinc(x) * sinc(x / 3) : 0
    }

    /// Pillow's bicubic filter (a = -0.5), Image.resize's default.
    static func bicubic(_ x0: Double) -> Double {
        let a = -0.5, x = abs(x0)
        if x < 1 { return ((a + 2) * x - (a + 3)) * x * x + 1 }
        if x < 2 { return (((x - 5) * x + 8) * x - 4) * a }
        return 0
    }

    /// Pillow's precompute_coeffs for a zero-size source box at `at` with Image.resize's default (bicubic) filter
    /// (resize_image calls resize() without a filter for the fill): every output pixel has the same taps; returns
    /// the first source index and the fixed-point weights (PRECISION_BITS 22).
    static func zeroBoxTaps(at: Int, inSize: Int) -> (Int, [Int]) {
        let center = Double(at), support = 2.0
        let xmin = max(Int(center - support + 0.5), 0)
        let count = min(Int(center + support + 0.5), inSize) - xmin
        var w = (0..<max(count, 0)).map { bicubic(Double($0 + xmin) - center + 0.5) }
        let total = w.reduce(0, +)
        if total != 0 { w = w.map { $0 / total } }
        let one = Double(1 << 22)
        return (xmin, w.map { v in Int(v < 0 ? (-0.5 + v * one).rounded(.towardZero) : (0.5 + v * one).rounded(.towardZero)) })
    }

    /// Interleaved 8-bit planes (`c` channels) used for RGB images and masks alike.
    struct Planes { var width: Int, height: Int, c: Int, px: [UInt8] }

    static func planes(_ i: RGBImage) -> Planes { Planes(width: i.width, height: i.height, c: 3, px: i.pixels) }
    static func planes(_ m: GrayImage) -> Planes { Planes(width: m.width, height: m.height, c: 1, px: m.pixels) }

    static func lanczosResize(_ p: Planes, _ w: Int, _ h: Int) throws -> Planes {
        if p.c == 3 { return planes(try RGBImage(width: p.width, height: p.height, pixels: p.px).resized(width: w, height: h, filter: .lanczos)) }
        return planes(try GrayImage(width: p.width, height: p.height, pixels: p.px).resized(width: w, height: h, filter: .lanczos))
    }

    /// Image.paste at (left, top) (negative offsets cut the source).
    static func paste(_ src: Planes, into dst: inout Planes, left: Int, top: Int) {
        for y in 0..<src.height where (0..<dst.height).contains(y + top) {
            for x in 0..<src.width where (0..<dst.width).contains(x + left) {
                for ch in 0..<src.c { dst.px[((y + top) * dst.width + x + left) * dst.c + ch] = src.px[(y * src.width + x) * src.c + ch] }
            }
        }
    }

    /// `resized.resize((len, fill), box=zero-size box at the top/bottom row or left/right column)`: every filled
    /// line is the same 2-tap bicubic mix of the lines next to that edge.
    static func edgeLine(_ p: Planes, vertical: Bool, at: Int) -> [UInt8] {
        let inSize = vertical ? p.height : p.width, len = vertical ? p.width : p.height
        let (first, taps) = zeroBoxTaps(at: at, inSize: inSize)
        var line = [UInt8](repeating: 0, count: len * p.c)
        for j in 0..<len {
            for ch in 0..<p.c {
                var s = 1 << 21
                for (t, k) in taps.enumerated() where k != 0 {
                    let idx = vertical ? ((first + t) * p.width + j) : (j * p.width + first + t)
                    s += Int(p.px[idx * p.c + ch]) * k
                }
                let v = s >> 22
                line[j * p.c + ch] = UInt8(min(max(v, 0), 255))
            }
        }
        return line
    }

    /// modules/images.py resize_image(mode, im, width, height) without an upscaler (Lanczos); mode 3 resizes as 2.
    static func resize(_ p: Planes, mode: Int, width: Int, height: Int) throws -> Planes {
        if mode == 0 { return try lanczosResize(p, width, height) }
        let ratio = Double(width) / Double(height), srcRatio = Double(p.width) / Double(p.height)
        var res = Planes(width: width, height: height, c: p.c, px: [UInt8](repeating: 0, count: width * height * p.c))
        if mode == 1 {
            let sw = ratio > srcRatio ? width : p.width * height / p.height
            let sh = ratio <= srcRatio ? height : p.height * width / p.width
            paste(try lanczosResize(p, max(sw, 1), max(sh, 1)), into: &res, left: width / 2 - sw / 2, top: height / 2 - sh / 2)
            return res
        }
        let sw = ratio < srcRatio ? width : p.width * height / p.height
        let sh = ratio >= srcRatio ? height : p.height * width / p.width
        let resized = try lanczosResize(p, max(sw, 1), max(sh, 1))
        paste(resized, into: &res, left: width / 2 - sw / 2, top: height / 2 - sh / 2)
        if ratio < srcRatio {
            let fill = height / 2 - sh / 2
            if fill > 0 {
                for (line, y0) in [(edgeLine(resized, vertical: true, at: 0), 0), (edgeLine(resized, vertical: true, at: resized.height), fill + sh)] {
                    let block = Planes(width: width, height: fill, c: p.c, px: Array([[UInt8]](repeating: line, count: fill).joined()))
                    paste(block, into: &res, left: 0, top: y0)
                }
            }
        } else if ratio > srcRatio {
            let fill = width / 2 - sw / 2
            if fill > 0 {
                for (line, x0) in [(edgeLine(resized, vertical: false, at: 0), 0), (edgeLine(resized, vertical: false, at: resized.width), fill + sw)] {
                    var px = [UInt8](repeating: 0, count: fill * height * p.c)
                    for y in 0..<height { for x in 0..<fill { for ch in 0..<p.c { px[(y * fill + x) * p.c + ch] = line[y * p.c + ch] } } }
                    paste(Planes(width: fill, height: height, c: p.c, px: px), into: &res, left: x0, top: 0)
                }
            }
        }
        return res
    }

    static func resize(_ i: RGBImage, mode: Int, width: Int, height: Int) throws -> RGBImage {
        try RGBImage(width: width, height: height, pixels: resize(planes(i), mode: mode, width: width, height: height).px)
    }
    static func resize(_ m: GrayImage, mode: Int, width: Int, height: Int) throws -> GrayImage {
        try GrayImage(width: width, height: height, pixels: resize(planes(m), mode: mode, width: width, height: height).px)
    }

    // MARK: overlay and latent mask

    /// mask_for_overlay: the (blurred, resized) mask doubled and clipped to 255.
    static func overlayMask(_ m: GrayImage) -> GrayImage {
        var o = m
        o.pixels = m.pixels.map { UInt8(min(255, Int($0) * 2)) }
        return o
    }

    /// apply_overlay: the original image, pasted through the inverted overlay mask, composited over the generated one.
    static func composite(original: RGBImage, generated: RGBImage, overlayMask m: GrayImage) -> RGBImage {
        func div255(_ v: Int) -> Int {
            let t = v + 128
            return ((t >> 8) + t) >> 8
        }
        var out = generated
        for i in 0..<(m.width * m.height) {
            let inv = 255 - Int(m.pixels[i])
            // paste_mask_L into an empty RGBa image: every band, alpha included, is DIV255(value * mask).
            let a = div255(255 * inv)
            guard a != 0 else { continue }
            for ch in 0..<3 {
                let pre = div255(Int(original.pixels[3 * i + ch]) * inv)
                let src = a == 255 ? pre : min(255, 255 * pre / a)        // RGBa -> RGBA
                // alpha_composite over an opaque image (PRECISION_BITS 7).
                let coef1 = a * 255 * 255 * 128 / (255 * 255), coef2 = 255 * 128 - coef1
                let t = src * coef1 + Int(generated.pixels[3 * i + ch]) * coef2 + (0x80 << 7)
                out.pixels[3 * i + ch] = UInt8(min(255, (((t >> 8) + t) >> 8) >> 7))
            }
        }
        return out
    }

    /// init(): the latent mask, 1 where the sampler repaints: the mask as RGB resized (bicubic) to the latent grid,
    /// channel 0 / 255, rounded.
    static func latentMask(_ m: GrayImage, width: Int, height: Int) throws -> [Float] {
        let small = try m.rgb().resized(width: width, height: height, filter: .bicubic)
        return (0..<(width * height)).map { (Float(small.pixels[3 * $0]) / 255).rounded(.toNearestOrEven) }
    }

    // MARK: noise

    /// modules/rng.py slerp(val, low, high) for one image's (C, H, W) noise: norms and dots over H per (c, w).
    static func slerp(_ val: Float, _ low: [Float], _ high: [Float], shape: [Int]) -> [Float] {
        let (c, h, w) = (shape[0], shape[1], shape[2])
        var dot = [Float](repeating: 0, count: c * w), nl = dot, nh = dot
        for ch in 0..<c { for x in 0..<w {
            var sl: Float = 0, sh: Float = 0
            for y in 0..<h {
                let i = (ch * h + y) * w + x
                sl += low[i] * low[i]
                sh += high[i] * high[i]
            }
            nl[ch * w + x] = sl.squareRoot()
            nh[ch * w + x] = sh.squareRoot()
        } }
        for ch in 0..<c { for x in 0..<w {
            var d: Float = 0
            for y in 0..<h {
                let i = (ch * h + y) * w + x
                d += (low[i] / nl[ch * w + x]) * (high[i] / nh[ch * w + x])
            }
            dot[ch * w + x] = d
        } }
        if dot.reduce(0, +) / Float(dot.count) > 0.9995 { return zip(low, high).map { $0 * val + $1 * (1 - val) } }
        var out = low
        for ch in 0..<c { for x in 0..<w {
            let omega = acos(dot[ch * w + x]), so = sin(omega)
            let a = sin((1 - val) * omega) / so, b = sin(val * omega) / so
            for y in 0..<h {
                let i = (ch * h + y) * w + x
                out[i] = a * low[i] + b * high[i]
            }
        } }
        return out
    }

    // MARK: latent resize (torch.nn.functional.interpolate)

    /// shared.latent_upscale_modes: web UI name -> (mode, antialias).
    static let latentUpscaleModes: [String: (String, Bool)] = [
        "Latent": ("bilinear", false), "Latent (antialiased)": ("bilinear", true), "Latent (bicubic)": ("bicubic", false),
        "Latent (bicubic antialiased)": ("bicubic", true), "Latent (nearest)": ("nearest", false),
        "Latent (nearest-exact)": ("nearest-exact", false),
    ]

    /// One axis of a separable resize: per output index, (first input index, weights); indices are clamped.
    typealias Axis = [(Int, [Float])]

    static func axis(mode: String, antialias: Bool, inSize: Int, outSize: Int) -> Axis {
        let scale = Float(inSize) / Float(outSize)
        return (0..<outSize).map { o -> (Int, [Float]) in
            switch mode {
            case "nearest": return (min(Int((Float(o) * scale).rounded(.down)), inSize - 1), [1])
            case "nearest-exact": return (min(Int(((Float(o) + 0.5) * scale).rounded(.down)), inSize - 1), [1])
            default: break
            }
            if antialias {
                let cubic = mode == "bicubic"
                let support: Float = (cubic ? 2 : 1) * (scale >= 1 ? scale : 1)
                let center = scale * (Float(o) + 0.5), inv: Float = scale >= 1 ? 1 / scale : 1
                let xmin = max(Int(center - support + 0.5), 0), count = min(Int(center + support + 0.5), inSize) - xmin
                var ws = (0..<count).map { j -> Float in
                    let x = abs((Float(j + xmin) - center + 0.5) * inv)
                    if !cubic { return x < 1 ? 1 - x : 0 }
                    let a: Float = -0.5
                    if x < 1 { return ((a + 2) * x - (a + 3)) * x * x + 1 }
                    if x < 2 { return (((x - 5) * x + 8) * x - 4) * a }
                    return 0
                }
                let total = ws.reduce(0, +)
                if total != 0 { ws = ws.map { $0 / total } }
                return (xmin, ws)
            }
            if mode == "bicubic" {
                let real = scale * (Float(o) + 0.5) - 0.5
                let i0 = Int(real.rounded(.down)), t = real - Float(i0), a: Float = -0.75
                func c1(_ x: Float) -> Float { ((a + 2) * x - (a + 3)) * x * x + 1 }
                func c2(_ x: Float) -> Float { ((a * x - 5 * a) * x + 8 * a) * x - 4 * a }
                return (i0 - 1, [c2(t + 1), c1(t), c1(1 - t), c2(2 - t)])
            }
            var real = scale * (Float(o) + 0.5) - 0.5
            if real < 0 { real = 0 }
            let i0 = Int(real), l1 = real - Float(i0)
            return i0 < inSize - 1 ? (i0, [1 - l1, l1]) : (i0, [1])
        }
    }

    /// interpolate(x (N, C, H, W), size=(outH, outW), mode, antialias): width first, then height (torch's order).
    static func interpolate(_ x: [Float], shape: [Int], height oh: Int, width ow: Int, mode: String, antialias: Bool) -> [Float] {
        let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3])
        func clampIdx(_ i: Int, _ size: Int) -> Int { min(max(i, 0), size - 1) }
        var cur = x, curW = w
        if ow != w || !antialias {
            let ax = axis(mode: mode, antialias: antialias, inSize: w, outSize: ow)
            var out = [Float](repeating: 0, count: n * c * h * ow)
            for plane in 0..<(n * c * h) {
                for o in 0..<ow {
                    let (first, ws) = ax[o]
                    var s: Float = 0
                    for (j, wt) in ws.enumerated() { s += wt * cur[plane * w + clampIdx(first + j, w)] }
                    out[plane * ow + o] = s
                }
            }
            cur = out
            curW = ow
        }
        guard oh != h || !antialias else { return cur }
        let ay = axis(mode: mode, antialias: antialias, inSize: h, outSize: oh)
        var out = [Float](repeating: 0, count: n * c * oh * curW)
        for plane in 0..<(n * c) {
            for o in 0..<oh {
                let (first, ws) = ay[o]
                for xx in 0..<curW {
                    var s: Float = 0
                    for (j, wt) in ws.enumerated() { s += wt * cur[(plane * h + clampIdx(first + j, h)) * curW + xx] }
                    out[(plane * oh + o) * curW + xx] = s
                }
            }
        }
        return out
    }
}
