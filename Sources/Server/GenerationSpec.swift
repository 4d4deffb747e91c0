// A generation request as AUTOMATIC1111's API takes it (modules/api/models.py: StableDiffusionTxt2ImgProcessingAPI /
// StableDiffusionImg2ImgProcessingAPI, generated from modules/processing.py StableDiffusionProcessing*): the same field
// names and defaults (prompt "", seed -1, steps 50, cfg_scale 7, 512x512, batch_size 1, n_iter 1, sampler_index
// "Euler", denoising_strength 0.75, mask_blur 4, inpainting_fill 0, send_images true), checked field by field before
// the job is queued, so a bad request is a 422 naming the field and never reaches the model.
import Foundation
import Imaging
import Pipelines

/// What one job generates; every value has been validated.
public struct GenerationSpec: Sendable {
    public enum Mode: String, Sendable { case txt2img, img2img }
    public var mode: Mode = .txt2img
    public var prompt = ""
    public var negativePrompt = ""
    /// The first image's seed (image i gets seed + i).
    public var seed: UInt64 = 0
    /// The first image's variation seed (image i gets subseed + i) and the slerp strength (0: no variation).
    public var subseed: UInt64 = 0
    public var subseedStrength = 0.0
    /// Web UI sampler name ("Euler a", "DPM++ 2M") and the factory name it maps to.
    public var samplerName = "Euler"
    public var schedulerName = "Automatic"
    public var factorySampler = "euler"
    public var steps = 50
    public var cfgScale = 7.0
    public var width = 512
    public var height = 512
    public var batchSize = 1
    public var nIter = 1
    public var eta = 0.0
    public var sendImages = true
    public var saveImages = false
    /// Model name as listed by /sdapi/v1/sd-models (nil: the server's current model).
    public var model: String?
    /// Web UI clip skip (1 = last layer).
    public var clipSkip = 1
    public var emphasis: PromptEmphasis = .diffusers
    /// "CPU" (torch.Generator on the CPU) or "NV" (torch's CUDA Philox generator).
    public var randnSource = "CPU"
    // img2img / inpainting
    public var initImage: RGBImage?
    public var mask: GrayImage?
    public var denoisingStrength = 0.75
    public var maskBlur = 4
    public var inpaintingFill = 0
    public var inpaintingMaskInvert = false
    public var resizeMode = 0
    /// txt2img hires fix (enable_hr): a second img2img pass on the upscaled first-pass latents.
    public struct Hires: Sendable {
        public var scale = 2.0
        /// A latent mode of WebUIImageOps.latentUpscaleModes, or "None" / "Lanczos" / "Nearest" (image resize + encode).
        public var upscaler = "Latent"
        public var upscalerGiven = false
        /// 0: the first pass's steps.
        public var steps = 0
        public var resizeX = 0, resizeY = 0
        public var samplerName: String?, factorySampler: String?
        public var prompt: String?, negativePrompt: String?
    }
    public var hires: Hires?
    /// Whether the request set sampler, steps and cfg_scale (otherwise an LCM model or LCM-LoRA picks its own, as the
    /// CLI does: lcm, 4 steps, cfg 8.5 for an LCM UNet / 1 for an LCM-LoRA).
    public var samplerGiven = false, stepsGiven = false, cfgGiven = false
    /// The request as received, echoed back as `parameters` (images replaced by their sizes to keep responses small).
    public var echo: [String: JSON] = [:]

    public var imageCount: Int { batchSize * nIter }
    public var seeds: [UInt64] { (0..<imageCount).map { seed &+ UInt64($0) } }
}

/// The web UI samplers this server runs: display name, aliases (A1111's k-diffusion names) and SchedulerFactory name.
public enum WebUISamplers {
    public struct Entry: Sendable {
        public let name: String
        public let aliases: [String]
        public let factory: String
    }
    public static let all: [Entry] = [
        Entry(name: "DPM++ 2M", aliases: ["k_dpmpp_2m"], factory: "dpm++2m"),
        Entry(name: "Euler a", aliases: ["k_euler_a", "k_euler_ancestral"], factory: "euler-a"),
        Entry(name: "Euler", aliases: ["k_euler"], factory: "euler"),
        Entry(name: "LMS", aliases: ["k_lms"], factory: "lms"),
        Entry(name: "Heun", aliases: ["k_heun"], factory: "heun"),
        Entry(name: "DDIM", aliases: [], factory: "ddim"),
        Entry(name: "PLMS", aliases: [], factory: "plms"),
        Entry(name: "DDPM", aliases: [], factory: "ddpm"),
        Entry(name: "LCM", aliases: ["lcm"], factory: "lcm"),
        Entry(name: "TCD", aliases: ["tcd"], factory: "tcd"),
    ]
    /// Schedulers (sigma spacing): A1111's "Automatic" (the sampler's own) and "Karras" (DPM++ 2M only here).
    public static let schedulers: [(name: String, label: String)] = [("automatic", "Automatic"), ("karras", "Karras")]

    /// The factory name for a sampler + scheduler pair, or a 422 naming the field.
    static func resolve(sampler: String, scheduler: String, field: String = "sampler_name") throws -> (name: String, factory: String) {
        let key = sampler.trimmingCharacters(in: .whitespaces).lowercased()
        var sched = scheduler.trimmingCharacters(in: .whitespaces).lowercased()
        var entry = all.first { $0.name.lowercased() == key || $0.aliases.contains(key) }
        if entry == nil, key == "dpm++ 2m karras" || key == "k_dpmpp_2m_ka" {
            entry = all[0]
            sched = "karras"
        }
        guard let e = entry else {
            throw APIError.unprocessable(field, "unknown sampler '\(sampler)'; valid: \(all.map(\.name).joined(separator: ", "))")
        }
        switch sched {
        case "", "automatic": return (e.name, e.factory)
        case "karras" where e.factory == "dpm++2m": return (e.name, "dpm++2m-karras")
        case "karras":
            throw APIError.unprocessable("scheduler", "scheduler Karras is available with DPM++ 2M only, not \(e.name)")
        default:
            throw APIError.unprocessable("scheduler", "unknown scheduler '\(scheduler)'; valid: Automatic, Karras")
        }
    }
}

/// Server-wide options that requests may override (A1111 /sdapi/v1/options keys).
public struct ServerOptions: Sendable {
    public var model: String
    public var clipSkip = 1
    public var randnSource = "CPU"
    public var emphasis: PromptEmphasis = .diffusers
    public var etaDDIM = 0.0
}

enum RequestLimits {
    /// A decoded init image or mask: at most this many pixels (4096 x 4096).
    static let maxImagePixels = 4096 * 4096
    static let maxSide = 4096
}

extension GenerationSpec {
    /// Parses an A1111 txt2img (`img2img: false`) or img2img body against the server options.
    public static func parse(_ body: JSON, img2img: Bool, options: ServerOptions) throws -> GenerationSpec {
        let f = try Fields(body)
        var s = GenerationSpec()
        s.mode = img2img ? .img2img : .txt2img
        s.prompt = try f.string("prompt", "")
        s.negativePrompt = try f.string("negative_prompt", "")
        let seed = try f.int("seed", -1)
        guard seed >= -1, seed <= Int(UInt32.max) * 4 else {
            throw APIError.unprocessable("seed", "seed must be -1 (random) or in 0...\(Int(UInt32.max) * 4), got \(seed)")
        }
        // modules/processing.py get_fixed_seed: -1 draws int(random.randrange(4294967294)).
        s.seed = seed == -1 ? UInt64.random(in: 0..<4_294_967_294) : UInt64(seed)
        let subseed = try f.int("subseed", -1)
        guard subseed >= -1, subseed <= Int(UInt32.max) * 4 else {
            throw APIError.unprocessable("subseed", "subseed must be -1 (random) or in 0...\(Int(UInt32.max) * 4), got \(subseed)")
        }
        s.subseed = subseed == -1 ? UInt64.random(in: 0..<4_294_967_294) : UInt64(subseed)
        s.subseedStrength = try f.double("subseed_strength", 0, in: 0...1)
        _ = try f.int("seed_resize_from_h", -1)
        _ = try f.int("seed_resize_from_w", -1)
        let samplerField = try f.optionalString("sampler_name") ?? (try f.string("sampler_index", "Euler"))
        let scheduler = try f.string("scheduler", "Automatic")
        let (name, factory) = try WebUISamplers.resolve(sampler: samplerField.isEmpty ? "Euler" : samplerField, scheduler: scheduler)
        s.samplerName = name
        s.factorySampler = factory
        s.schedulerName = scheduler
        s.samplerGiven = !samplerField.isEmpty && (f.values["sampler_name"] != nil || f.values["sampler_index"] != nil)
        s.stepsGiven = f.values["steps"] != nil
        s.cfgGiven = f.values["cfg_scale"] != nil
        s.steps = try f.int("steps", 50, in: 1...1000)
        s.cfgScale = try f.double("cfg_scale", 7, in: 0...100)
        s.width = try f.int("width", 512, in: 8...RequestLimits.maxSide)
        s.height = try f.int("height", 512, in: 8...RequestLimits.maxSide)
        for (k, v) in [("width", s.width), ("height", s.height)] where v % 8 != 0 {
            throw APIError.unprocessable(k, "\(k) must be a multiple of 8, got \(v)")
        }
        s.batchSize = try f.int("batch_size", 1, in: 1...16)
        s.nIter = try f.int("n_iter", 1, in: 1...16)
        s.sendImages = try f.bool("send_images", true)
        s.saveImages = try f.bool("save_images", false)
        s.eta = try f.double("eta", options.etaDDIM, in: 0...10)
        if try f.bool("restore_faces", false) { throw APIError.unprocessable("restore_faces", "face restoration is not available") }
        if !img2img, try f.bool("enable_hr", false) {
            let h = try parseHires(f, &s)
            s.hires = h
        }
        if let script = try f.optionalString("script_name"), !script.isEmpty {
            throw APIError.unprocessable("script_name", "scripts are not available")
        }
        _ = try f.stringArray("styles")

        // override_settings: per-request options (modules/processing.py applies them around the job).
        let o = Fields(object: try f.object("override_settings"))
        s.model = try o.optionalString("sd_model_checkpoint") ?? options.model
        s.clipSkip = try o.int("CLIP_stop_at_last_layers", options.clipSkip, in: 1...12)
        s.randnSource = try o.string("randn_source", options.randnSource)
        guard ["CPU", "NV"].contains(s.randnSource) else {
            throw APIError.unprocessable("randn_source", "randn_source must be CPU or NV, got \(s.randnSource)")
        }
        s.emphasis = try parseEmphasis(o.optionalString("emphasis"), default: options.emphasis, field: "emphasis")
        s.eta = try o.double("eta_ddim", s.eta, in: 0...10)

        if img2img {
            s.denoisingStrength = try f.double("denoising_strength", 0.75, in: 0...1)
            s.resizeMode = try f.int("resize_mode", 0, in: 0...3)
            // A1111 sends mask_blur_x / mask_blur_y from its UI; one radius is used for both here.
            s.maskBlur = try f.int("mask_blur", try f.int("mask_blur_x", 4, in: 0...64), in: 0...64)
            if try f.int("mask_blur_y", s.maskBlur, in: 0...64) != s.maskBlur {
                throw APIError.unprocessable("mask_blur_y", "mask_blur_y must equal mask_blur (one radius for both axes)")
            }
            s.inpaintingFill = try f.int("inpainting_fill", 0, in: 0...3)
            s.inpaintingMaskInvert = try f.int("inpainting_mask_invert", 0, in: 0...1) == 1
            let images = try f.stringArray("init_images")
            guard let first = images.first else { throw APIError.unprocessable("init_images", "img2img needs init_images (one base64 image)") }
            s.initImage = try decodeImage(first, field: "init_images").image
            if let m = try f.optionalString("mask"), !m.isEmpty {
                let mask = try decodeImage(m, field: "mask").image.grayscale()
                guard let img = s.initImage, mask.width == img.width, mask.height == img.height else {
                    throw APIError.unprocessable("mask", "mask is \(mask.width)x\(mask.height) but the init image is \(s.initImage!.width)x\(s.initImage!.height); they must match")
                }
                s.mask = mask
                if s.resizeMode == 3 {
                    throw APIError.unprocessable("resize_mode", "resize_mode 3 (latent upscale) applies to img2img without a mask")
                }
            }
            try checked("denoising_strength") { try Validation.checkImg2ImgSteps(steps: s.steps, strength: s.denoisingStrength) }
        }
        var echo = f.values
        for k in ["init_images", "mask"] where echo[k] != nil { echo[k] = .string("<\(k) omitted>") }
        s.echo = echo
        return s
    }

    /// enable_hr fields (StableDiffusionProcessingTxt2Img): hr_scale, hr_upscaler, hr_second_pass_steps, hr_resize_x/y,
    /// hr_sampler_name, hr_prompt, hr_negative_prompt and denoising_strength (0.75).
    static func parseHires(_ f: Fields, _ s: inout GenerationSpec) throws -> Hires {
        var h = Hires()
        h.scale = try f.double("hr_scale", 2, in: 1...8)
        if let u = try f.optionalString("hr_upscaler"), !u.isEmpty {
            let valid = WebUIImageOps.latentUpscaleModes.keys.sorted() + ["None", "Lanczos", "Nearest"]
            guard valid.contains(u) else { throw APIError.unprocessable("hr_upscaler", "unknown hr_upscaler '\(u)'; valid: \(valid.joined(separator: ", "))") }
            h.upscaler = u
            h.upscalerGiven = true
        }
        h.steps = try f.int("hr_second_pass_steps", 0, in: 0...1000)
        h.resizeX = try f.int("hr_resize_x", 0, in: 0...RequestLimits.maxSide)
        h.resizeY = try f.int("hr_resize_y", 0, in: 0...RequestLimits.maxSide)
        if let name = try f.optionalString("hr_sampler_name"), !name.isEmpty, name != s.samplerName {
            let (n, factory) = try WebUISamplers.resolve(sampler: name, scheduler: try f.string("hr_scheduler", s.schedulerName), field: "hr_sampler_name")
            h.samplerName = n
            h.factorySampler = factory
        }
        if let p = try f.optionalString("hr_prompt"), !p.isEmpty, p != s.prompt { h.prompt = p }
        if let p = try f.optionalString("hr_negative_prompt"), !p.isEmpty, p != s.negativePrompt { h.negativePrompt = p }
        s.denoisingStrength = try f.double("denoising_strength", 0.75, in: 0...1)
        let t = HiresTarget.of(width: s.width, height: s.height, scale: h.scale, resizeX: h.resizeX, resizeY: h.resizeY)
        guard t.width >= 8, t.height >= 8, t.width <= RequestLimits.maxSide, t.height <= RequestLimits.maxSide else {
            throw APIError.unprocessable(h.resizeX + h.resizeY > 0 ? "hr_resize_x" : "hr_scale",
                                         "the hires size \(t.width)x\(t.height) must be within 8...\(RequestLimits.maxSide) px a side")
        }
        try checked("denoising_strength") { try Validation.checkImg2ImgSteps(steps: h.steps > 0 ? h.steps : s.steps, strength: s.denoisingStrength) }
        return h
    }

    static func parseEmphasis(_ v: String?, default d: PromptEmphasis, field: String) throws -> PromptEmphasis {
        guard let v else { return d }
        if let e = PromptEmphasis.allCases.first(where: { $0.webUIName == v || $0.rawValue == v.lowercased() }) { return e }
        throw APIError.unprocessable(field, "\(field) must be one of Original, No norm, Ignore, None, diffusers; got \(v)")
    }
}

/// Decodes a base64 image (a `data:image/...;base64,` prefix allowed), PNG or JPEG, bounded in size; errors name the field.
func decodeImage(_ s: String, field: String) throws -> LoadedImage {
    var b64 = Substring(s)
    if b64.hasPrefix("data:"), let comma = b64.firstIndex(of: ",") { b64 = b64[b64.index(after: comma)...] }
    guard b64.count <= 48 * 1024 * 1024 else { throw APIError(.contentTooLarge, "invalid \(field)", "\(field): the image is too large") }
    guard let data = Data(base64Encoded: String(b64), options: .ignoreUnknownCharacters), !data.isEmpty else {
        throw APIError.unprocessable(field, "\(field) is not valid base64")
    }
    let bytes = [UInt8](data)
    if let (w, h) = pngSize(bytes), w * h > RequestLimits.maxImagePixels || w > RequestLimits.maxSide || h > RequestLimits.maxSide {
        throw APIError.unprocessable(field, "\(field) is \(w)x\(h); images are limited to \(RequestLimits.maxSide) px a side")
    }
    let img: LoadedImage
    do { img = try ImageIO.decode(bytes, name: field) } catch {
        throw APIError.unprocessable(field, "\(field) is not a decodable PNG or JPEG image")
    }
    guard img.image.width <= RequestLimits.maxSide, img.image.height <= RequestLimits.maxSide else {
        throw APIError.unprocessable(field, "\(field) is \(img.image.width)x\(img.image.height); images are limited to \(RequestLimits.maxSide) px a side")
    }
    return img
}

/// Width and height from a PNG's IHDR, read before decoding (so a huge image is refused without allocating it).
func pngSize(_ b: [UInt8]) -> (Int, Int)? {
    guard b.count >= 24, b[0] == 0x89, b[1] == 0x50, Array(b[12..<16]) == Array("IHDR".utf8) else { return nil }
    let w = b[16..<20].reduce(0) { $0 << 8 | Int($1) }, h = b[20..<24].reduce(0) { $0 << 8 | Int($1) }
    return (w, h)
}

/// Runs a pipeline validation and re-raises its error as a 422 naming `field`.
func checked(_ field: String, _ body: () throws -> Void) throws {
    do { try body() } catch let e as PipelineError { throw APIError.unprocessable(field, e.description) }
}
