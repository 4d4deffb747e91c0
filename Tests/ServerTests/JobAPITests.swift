// The job API and the queue over real HTTP: per-job progress with a live preview, the global A1111 progress,
// interrupt (partial image returned), skip, DELETE freeing a queued slot, 429 + Retry-After when full, the
// server-sent event stream, the OpenAI images shape, and /openapi.json checked route by route.
import Foundation
import Imaging
import Server
import XCTest

final class JobAPITests: XCTestCase {
    let slow: [String: Any] = ["prompt": "a blue triangle", "seed": 11, "steps": 400, "sampler_name": "DDIM", "width": 32, "height": 32]

    func submit(_ srv: RunningServer, _ body: [String: Any]) throws -> String {
        let r = srv.request("POST", "/ldm/v1/jobs", json: body)
        XCTAssertEqual(r.status, 202, r.text)
        return try XCTUnwrap(r.object["id"] as? String)
    }

    func testProgressPreviewInterruptAndCancel() throws {
        let srv = try startServer()
        let id = try submit(srv, slow)
        var snapshot: [String: Any] = [:]
        XCTAssertTrue(srv.waitUntil {
            snapshot = srv.request("GET", "/ldm/v1/jobs/\(id)").object
            return (((snapshot["state"] as? [String: Any])?["sampling_step"] as? Int) ?? 0) >= 2 && snapshot["current_image"] is String
        }, "\(snapshot)")
        XCTAssertEqual(snapshot["status"] as? String, "running")
        let preview = try ImageIO.decode([UInt8](try XCTUnwrap(Data(base64Encoded: snapshot["current_image"] as! String))))
        XCTAssertEqual(preview.image.width, 32)
        // A queued second job, then the A1111 global progress of the running one.
        let queued = try submit(srv, slow)
        XCTAssertEqual(srv.request("GET", "/ldm/v1/jobs/\(queued)").object["queue_position"] as? Int, 0)
        let progress = srv.request("GET", "/sdapi/v1/progress").object
        XCTAssertGreaterThan(progress["progress"] as? Double ?? 0, 0)
        XCTAssertGreaterThan(progress["eta_relative"] as? Double ?? 0, 0)
        XCTAssertEqual((progress["state"] as? [String: Any])?["sampling_steps"] as? Int, 400)
        XCTAssertNotNil(progress["current_image"] as? String)
        XCTAssertNil(srv.request("GET", "/sdapi/v1/progress?skip_current_image=true").object["current_image"] as? String)

        // DELETE the queued job: it is cancelled at once and never runs.
        let del = srv.request("DELETE", "/ldm/v1/jobs/\(queued)")
        XCTAssertEqual(del.status, 200, del.text)
        XCTAssertEqual(srv.request("GET", "/ldm/v1/jobs/\(queued)").object["status"] as? String, "cancelled")
        XCTAssertEqual(srv.request("DELETE", "/ldm/v1/jobs/no-such-job").status, 404)

        // Interrupt: the running job ends early with the image decoded from where it stopped.
        XCTAssertEqual(srv.request("POST", "/sdapi/v1/interrupt").status, 200)
        var done: [String: Any] = [:]
        XCTAssertTrue(srv.waitUntil { done = srv.request("GET", "/ldm/v1/jobs/\(id)?preview=false").object; return done["status"] as? String == "succeeded" })
        XCTAssertEqual((done["images"] as? [String])?.count, 1)
        XCTAssertTrue(((done["state"] as? [String: Any])?["interrupted"] as? Bool) ?? false)
        XCTAssertLessThan(((done["state"] as? [String: Any])?["sampling_step"] as? Int) ?? 400, 400)

        // A running job cancelled by DELETE stops with no image.
        let third = try submit(srv, slow)
        XCTAssertTrue(srv.waitUntil { srv.request("GET", "/ldm/v1/jobs/\(third)?preview=false").object["status"] as? String == "running" })
        XCTAssertEqual(srv.request("DELETE", "/ldm/v1/jobs/\(third)").status, 200)
        XCTAssertTrue(srv.waitUntil { srv.request("GET", "/ldm/v1/jobs/\(third)?preview=false").object["status"] as? String == "cancelled" })
    }

    func testSkipMovesToTheNextImageAndEventsStream() throws {
        let srv = try startServer()
        var body = slow
        body["batch_size"] = 2; body["steps"] = 300
        let id = try submit(srv, body)
        XCTAssertTrue(srv.waitUntil { ((srv.request("GET", "/ldm/v1/jobs/\(id)?preview=false").object["state"] as? [String: Any])?["sampling_step"] as? Int ?? 0) >= 1 })
        XCTAssertEqual(srv.request("POST", "/sdapi/v1/skip").status, 200)
        XCTAssertTrue(srv.waitUntil { ((srv.request("GET", "/ldm/v1/jobs/\(id)?preview=false").object["state"] as? [String: Any])?["job_no"] as? Int ?? 0) == 1 })
        XCTAssertEqual(srv.request("POST", "/sdapi/v1/interrupt").status, 200)
        // The event stream of a short job: started, one progress event per step, done.
        let short = try submit(srv, ["prompt": "a circle", "seed": 2, "steps": 3, "width": 32, "height": 32])
        let events = srv.request("GET", "/ldm/v1/jobs/\(short)/events")
        XCTAssertEqual(events.status, 200)
        XCTAssertEqual(events.headers["content-type"], "text/event-stream")
        let text = events.text
        XCTAssertTrue(text.contains("event: done"), text)
        let finished = srv.request("GET", "/ldm/v1/jobs/\(short)").object
        XCTAssertEqual(finished["status"] as? String, "succeeded")
        XCTAssertEqual((finished["images"] as? [String])?.count, 1)
        let first = srv.request("GET", "/ldm/v1/jobs/\(id)?preview=false").object
        XCTAssertEqual((first["images"] as? [String])?.count, 2, "skipped image 0 and interrupted image 1 are both decoded")
    }

    func testFullQueueAnswers429WithRetryAfter() throws {
        let srv = try startServer { $0.queueSize = 1 }
        let running = try submit(srv, slow)
        XCTAssertTrue(srv.waitUntil { srv.request("GET", "/ldm/v1/jobs/\(running)?preview=false").object["status"] as? String == "running" })
        let waiting = try submit(srv, slow)
        let full = srv.request("POST", "/ldm/v1/jobs", json: slow)
        XCTAssertEqual(full.status, 429, full.text)
        XCTAssertNotNil(Int(full.headers["retry-after"] ?? ""), "\(full.headers)")
        XCTAssertEqual(srv.request("POST", "/sdapi/v1/txt2img", json: slow).status, 429)
        // Cancelling the waiting job frees its slot.
        XCTAssertEqual(srv.request("DELETE", "/ldm/v1/jobs/\(waiting)").status, 200)
        let again = try submit(srv, slow)
        for j in [running, again] { srv.request("DELETE", "/ldm/v1/jobs/\(j)") }
    }

    func testOpenAIImagesAndOpenAPIDocumentMatchTheRoutes() throws {
        let srv = try startServer()
        let r = srv.request("POST", "/v1/images/generations", json: ["prompt": "a red circle", "n": 2, "size": "32x32", "steps": 2, "seed": 4])
        XCTAssertEqual(r.status, 200, r.text)
        let data = try XCTUnwrap(r.object["data"] as? [[String: Any]])
        XCTAssertEqual(data.count, 2)
        let img = try ImageIO.decode([UInt8](try XCTUnwrap(Data(base64Encoded: data[0]["b64_json"] as? String ?? ""))))
        XCTAssertEqual(img.image.width, 32)
        XCTAssertNotNil(r.object["created"] as? Int)
        XCTAssertEqual(srv.request("POST", "/v1/images/generations", json: ["prompt": "x", "response_format": "url"]).status, 422)

        let doc = srv.request("GET", "/openapi.json").object
        try OpenAPICheck.validate(doc)
        let paths = try XCTUnwrap(doc["paths"] as? [String: [String: Any]])
        // Every route the router serves is documented and every documented operation is served.
        let served = Set(srv.server.routes.map { "\($0.method) \($0.path)" })
        let documented = Set(paths.flatMap { p, ops in ops.keys.map { "\($0.uppercased()) \(p)" } })
        XCTAssertEqual(served, documented)
        for entry in documented.sorted() {
            let parts = entry.split(separator: " ", maxSplits: 1).map(String.init)
            let path = parts[1].replacingOccurrences(of: "{id}", with: "unknown-id")
            if parts[0] == "POST" && (path.hasSuffix("txt2img") || path.hasSuffix("img2img") || path.hasSuffix("generations") || path.hasSuffix("/jobs")) {
                // Generation routes: a request with a bad field proves the route exists without running a job.
                let res = srv.request("POST", path, json: ["steps": 0, "prompt": "x"])
                XCTAssertTrue([422].contains(res.status), "\(entry): \(res.status) \(res.text)")
                continue
            }
            let res = srv.request(parts[0], path, json: parts[0] == "POST" ? [String: Any]() : nil)
            XCTAssertFalse([405, 500].contains(res.status), "\(entry): \(res.status)")
            if !path.contains("unknown-id") { XCTAssertNotEqual(res.status, 404, entry) }
            else { XCTAssertEqual(res.status, 404, entry); XCTAssertEqual((res.object["detail"] as? String), "no job unknown-id") }
        }
    }
}

/// Structural validation of an OpenAPI 3.1 document (the OpenAPI Specification's required fields and types): openapi
/// version, info.title/version, paths beginning with "/", operations with responses whose keys are status codes or
/// ranges, path parameters declared for every template variable, local $refs that resolve.
enum OpenAPICheck {
    struct Failure: Error, CustomStringConvertible { let description: String }

    static func validate(_ doc: [String: Any]) throws {
        func fail(_ s: String) -> Failure { Failure(description: s) }
        guard let v = doc["openapi"] as? String, v.hasPrefix("3.") else { throw fail("openapi must be a 3.x version string") }
        guard let info = doc["info"] as? [String: Any], info["title"] is String, info["version"] is String else { throw fail("info.title/version") }
        guard let paths = doc["paths"] as? [String: Any], !paths.isEmpty else { throw fail("paths") }
        let methods: Set = ["get", "put", "post", "delete", "options", "head", "patch", "trace"]
        var operationIds = Set<String>()
        for (path, item) in paths {
            guard path.hasPrefix("/") else { throw fail("path \(path) must start with /") }
            guard let ops = item as? [String: Any] else { throw fail("path item \(path)") }
            let vars = Set(path.split(separator: "{").dropFirst().compactMap { $0.split(separator: "}").first.map(String.init) })
            for (m, op) in ops {
                guard methods.contains(m), let op = op as? [String: Any] else { throw fail("\(path): bad operation \(m)") }
                guard let responses = op["responses"] as? [String: Any], !responses.isEmpty else { throw fail("\(m) \(path): responses") }
                for (code, r) in responses {
                    guard code == "default" || code.range(of: "^[1-5]([0-9][0-9]|XX)$", options: .regularExpression) != nil else { throw fail("\(m) \(path): response \(code)") }
                    guard let r = r as? [String: Any], r["description"] is String else { throw fail("\(m) \(path) \(code): description") }
                    if let content = r["content"] as? [String: Any] { try checkRefs(content, doc) }
                }
                if let id = op["operationId"] as? String { guard operationIds.insert(id).inserted else { throw fail("duplicate operationId \(id)") } }
                let params = (op["parameters"] as? [[String: Any]]) ?? []
                for p in params {
                    guard p["name"] is String, let loc = p["in"] as? String, ["query", "header", "path", "cookie"].contains(loc) else { throw fail("\(m) \(path): parameter") }
                    if loc == "path" { guard p["required"] as? Bool == true else { throw fail("\(m) \(path): path parameters are required") } }
                }
                let declared = Set(params.filter { $0["in"] as? String == "path" }.compactMap { $0["name"] as? String })
                guard declared == vars else { throw fail("\(m) \(path): path parameters \(declared) vs template \(vars)") }
            }
        }
    }

    static func checkRefs(_ node: Any, _ doc: [String: Any]) throws {
        if let o = node as? [String: Any] {
            if let ref = o["$ref"] as? String {
                guard ref.hasPrefix("#/") else { throw Failure(description: "non-local $ref \(ref)") }
                var cur: Any? = doc
                for part in ref.dropFirst(2).split(separator: "/") { cur = (cur as? [String: Any])?[String(part)] }
                guard cur != nil else { throw Failure(description: "unresolved $ref \(ref)") }
            }
            for v in o.values { try checkRefs(v, doc) }
        } else if let a = node as? [Any] { for v in a { try checkRefs(v, doc) } }
    }
}
