// Runs a job through the same library calls `ldm txt2img` / `img2img` / `inpaint` make (StableDiffusionPipeline with a
// batch of one, TorchGenerator(seed, .avx2) or CUDAGenerator(seed) for A1111's "CPU" / "NV" noise), one image per
// seed (AUTOMATIC1111: image i of a job gets seed + i), so an API image is bit-identical to the CLI's with the same
// model, prompt, seed and sampler. Interrupt and skip decode the latents reached so far, as the web UI does.
import Foundation
import Imaging
import Pipelines
import TensorCore

public final class Engine: @unchecked Sendable {
    public let registry: ModelRegistry
    public let cache: ModelCache
    /// Where save_images writes PNGs (nil: save_images is refused).
    public let outputDir: URL?
    /// Where <lora:NAME:WEIGHT> prompt tags are looked up (nil: LoRA tags are refused).
    public let loraDir: URL?

    public init(registry: ModelRegistry, cache: ModelCache, outputDir: URL?, loraDir: URL? = nil) {
        self.registry = registry
        self.cache = cache
        self.outputDir = outputDir
        self.loraDir = loraDir
    }

    /// The infotext fields `ldm txt2img` writes (GenerationOptions.parameters + PromptArguments.annotate + write).
    static func parameters(_ s: GenerationSpec, seed: UInt64, model: String, index: Int, width: Int, height: Int) -> GenerationParameters {
        var g = GenerationParameters(steps: s.steps, sampler: s.samplerName, seed: Int(truncatingIfNeeded: seed), model: model,
                                     extra: (s.eta != 0 ? [.init("Eta", "\(s.eta)")] : []) + [.init("RNG", s.randnSource)])
        if s.factorySampler == "dpm++2m-karras" { g.extra.insert(.init("Schedule type", "Karras"), at: 0) }
        g.prompt = s.prompt
        g.negativePrompt = s.negativePrompt
        g.cfgScale = s.cfgScale
        if s.clipSkip > 1 { g.extra.append(.init("Clip skip", "\(s.clipSkip)")) }
        let hasSyntax = [s.prompt, s.negativePrompt].contains { $0.contains("(") || $0.contains("[") }
        if s.emphasis != .original, hasSyntax { g.extra.append(.init("Emphasis", s.emphasis.webUIName ?? "None")) }
        if s.subseedStrength > 0 {
            g.extra += [.init("Variation seed", "\(s.subseed &+ UInt64(index))"), .init("Variation seed strength", "\(s.subseedStrength)")]
        }
        if s.mode == .img2img || s.hires != nil { g.extra.append(.init("Denoising strength", "\(s.denoisingStrength)")) }
        if s.mode == .img2img, s.mask != nil {
            if s.maskBlur > 0 { g.extra.append(.init("Mask blur", "\(s.maskBlur)")) }
            if s.inpaintingMaskInvert { g.extra.append(.init("Mask mode", "Inpaint not masked")) }
            g.extra.append(.init("Masked content", ["fill", "original", "latent noise", "latent nothing"][s.inpaintingFill]))
        }
        if s.mode == .img2img, s.resizeMode != 0 {
            g.extra.append(.init("Resize mode", ["Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)"][s.resizeMode]))
        }
        if let h = s.hires {
            if h.resizeX == 0 && h.resizeY == 0 { g.extra.append(.init("Hires upscale", "\(h.scale)")) }
            else { g.extra.append(.init("Hires resize", "\(h.resizeX)x\(h.resizeY)")) }
            if h.steps > 0 { g.extra.append(.init("Hires steps", "\(h.steps)")) }
            if h.upscalerGiven { g.extra.append(.init("Hires upscaler", h.upscaler)) }
            if let n = h.samplerName { g.extra.append(.init("Hires sampler", n)) }
            if let p = h.prompt { g.extra.append(.init("Hires prompt", p)) }
            if let p = h.negativePrompt { g.extra.append(.init("Hires negative prompt", p)) }
        }
        g.width = width
        g.height = height
        if s.imageCount > 1 { g.extra += [.init("Batch size", "\(s.imageCount)"), .init("Batch pos", "\(index)")] }
        return g
    }

    /// Worker-thread entry: runs every image of the job, then finishes it.
    public func run(_ job: Job) {
        var s = job.spec
        do {
            let entry = try registry.resolve(s.model ?? "")
            let m = try cache.get(entry)
            job.preview = m.preview
            job.begin(model: entry.name)
            let bundle = m.bundle
            let layers = bundle.textEncoder?.layers.count ?? 0
            guard s.clipSkip - 1 <= max(0, layers - 1) else {
                throw APIError.unprocessable("CLIP_stop_at_last_layers", "clip skip \(s.clipSkip) is outside 1...\(layers) for \(entry.name)")
            }
            if s.mask != nil, ![4, 9].contains(bundle.unet.config.inChannels) {
                throw APIError.unprocessable("mask", "model \(entry.name) cannot inpaint (UNet with \(bundle.unet.config.inChannels) input channels)")
            }
            if s.mask == nil, bundle.unet.config.inChannels != bundle.latentChannels {
                throw APIError.unprocessable("sd_model_checkpoint", "model \(entry.name) is an inpainting model: send a mask to /sdapi/v1/img2img")
            }
            // <lora:NAME:WEIGHT>: merged for this job, unmerged after it (exact), so the cached model stays the base.
            let (promptText, tags) = try LoRAPrompt.extract(s.prompt)
            if Self.applyLCMDefaults(&s, timeCondProjDim: bundle.unet.config.timeCondProjDim, loraNames: tags.map(\.name)) {
                if s.mode == .img2img { try checked("denoising_strength") { try Validation.checkImg2ImgSteps(steps: s.steps, strength: s.denoisingStrength) } }
                job.resolve(s)
            }
            let applied = try mergeLoRAs(tags, into: bundle)
            defer { if applied != nil { bundle.unmergeLoRAs() } }
            let pipe = try StableDiffusionPipeline(bundle: bundle)
            let web = WebUIProcessing(pipe: pipe)
            let p = PromptOptions(prompt: promptText, negativePrompt: s.negativePrompt, guidanceScale: s.cfgScale, width: s.width,
                                  height: s.height, emphasis: s.emphasis, clipSkip: max(s.clipSkip - 1, 0))
            let o = SamplingOptions(sampler: s.factorySampler, steps: s.steps, eta: s.eta, batchSize: 1)
            let prep = s.mode == .img2img ? try WebUIProcessing.prepare(s) : nil
            let latentShape = [bundle.latentChannels, s.height / bundle.vaeScaleFactor, s.width / bundle.vaeScaleFactor]
            for (i, seed) in s.seeds.enumerated() {
                if job.isCancelled || job.wasInterrupted { break }
                let firstSteps = s.mode == .img2img ? min(Int(Double(s.steps) * s.denoisingStrength), s.steps) : s.steps
                let hiresSteps = s.hires.map { Int(Double($0.steps > 0 ? $0.steps : s.steps) * s.denoisingStrength) } ?? 0
                job.beginImage(i, steps: firstSteps + hiresSteps)
                let gen = Self.generator(s, seed: seed)
                let variation = Self.variation(s, index: i)
                var image: RGBImage?
                do {
                    image = try DenoisingObserver.with({ job.observe($0, $1) }) { () throws -> RGBImage? in
                        switch s.mode {
                        case .txt2img:
                            let g: RandomSource = variation.map { VariationRandomSource(base: gen, sub: $0.0, strength: Float($0.1), shape: latentShape) } ?? gen
                            guard s.hires != nil else { return try pipe.textToImage(p, o, generator: g, progress: job.stepDone).images.first }
                            var firstTotal = firstSteps
                            let first = try pipe.textToImage(p, o, generator: g) { step, total in
                                firstTotal = total
                                return job.stepDone(step, total + hiresSteps)
                            }
                            return try web.hiresPass(s, firstPass: first, p, seed: seed) { step, total in job.stepDone(firstTotal + step, firstTotal + total) }
                        case .img2img:
                            return try web.img2img(s, prep!, p, seed: seed, generator: gen, variation: variation, progress: job.stepDone)
                        }
                    }
                } catch let e as PipelineError where e == .cancelled {
                    if job.isCancelled { break }
                    // Interrupt / skip: the web UI decodes what the sampler reached (and lays its overlay on it).
                    if let (lat, shape) = job.latestLatents, let img = try decodeLatents(lat, shape: shape, firstStage: bundle.firstStage).images.first {
                        image = prep.map { web.overlay(img, $0) } ?? img
                    }
                    job.clearSkip()
                }
                guard let image else { continue }
                var params = Self.parameters(s, seed: seed, model: entry.name, index: i, width: s.hires != nil ? s.width : image.width,
                                             height: s.hires != nil ? s.height : image.height)
                if let h = applied?.webUIHashes { params.extra.append(.init("Lora hashes", h)) }
                let png = try PNGCodec.encode(image, text: [params.pngTextChunk])
                if s.saveImages, let dir = outputDir { try save(png, in: dir, seed: seed) }
                job.add(GeneratedImage(png: png, seed: seed, infotext: params.text))
            }
            job.finish(job.isCancelled ? .cancelled : .succeeded)
        } catch let e as APIError {
            job.finish(.failed, error: e)
        } catch let e as PipelineError {
            job.finish(.failed, error: APIError.unprocessable("request", sanitize(e.description)))
        } catch let e as LoRAError {
            job.finish(.failed, error: APIError.unprocessable("prompt", sanitize(e.description)))
        } catch {
            job.finish(.failed, error: APIError(.internalServerError, "generation failed", sanitize("\(error)")))
        }
    }

    /// The LoRA files of the prompt's tags, found in --lora-dir by plain name only (no path separators or "..", so a
    /// request cannot reach outside the folder), merged into `bundle`.
    func mergeLoRAs(_ tags: [LoRATag], into bundle: ModelBundle) throws -> AppliedLoRAs? {
        guard !tags.isEmpty else { return nil }
        guard let dir = loraDir else {
            throw APIError.unprocessable("prompt", "the prompt has <lora:\(tags[0].name):...> but the server was started without --lora-dir")
        }
        let files = try tags.map { t -> (file: LoRAFile, weight: Float, unetWeight: Float?) in
            guard !t.name.contains("/"), !t.name.contains("\\"), !t.name.hasPrefix(".") else {
                throw APIError.unprocessable("prompt", "LoRA name '\(t.name)' must be a plain name as /sdapi/v1/loras lists it")
            }
            return (try LoRAFile(url: LoRAPrompt.resolve(t.name, in: dir)), t.weight, t.unetWeight)
        }
        return try bundle.mergeLoRAs(withUNetWeights: files)
    }

    /// The LoRA files of --lora-dir (A1111's /sdapi/v1/loras entries; paths relative to the folder).
    public func listLoRAs() -> [(name: String, path: String)] {
        guard let dir = loraDir, let en = FileManager.default.enumerator(at: dir, includingPropertiesForKeys: nil) else { return [] }
        var out: [(name: String, path: String)] = []
        let base = dir.standardizedFileURL.path
        for case let u as URL in en where LoRAPrompt.fileExtensions.contains(u.pathExtension.lowercased()) {
            let full = u.standardizedFileURL.path
            let rel = full.hasPrefix(base + "/") ? String(full.dropFirst(base.count + 1)) : u.lastPathComponent
            out.append((u.deletingPathExtension().lastPathComponent, rel))
        }
        return out.sorted { $0.path < $1.path }
    }

    /// The CLI's defaults for latent consistency models (GenerationOptions.lcmDefaults): a UNet with time_cond_proj_dim
    /// or a LoRA whose name contains "lcm" gets sampler LCM, 4 steps and cfg 8.5 (LCM UNet, guidance through its w
    /// embedding) or 1 (LCM-LoRA) unless the request set them. Returns whether the model is an LCM.
    static func applyLCMDefaults(_ s: inout GenerationSpec, timeCondProjDim: Int?, loraNames: [String]) -> Bool {
        let lcmLoRA = loraNames.contains { $0.lowercased().contains("lcm") }
        guard timeCondProjDim != nil || lcmLoRA else { return false }
        if !s.samplerGiven {
            s.samplerName = "LCM"
            s.factorySampler = "lcm"
        }
        if !s.stepsGiven { s.steps = 4 }
        if !s.cfgGiven { s.cfgScale = timeCondProjDim != nil ? 8.5 : 1 }
        return true
    }

    /// A1111's noise source for a seed: "CPU" torch.Generator or "NV" (torch's CUDA Philox).
    static func generator(_ s: GenerationSpec, seed: UInt64) -> RandomSource {
        s.randnSource == "NV" ? CUDAGenerator(seed: seed) : TorchGenerator(seed: seed, normalKernel: .avx2)
    }

    /// Image `index`'s variation-seed generator and strength (subseed + index), nil without variation.
    static func variation(_ s: GenerationSpec, index: Int) -> (RandomSource, Double)? {
        guard s.subseedStrength > 0 else { return nil }
        return (generator(s, seed: s.subseed &+ UInt64(index)), s.subseedStrength)
    }

    func save(_ png: [UInt8], in dir: URL, seed: UInt64) throws {
        let name = "\(Int(Date().timeIntervalSince1970 * 1000))-\(seed)-\(UUID().uuidString.prefix(8)).png"
        try Data(png).write(to: dir.appendingPathComponent(name), options: [.atomic, .withoutOverwriting])
    }

    /// Error text without the server's paths (models folder, model files, home).
    func sanitize(_ s: String) -> String {
        var out = s
        var paths = registry.entries.map(\.url.path)
        if let d = registry.modelsDir { paths.append(d.path) }
        if let d = loraDir { paths.append(d.path) }
        for p in paths.sorted(by: { $0.count > $1.count }) { out = out.replacingOccurrences(of: p, with: "<model>") }
        out = out.replacingOccurrences(of: NSHomeDirectory(), with: "~")
        return out
    }
}
