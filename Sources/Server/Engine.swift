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
        self.registry = registry; self.cache = cache; self.outputDir = outputDir; self.loraDir = loraDir
    }

    /// The infotext fields `ldm txt2img` writes (GenerationOptions.parameters + PromptArguments.annotate + write).
    static func parameters(_ s: GenerationSpec, seed: UInt64, model: String, index: Int, width: Int, height: Int) -> GenerationParameters {
        var g = GenerationParameters(steps: s.steps, sampler: s.samplerName, seed: Int(truncatingIfNeeded: seed), model: model,
                                     extra: (s.eta != 0 ? [.init("Eta", "\(s.eta)")] : []) + [.init("RNG", s.randnSource)])
        if s.factorySampler == "dpm++2m-karras" { g.extra.insert(.init("Schedule type", "Karras"), at: 0) }
        g.prompt = s.prompt; g.negativePrompt = s.negativePrompt; g.cfgScale = s.cfgScale
        if s.clipSkip > 1 { g.extra.append(.init("Clip skip", "\(s.clipSkip)")) }
        let hasSyntax = [s.prompt, s.negativePrompt].contains { $0.contains("(") || $0.contains("[") }
        if s.emphasis != .original, hasSyntax { g.extra.append(.init("Emphasis", s.emphasis.webUIName ?? "None")) }
        if s.mode == .img2img { g.extra.append(.init("Denoising strength", "\(s.denoisingStrength)")) }
        g.width = width; g.height = height
        if s.imageCount > 1 { g.extra += [.init("Batch size", "\(s.imageCount)"), .init("Batch pos", "\(index)")] }
        return g
    }

    /// Worker-thread entry: runs every image of the job, then finishes it.
    public func run(_ job: Job) {
        let s = job.spec
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
            let applied = try mergeLoRAs(tags, into: bundle)
            defer { if applied != nil { bundle.unmergeLoRAs() } }
            let pipe = try StableDiffusionPipeline(bundle: bundle)
            let p = PromptOptions(prompt: promptText, negativePrompt: s.negativePrompt, guidanceScale: s.cfgScale, width: s.width,
                                  height: s.height, emphasis: s.emphasis, clipSkip: max(s.clipSkip - 1, 0))
            let o = SamplingOptions(sampler: s.factorySampler, steps: s.steps, eta: s.eta, batchSize: 1)
            let (initImage, mask) = prepareInpainting(s)
            for (i, seed) in s.seeds.enumerated() {
                if job.isCancelled || job.wasInterrupted { break }
                let steps = s.mode == .img2img ? min(Int(Double(s.steps) * s.denoisingStrength), s.steps) : s.steps
                job.beginImage(i, steps: steps)
                let gen: RandomSource = s.randnSource == "NV" ? CUDAGenerator(seed: seed) : TorchGenerator(seed: seed, normalKernel: .avx2)
                var result: GenerationResult?
                do {
                    result = try DenoisingObserver.with({ job.observe($0, $1) }) {
                        switch (s.mode, mask) {
                        case (.txt2img, _): return try pipe.textToImage(p, o, generator: gen, progress: job.stepDone)
                        case (.img2img, nil):
                            return try pipe.imageToImage(p, o, image: initImage!, strength: s.denoisingStrength, generator: gen, progress: job.stepDone)
                        case (.img2img, let mk?):
                            return try pipe.inpaint(p, o, image: initImage!, mask: mk, strength: s.denoisingStrength, generator: gen, progress: job.stepDone)
                        }
                    }
                } catch let e as PipelineError where e == .cancelled {
                    if job.isCancelled { break }
                    // Interrupt / skip: the web UI decodes what the sampler reached.
                    if let (lat, shape) = job.latestLatents { result = try decodeLatents(lat, shape: shape, firstStage: bundle.firstStage) }
                    job.clearSkip()
                }
                guard let r = result, let image = r.images.first else { continue }
                var params = Self.parameters(s, seed: seed, model: entry.name, index: i, width: image.width, height: image.height)
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
        let files = try tags.map { t -> (file: LoRAFile, weight: Float) in
            guard !t.name.contains("/"), !t.name.contains("\\"), !t.name.hasPrefix(".") else {
                throw APIError.unprocessable("prompt", "LoRA name '\(t.name)' must be a plain name as /sdapi/v1/loras lists it")
            }
            return (try LoRAFile(url: LoRAPrompt.resolve(t.name, in: dir)), t.weight)
        }
        return try bundle.mergeLoRAs(files)
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

    /// A1111 inpainting_mask_invert and inpainting_fill 0 ("fill": the masked area painted with the mean colour of the
    /// kept area before encoding; the web UI blurs the surroundings in, a mean is the plain form of that).
    func prepareInpainting(_ s: GenerationSpec) -> (RGBImage?, GrayImage?) {
        guard var image = s.initImage else { return (nil, nil) }
        guard var mask = s.mask else { return (image, nil) }
        if s.inpaintingMaskInvert { mask.pixels = mask.pixels.map { 255 - $0 } }
        if s.inpaintingFill == 0 {
            var sum = [Double](repeating: 0, count: 3), n = 0.0
            for i in 0..<(mask.width * mask.height) where mask.pixels[i] < 128 {
                for c in 0..<3 { sum[c] += Double(image.pixels[3 * i + c]) }; n += 1
            }
            if n > 0 {
                let mean = sum.map { UInt8(($0 / n).rounded()) }
                for i in 0..<(mask.width * mask.height) where mask.pixels[i] >= 128 {
                    for c in 0..<3 { image.pixels[3 * i + c] = mean[c] }
                }
            }
        }
        return (image, mask)
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
