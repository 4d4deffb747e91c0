// AUTOMATIC1111's /sdapi/v1 routes (modules/api/api.py Api.__init__ add_api_route list) as an adapter over the job
// queue: txt2img/img2img queue a job and answer when it ends; progress, interrupt and skip act on the running job
// (the web UI's one global state), options/samplers/schedulers/sd-models/refresh-checkpoints/png-info/memory as
// its response models (modules/api/models.py) shape them.
import Foundation
import Hummingbird
import Imaging

extension LDMServer {
    func addA1111Routes(_ router: Router<ServerContext>) {
        route(router, .post, "/sdapi/v1/txt2img", "Text to image (A1111 StableDiffusionProcessingTxt2Img fields)", tag: "a1111") { req, _ in
            try await self.generate(req, img2img: false)
        }
        route(router, .post, "/sdapi/v1/img2img", "Image to image and inpainting (init_images, mask, denoising_strength)", tag: "a1111") { req, _ in
            try await self.generate(req, img2img: true)
        }
        route(router, .get, "/sdapi/v1/progress", "Progress of the running job with a live preview", tag: "a1111") { req, _ in
            let skipImage = req.uri.queryParameters.get("skip_current_image").map { $0 == "true" || $0 == "1" } ?? false
            return Self.json(self.progressJSON(self.queue.latest, includeImage: !skipImage, global: true))
        }
        route(router, .post, "/sdapi/v1/interrupt", "Stop the running job; its images so far are returned", tag: "a1111") { _, _ in
            self.queue.current?.interrupt()
            return Self.json([:])
        }
        route(router, .post, "/sdapi/v1/skip", "Skip the running image and go on with the next", tag: "a1111") { _, _ in
            self.queue.current?.skip()
            return Self.json([:])
        }
        route(router, .get, "/sdapi/v1/options", "Server options", tag: "a1111") { _, _ in Self.json(self.options.json) }
        route(router, .post, "/sdapi/v1/options", "Change server options", tag: "a1111") { req, _ in
            var req = req
            try self.options.update(try await Self.body(&req, limit: 1 << 20))
            return Self.json(.null)
        }
        route(router, .get, "/sdapi/v1/samplers", "Available samplers", tag: "a1111") { _, _ in
            Self.json(.array(WebUISamplers.all.map { ["name": .string($0.name), "aliases": .array($0.aliases.map { .string($0) }), "options": [:]] }))
        }
        route(router, .get, "/sdapi/v1/schedulers", "Available schedulers", tag: "a1111") { _, _ in
            Self.json(.array(WebUISamplers.schedulers.map {
                ["name": .string($0.name), "label": .string($0.label), "aliases": .null, "default_rho": $0.name == "karras" ? 7.0 : -1.0,
                 "need_inner_model": false]
            }))
        }
        route(router, .get, "/sdapi/v1/loras", "LoRA files of --lora-dir, for <lora:NAME:WEIGHT> in prompts", tag: "a1111") { _, _ in
            Self.json(.array(self.engine.listLoRAs().map { ["name": .string($0.name), "alias": .string($0.name), "path": .string($0.path), "metadata": [:]] }))
        }
        route(router, .get, "/sdapi/v1/sd-models", "Models (--model and --models-dir)", tag: "a1111") { _, _ in
            Self.json(.array(self.registry.entries.map {
                ["title": .string($0.title), "model_name": .string($0.name), "hash": .null, "sha256": .null,
                 "filename": .string($0.filename), "config": .null]
            }))
        }
        route(router, .post, "/sdapi/v1/refresh-checkpoints", "Rescan --models-dir", tag: "a1111") { _, _ in
            self.registry.refresh()
            return Self.json(.null)
        }
        route(router, .post, "/sdapi/v1/png-info", "Generation parameters stored in a PNG", tag: "a1111") { req, _ in
            var req = req
            let f = try Fields(try await Self.body(&req, limit: self.config.maxBodyBytes))
            guard let b64 = try f.optionalString("image"), !b64.isEmpty else {
                throw APIError.unprocessable("image", "image (a base64 PNG) is required")
            }
            let img = try decodeImage(b64, field: "image")
            let text = img.text("parameters") ?? ""
            var items: [String: JSON] = [:]
            for c in img.textChunks where c.keyword != "parameters" { items[c.keyword] = .string(c.text) }
            return Self.json(["info": .string(text), "items": .object(items), "parameters": .object(Self.parametersJSON(text))])
        }
        route(router, .get, "/sdapi/v1/memory", "Memory of the machine and this process", tag: "a1111") { _, _ in
            Self.json(Self.memoryJSON())
        }
    }

    /// txt2img / img2img: queue, wait, answer with A1111's TextToImageResponse / ImageToImageResponse.
    func generate(_ request: Request, img2img: Bool) async throws -> Response {
        var req = request
        let body = try await Self.body(&req, limit: config.maxBodyBytes)
        let spec = try GenerationSpec.parse(body, img2img: img2img, options: options.value)
        _ = try registry.resolve(spec.model ?? "")
        if spec.saveImages, config.outputDir == nil {
            throw APIError.unprocessable("save_images", "save_images needs the server started with --output-dir")
        }
        let job = try queue.submit(spec)
        try await wait(for: job, req)
        if let e = job.error { throw e }
        if job.status == .cancelled, job.images.isEmpty {
            throw APIError(.conflict, "cancelled", "job \(job.id) was cancelled")
        }
        return Self.json(resultJSON(job))
    }

    func resultJSON(_ job: Job) -> JSON {
        let s = job.spec
        let images = s.sendImages ? job.images.map { JSON.string(Data($0.png).base64EncodedString()) } : []
        return ["images": .array(images), "parameters": .object(s.echo), "info": .string(String(decoding: infoJSON(job).serialized(), as: UTF8.self))]
    }

    /// modules/processing.py Processed.js().
    func infoJSON(_ job: Job) -> JSON {
        let s = job.spec
        let seeds = s.seeds.map { JSON.int(Int(truncatingIfNeeded: $0)) }
        let fmt = DateFormatter()
        fmt.dateFormat = "yyyyMMddHHmmss"
        fmt.timeZone = TimeZone(identifier: "UTC")
        return [
            "prompt": .string(s.prompt), "all_prompts": .array(Array(repeating: .string(s.prompt), count: s.imageCount)),
            "negative_prompt": .string(s.negativePrompt),
            "all_negative_prompts": .array(Array(repeating: .string(s.negativePrompt), count: s.imageCount)),
            "seed": .int(Int(truncatingIfNeeded: s.seed)), "all_seeds": .array(seeds),
            "subseed": .int(Int(truncatingIfNeeded: s.subseed)),
            "all_subseeds": .array((0..<s.imageCount).map { .int(Int(truncatingIfNeeded: s.subseed &+ UInt64($0))) }),
            "subseed_strength": .double(s.subseedStrength), "width": .int(s.width), "height": .int(s.height),
            "sampler_name": .string(s.samplerName), "cfg_scale": .double(s.cfgScale), "steps": .int(s.steps),
            "batch_size": .int(s.batchSize), "restore_faces": false, "face_restoration_model": .null,
            "sd_model_name": .string(job.modelName), "sd_model_hash": .null, "sd_vae_name": .null, "sd_vae_hash": .null,
            "seed_resize_from_w": -1, "seed_resize_from_h": -1,
            "denoising_strength": s.mode == .img2img || s.hires != nil ? .double(s.denoisingStrength) : .null,
            "extra_generation_params": [:], "index_of_first_image": 0,
            "infotexts": .array(job.images.map { .string($0.infotext) }), "styles": [],
            "job_timestamp": .string(fmt.string(from: job.started ?? job.created)), "clip_skip": .int(s.clipSkip),
            "is_using_inpainting_conditioning": .bool(s.mask != nil), "version": "ldm",
        ]
    }

    /// A1111's ProgressResponse for a job (or the idle state), plus job ids for the per-job form.
    func progressJSON(_ job: Job?, includeImage: Bool, global: Bool) -> JSON {
        guard let job else {
            return ["progress": 0.0, "eta_relative": 0.0, "current_image": .null, "textinfo": .null,
                    "state": ["skipped": false, "interrupted": false, "stopping_generation": false, "job": "", "job_count": 0,
                              "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0]]
        }
        let p = job.progress
        let running = p.status == .running
        let preview = includeImage && running ? job.previewPNG().map { JSON.string(Data($0).base64EncodedString()) } ?? .null : .null
        var o: [String: JSON] = [
            "progress": .double(global && !running ? 0 : p.fraction), "eta_relative": .double(running ? p.eta : 0),
            "current_image": preview,
            "textinfo": running ? .string("image \(p.imageIndex + 1)/\(p.imageCount), step \(p.step)/\(p.steps)") : .null,
            "state": ["skipped": .bool(p.skipped), "interrupted": .bool(p.interrupted), "stopping_generation": false,
                      "job": .string(running ? "job(\(job.id))" : ""), "job_count": .int(running ? p.imageCount : 0),
                      "job_timestamp": .string(String(Int(job.created.timeIntervalSince1970))), "job_no": .int(p.imageIndex),
                      "sampling_step": .int(p.step), "sampling_steps": .int(p.steps)],
        ]
        if !global {
            o["id"] = .string(job.id)
            o["status"] = .string(p.status.rawValue)
            o["progress"] = .double(p.fraction)
            o["images_done"] = .int(job.images.count)
            o["model"] = .string(job.modelKey)
            if let pos = queue.queued.firstIndex(where: { $0 === job }) { o["queue_position"] = .int(pos) }
            if let e = job.error { o["error"] = ["error": .string(e.error), "detail": .string(e.detail)] }
        }
        return .object(o)
    }

    /// modules/infotext_utils.py parse_generation_parameters, as a flat dictionary.
    static func parametersJSON(_ text: String) -> [String: JSON] {
        guard !text.isEmpty else { return [:] }
        let g = GenerationParameters(parsing: text)
        var o: [String: JSON] = ["Prompt": .string(g.prompt), "Negative prompt": .string(g.negativePrompt)]
        if let v = g.steps { o["Steps"] = .string(String(v)) }
        if let v = g.sampler { o["Sampler"] = .string(v) }
        if let v = g.cfgScale { o["CFG scale"] = .string(v.rounded() == v ? String(Int(v)) : String(v)) }
        if let v = g.seed { o["Seed"] = .string(String(v)) }
        if let w = g.width, let h = g.height {
            o["Size-1"] = .string(String(w))
            o["Size-2"] = .string(String(h))
        }
        if let v = g.model { o["Model"] = .string(v) }
        if let v = g.modelHash { o["Model hash"] = .string(v) }
        for f in g.extra { o[f.key] = .string(f.value) }
        return o
    }

    /// MemoryResponse: ram from /proc/meminfo and this process's resident set; no CUDA here.
    static func memoryJSON() -> JSON {
        var info: [String: Int] = [:]
        if let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8) {
            for line in text.split(separator: "\n") {
                let parts = line.split(separator: " ", omittingEmptySubsequences: true)
                if parts.count >= 2, let kb = Int(parts[1]) { info[String(parts[0].dropLast())] = kb * 1024 }
            }
        }
        let total = info["MemTotal"] ?? 0, free = info["MemAvailable"] ?? 0
        return ["ram": ["free": .int(free), "used": .int(total - free), "total": .int(total), "process_rss": .int(residentBytes())],
                "cuda": ["error": "no CUDA device: this server runs on the CPU"]]
    }

    /// This process's resident set size (/proc/self/statm).
    static func residentBytes() -> Int {
        guard let s = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let parts = s.split(separator: " ")
        guard parts.count > 1, let pages = Int(parts[1]) else { return 0 }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }
}
