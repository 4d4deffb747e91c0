// Beyond AUTOMATIC1111: an asynchronous job API in which each client sees its own job's progress and preview
// (POST /ldm/v1/jobs -> id, GET /ldm/v1/jobs/{id}, DELETE cancels, GET /ldm/v1/jobs/{id}/events streams step progress
// as server-sent events, WHATWG HTML "Server-sent events"), and OpenAI's images API shape
// (POST /v1/images/generations: {prompt, n, size, response_format: "b64_json"} -> {created, data: [{b64_json}]}).
import Foundation
import Hummingbird
import NIOCore

extension LDMServer {
    func addJobRoutes(_ router: Router<ServerContext>) {
        route(router, .post, "/ldm/v1/jobs", "Queue a job (A1111 txt2img/img2img fields; mode txt2img or img2img); answers 202 with its id", tag: "jobs") { req, _ in
            var req = req
            let body = try await Self.body(&req, limit: self.config.maxBodyBytes)
            let mode = try Fields(body).string("mode", body["init_images"] != nil ? "img2img" : "txt2img")
            guard ["txt2img", "img2img"].contains(mode) else { throw APIError.unprocessable("mode", "mode must be txt2img or img2img, got \(mode)") }
            let spec = try GenerationSpec.parse(body, img2img: mode == "img2img", options: self.options.value)
            _ = try self.registry.resolve(spec.model ?? "")
            if spec.saveImages, self.config.outputDir == nil {
                throw APIError.unprocessable("save_images", "save_images needs the server started with --output-dir")
            }
            let job = try self.queue.submit(spec)
            return Self.json(["id": .string(job.id), "status": .string(job.status.rawValue)], status: .accepted,
                             headers: [.location: "/ldm/v1/jobs/\(job.id)"])
        }
        route(router, .get, "/ldm/v1/jobs/{id}", "A job's own progress, preview and (when done) result", tag: "jobs") { req, ctx in
            let job = try self.job(ctx)
            var o = self.progressJSON(job, includeImage: req.uri.queryParameters.get("preview") != "false", global: false).object ?? [:]
            if job.isFinished, job.error == nil { for (k, v) in self.resultJSON(job).object ?? [:] { o[k] = v } }
            return Self.json(.object(o))
        }
        route(router, .delete, "/ldm/v1/jobs/{id}", "Cancel a job (frees its queue slot)", tag: "jobs") { _, ctx in
            let id = try ctx.parameters.require("id")
            guard let job = self.queue.cancel(id) else { throw APIError.notFound("no job \(id)") }
            return Self.json(["id": .string(job.id), "status": .string(job.isFinished ? job.status.rawValue : "cancelling")])
        }
        route(router, .post, "/ldm/v1/jobs/{id}/interrupt", "Stop this job early; the image reached so far is kept", tag: "jobs") { _, ctx in
            let job = try self.job(ctx)
            job.interrupt()
            return Self.json(["id": .string(job.id), "status": .string(job.status.rawValue)])
        }
        route(router, .get, "/ldm/v1/jobs/{id}/events", "Server-sent events: started, progress (each step), done", tag: "jobs") { _, ctx in
            let job = try self.job(ctx)
            let stream = job.events().map { e -> ByteBuffer in
                ByteBuffer(string: "event: \(e.name)\ndata: \(String(decoding: e.data.serialized(), as: UTF8.self))\n\n")
            }
            return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"],
                            body: ResponseBody(asyncSequence: stream))
        }
        route(router, .post, "/v1/images/generations", "OpenAI images API: prompt, n, size, response_format b64_json", tag: "openai") { req, _ in
            var req = req
            let body = try await Self.body(&req, limit: 1 << 20)
            let f = try Fields(body)
            guard let prompt = try f.optionalString("prompt"), !prompt.isEmpty else { throw APIError.unprocessable("prompt", "prompt is required") }
            let n = try f.int("n", 1, in: 1...10)
            let size = try f.string("size", "512x512")
            let wh = size.split(separator: "x").compactMap { Int($0) }
            guard wh.count == 2 else { throw APIError.unprocessable("size", "size must be WIDTHxHEIGHT, got \(size)") }
            let format = try f.string("response_format", "b64_json")
            guard format == "b64_json" else { throw APIError.unprocessable("response_format", "only b64_json is served (no image URLs)") }
            var a: [String: JSON] = ["prompt": .string(prompt), "batch_size": .int(n), "width": .int(wh[0]), "height": .int(wh[1])]
            for k in ["negative_prompt", "steps", "seed", "sampler_name", "scheduler", "cfg_scale"] { if let v = f.values[k] { a[k] = v } }
            if let m = try f.optionalString("model") { a["override_settings"] = ["sd_model_checkpoint": .string(m)] }
            let spec = try GenerationSpec.parse(.object(a), img2img: false, options: self.options.value)
            _ = try self.registry.resolve(spec.model ?? "")
            let job = try self.queue.submit(spec)
            try await self.wait(for: job, req)
            if let e = job.error { throw e }
            return Self.json(["created": .int(Int(Date().timeIntervalSince1970)),
                              "data": .array(job.images.map { ["b64_json": .string(Data($0.png).base64EncodedString()), "revised_prompt": .string(prompt)] })])
        }
    }

    func job(_ ctx: ServerContext) throws -> Job {
        let id = try ctx.parameters.require("id")
        guard let job = queue.job(id) else { throw APIError.notFound("no job \(id)") }
        return job
    }

    /// The OpenAPI 3.1 document of every route this server registered.
    public func openAPIDocument() -> JSON {
        var paths: [String: JSON] = [:]
        let error: JSON = ["description": "Error", "content": ["application/json": ["schema": ["$ref": "#/components/schemas/Error"]]]]
        for r in routes {
            var op: [String: JSON] = [
                "summary": .string(r.summary), "tags": [.string(r.tag)],
                "operationId": .string(r.method.lowercased() + r.path.split(whereSeparator: { !$0.isLetter && !$0.isNumber }).map { $0.capitalized }.joined()),
                "responses": ["200": ["description": "OK"], "4XX": error],
            ]
            if r.path.contains("{id}") {
                op["parameters"] = [["name": "id", "in": "path", "required": true, "schema": ["type": "string"]]]
            }
            if r.method == "POST" {
                op["requestBody"] = ["required": .bool(!(r.path.hasSuffix("interrupt") || r.path.hasSuffix("skip") || r.path.hasSuffix("refresh-checkpoints"))),
                                     "content": ["application/json": ["schema": ["type": "object"]]]]
            }
            var item = paths[r.path]?.object ?? [:]
            item[r.method.lowercased()] = .object(op)
            paths[r.path] = .object(item)
        }
        return ["openapi": "3.1.0", "info": ["title": "ldm serve", "version": "1.0.0",
                                             "description": "AUTOMATIC1111-compatible API, job API and OpenAI images API of LatentDiffusion"],
                "paths": .object(paths),
                "components": ["schemas": ["Error": ["type": "object", "required": ["error", "detail"],
                                                     "properties": ["error": ["type": "string"], "detail": ["type": "string"]]]],
                               "securitySchemes": ["basic": ["type": "http", "scheme": "basic"]]]]
    }
}
