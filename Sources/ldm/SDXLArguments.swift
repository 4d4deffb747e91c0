// SDXL micro-conditioning flags of txt2img, img2img and inpaint (diffusers' original_size, crops_coords_top_left,
// target_size, their negative_* counterparts and the refiner's aesthetic_score / negative_aesthetic_score): sizes as
// WIDTHxHEIGHT like ComfyUI's CLIPTextEncodeSDXL width/height and target_width/target_height, the crop as AUTOMATIC1111's
// sdxl_crop_top / sdxl_crop_left settings, the aesthetic scores as its sdxl_refiner_high/low_aesthetic_score.
import ArgumentParser
import Foundation
import Imaging
import Pipelines

struct SDXLArguments: ParsableArguments {
    @Option(name: .customLong("original-size"), help: "SDXL: the original_size conditioning, WIDTHxHEIGHT (default: the output size).")
    var originalSize: String?

    @Option(name: .customLong("crop-top"), help: "SDXL: crops_coords_top_left's top, in pixels (default 0).")
    var cropTop: Int?

    @Option(name: .customLong("crop-left"), help: "SDXL: crops_coords_top_left's left, in pixels (default 0).")
    var cropLeft: Int?

    @Option(name: .customLong("target-size"), help: "SDXL: the target_size conditioning, WIDTHxHEIGHT (default: the output size).")
    var targetSize: String?

    @Option(name: .customLong("negative-original-size"), help: "SDXL: negative_original_size, WIDTHxHEIGHT (txt2img uses it only with --negative-target-size, as diffusers).")
    var negativeOriginalSize: String?

    @Option(name: .customLong("negative-crop-top"), help: "SDXL: negative_crops_coords_top_left's top (default 0).")
    var negativeCropTop: Int?

    @Option(name: .customLong("negative-crop-left"), help: "SDXL: negative_crops_coords_top_left's left (default 0).")
    var negativeCropLeft: Int?

    @Option(name: .customLong("negative-target-size"), help: "SDXL: negative_target_size, WIDTHxHEIGHT.")
    var negativeTargetSize: String?

    @Option(name: .customLong("aesthetic-score"), help: "SDXL refiner (img2img, inpaint, --refiner): aesthetic_score (default 6).")
    var aestheticScore: Double?

    @Option(name: .customLong("negative-aesthetic-score"), help: "SDXL refiner: negative_aesthetic_score (default 2.5).")
    var negativeAestheticScore: Double?

    var given: Bool {
        originalSize != nil || cropTop != nil || cropLeft != nil || targetSize != nil || negativeOriginalSize != nil
            || negativeCropTop != nil || negativeCropLeft != nil || negativeTargetSize != nil || aestheticScore != nil
            || negativeAestheticScore != nil
    }

    /// "WIDTHxHEIGHT" as diffusers' (height, width).
    static func size(_ s: String?, _ flag: String) throws -> [Int]? {
        guard let s else { return nil }
        let parts = s.lowercased().split(separator: "x", omittingEmptySubsequences: false)
        guard parts.count == 2, let w = Int(parts[0]), let h = Int(parts[1]), w > 0, h > 0, w <= 1 << 20, h <= 1 << 20 else {
            throw CLIError("--\(flag) must be WIDTHxHEIGHT with positive integers (e.g. 1024x1024), got '\(s)'")
        }
        return [h, w]
    }

    static func crop(_ top: Int?, _ left: Int?, _ flag: String) throws -> [Int]? {
        guard top != nil || left != nil else { return nil }
        let c = [top ?? 0, left ?? 0]
        guard c.allSatisfy({ $0 >= 0 && $0 <= 1 << 20 }) else {
            throw CLIError("--\(flag)-top / --\(flag)-left must be integers in 0...\(1 << 20), got \(c[0]), \(c[1])")
        }
        return c
    }

    /// The flags as `PromptOptions.sizeConditioning`; refused for models that are not SDXL.
    func apply(to p: inout PromptOptions, isSDXL: Bool, model: String) throws {
        guard given else { return }
        guard isSDXL else {
            throw CLIError("--original-size, --crop-*, --target-size, --negative-* sizes and --aesthetic-score are SDXL conditioning; \(model) is not an SDXL model")
        }
        var c = p.sizeConditioning
        c.originalSize = try Self.size(originalSize, "original-size")
        c.cropsCoordsTopLeft = try Self.crop(cropTop, cropLeft, "crop")
        c.targetSize = try Self.size(targetSize, "target-size")
        c.negativeOriginalSize = try Self.size(negativeOriginalSize, "negative-original-size")
        c.negativeCropsCoordsTopLeft = try Self.crop(negativeCropTop, negativeCropLeft, "negative-crop")
        c.negativeTargetSize = try Self.size(negativeTargetSize, "negative-target-size")
        if let a = aestheticScore { c.aestheticScore = a }
        if let a = negativeAestheticScore { c.negativeAestheticScore = a }
        for (flag, v) in [("aesthetic-score", aestheticScore), ("negative-aesthetic-score", negativeAestheticScore)] {
            if let v, !(v.isFinite && abs(v) <= 1e6) { throw CLIError("--\(flag) must be a finite number, got \(v)") }
        }
        p.sizeConditioning = c
    }

    /// Infotext fields for what was given (WIDTHxHEIGHT, crops as top,left).
    func annotate(_ g: inout GenerationParameters) {
        let fields: [(String, String?)] = [
            ("Original size", originalSize), ("Crop top-left", cropTop != nil || cropLeft != nil ? "\(cropTop ?? 0),\(cropLeft ?? 0)" : nil),
            ("Target size", targetSize), ("Negative original size", negativeOriginalSize),
            ("Negative crop top-left", negativeCropTop != nil || negativeCropLeft != nil ? "\(negativeCropTop ?? 0),\(negativeCropLeft ?? 0)" : nil),
            ("Negative target size", negativeTargetSize), ("Aesthetic score", aestheticScore.map { "\($0)" }),
            ("Negative aesthetic score", negativeAestheticScore.map { "\($0)" }),
        ]
        for (k, v) in fields { if let v { g.extra.append(.init(k, v)) } }
    }
}

extension ModelKind {
    /// SDXL base, refiner or inpainting models (their UNet takes the "text_time" conditioning).
    var isSDXL: Bool {
        switch self {
        case .text(.sdxl), .text(.sdxlRefiner), .inpainting(.sdxl), .inpainting(.sdxlRefiner): return true
        default: return false
        }
    }
}
