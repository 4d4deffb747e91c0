// EXIF orientation (tag 0x0112) for JPEG files, applied the way PIL.ImageOps.exif_transpose does,
// which diffusers' load_image (utils/loading_utils.py) calls before convert("RGB").
import Foundation

/// The orientation value (1...8) from a JPEG's APP1 "Exif" segment, or nil when absent or malformed.
func exifOrientation(_ b: [UInt8]) -> Int? {
    var pos = 2
    while pos + 4 <= b.count, b[pos] == 0xFF {
        let marker = b[pos + 1]
        if marker == 0xDA || marker == 0xD9 { return nil }  // start of scan / end of image
        let len = Int(b[pos + 2]) << 8 | Int(b[pos + 3])
        guard len >= 2, pos + 2 + len <= b.count else { return nil }
        if marker == 0xE1, len >= 16, Array(b[(pos + 4)..<(pos + 10)]) == [0x45, 0x78, 0x69, 0x66, 0, 0] {
            return tiffOrientation(Array(b[(pos + 10)..<(pos + 2 + len)]))
        }
        pos += 2 + len
    }
    return nil
}

private func tiffOrientation(_ t: [UInt8]) -> Int? {
    guard t.count >= 8 else { return nil }
    let little: Bool
    if t[0] == 0x49, t[1] == 0x49 { little = true } else if t[0] == 0x4D, t[1] == 0x4D { little = false } else { return nil }
    func u16(_ o: Int) -> Int? {
        guard o >= 0, o + 2 <= t.count else { return nil }
        return little ? Int(t[o]) | Int(t[o + 1]) << 8 : Int(t[o]) << 8 | Int(t[o + 1])
    }
    func u32(_ o: Int) -> Int? {
        guard let a = u16(o), let b = u16(o + 2) else { return nil }
        return little ? a | b << 16 : a << 16 | b
    }
    guard let ifd = u32(4), let count = u16(ifd) else { return nil }
    for i in 0..<count {
        let e = ifd + 2 + 12 * i
        guard let tag = u16(e) else { return nil }
        if tag == 0x0112 {
            guard let type = u16(e + 2), type == 3, let v = u16(e + 8), (1...8).contains(v) else { return nil }
            return v
        }
    }
    return nil
}

/// Applies an EXIF orientation so the image is upright (ImageOps.exif_transpose method table).
func applyEXIFOrientation(_ img: RGBImage, _ orientation: Int) -> RGBImage {
    let w = img.width, h = img.height
    let swap = orientation >= 5
    let ow = swap ? h : w, oh = swap ? w : h
    var out = [UInt8](repeating: 0, count: w * h * 3)
    for oy in 0..<oh {
        for ox in 0..<ow {
            // Source coordinate of output pixel (ox, oy).
            let (sx, sy): (Int, Int)
            switch orientation {
            case 2: (sx, sy) = (w - 1 - ox, oy)              // FLIP_LEFT_RIGHT
            case 3: (sx, sy) = (w - 1 - ox, h - 1 - oy)      // ROTATE_180
            case 4: (sx, sy) = (ox, h - 1 - oy)              // FLIP_TOP_BOTTOM
            case 5: (sx, sy) = (oy, ox)                      // TRANSPOSE
            case 6: (sx, sy) = (oy, h - 1 - ox)              // ROTATE_270 (90 degrees clockwise)
            case 7: (sx, sy) = (w - 1 - oy, h - 1 - ox)      // TRANSVERSE
            case 8: (sx, sy) = (w - 1 - oy, ox)              // ROTATE_90 (counter-clockwise)
            default: (sx, sy) = (ox, oy)
            }
            let s = (sy * w + sx) * 3, d = (oy * ow + ox) * 3
            out[d] = img.pixels[s]
            out[d + 1] = img.pixels[s + 1]
            out[d + 2] = img.pixels[s + 2]
        }
    }
    return RGBImage(uncheckedWidth: ow, height: oh, pixels: out)
}
