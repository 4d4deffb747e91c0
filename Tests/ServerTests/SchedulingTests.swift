// One worker per model (jobs of different models overlap up to --parallel-models, jobs of one model queue), server-sent
// events that arrive while the job runs (not all at its end), the CLI's LCM defaults in the server, and
// `ldm serve --precision` / `--parallel-models` on the command line.
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Imaging
import Server
import XCTest

final class SchedulingTests: XCTestCase {
    var ldm: URL { Bundle.main.bundleURL.appendingPathComponent("ldm") }

    func testJobsOfDifferentModelsOverlapAndJobsOfOneModelQueue() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ldm-models-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        for name in ["a", "b"] {
            try FileManager.default.createSymbolicLink(at: dir.appendingPathComponent(name), withDestinationURL: RunningServer.shapes)
        }
        let srv = try startServer { $0.modelsDir = dir; $0.maxLoadedModels = 2; $0.parallelModels = 2 }
        func submit(_ model: String, steps: Int) throws -> String {
            let r = srv.request("POST", "/ldm/v1/jobs", json: ["prompt": "a red circle", "seed": 1, "steps": steps, "width": 64, "height": 64,
                                                              "override_settings": ["sd_model_checkpoint": model]])
            XCTAssertEqual(r.status, 202, r.text)
            return try XCTUnwrap(r.object["id"] as? String)
        }
        func status(_ id: String) -> String { srv.request("GET", "/ldm/v1/jobs/\(id)?preview=false").object["status"] as? String ?? "?" }
        let a1 = try submit("a", steps: 60), a2 = try submit("a", steps: 2), b1 = try submit("b", steps: 60)
        var overlapped = false, queuedBehindSameModel = false
        let end = Date().addingTimeInterval(300)
        while Date() < end {
            // a2 is read before a1: a1 runs first, so "a2 running, then a1 still running" can only be a real overlap
            // (read the other way round, a1 may finish and a2 start between the two requests).
            let sa2 = status(a2), sa1 = status(a1), sb1 = status(b1)
            if sa1 == "running" && sb1 == "running" { overlapped = true }
            if sa1 == "running" && sa2 == "queued" { queuedBehindSameModel = true }
            XCTAssertFalse(sa1 == "running" && sa2 == "running", "two jobs of one model ran at once")
            if [sa1, sa2, sb1].allSatisfy({ ["succeeded", "failed", "cancelled"].contains($0) }) { break }
            Thread.sleep(forTimeInterval: 0.05)
        }
        XCTAssertTrue(overlapped, "jobs on models a and b never ran at the same time")
        XCTAssertTrue(queuedBehindSameModel, "the second job of model a did not wait for the first")
        for id in [a1, a2, b1] {
            let r = srv.request("GET", "/ldm/v1/jobs/\(id)?preview=false")
            XCTAssertEqual(r.object["status"] as? String, "succeeded", r.text)
            XCTAssertEqual((r.object["images"] as? [Any])?.count, 1)
        }
        XCTAssertEqual(srv.request("GET", "/ldm/v1/jobs/\(b1)?preview=false").object["model"] as? String, "b")
    }

    func testServerSentEventsArriveWhileTheJobRuns() throws {
        let srv = try startServer()
        let r = srv.request("POST", "/ldm/v1/jobs", json: ["prompt": "a blue square", "seed": 3, "steps": 40, "width": 64, "height": 64])
        XCTAssertEqual(r.status, 202, r.text)
        let id = try XCTUnwrap(r.object["id"] as? String)
        // A streaming reader: the arrival time of every event as its bytes come off the socket.
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        XCTAssertGreaterThanOrEqual(fd, 0)
        defer { close(fd) }
        var tv = timeval(tv_sec: 300, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET); addr.sin_port = in_port_t(UInt16(srv.port).bigEndian); addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let ok = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        XCTAssertEqual(ok, 0)
        let head = Array("GET /ldm/v1/jobs/\(id)/events HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)
        _ = head.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        var text = "", arrivals: [(String, Date)] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buf, buf.count, 0)
            if n <= 0 { break }
            text += String(decoding: buf[0..<n], as: UTF8.self)
            // Complete events ("event: NAME\ndata: ...\n\n") taken off the front of the buffer.
            while let start = text.range(of: "event: "), let endRange = text.range(of: "\n\n", range: start.upperBound..<text.endIndex) {
                let name = text[start.upperBound...].prefix { $0 != "\n" }
                arrivals.append((String(name), Date()))
                text = String(text[endRange.upperBound...])
            }
            if arrivals.last?.0 == "done" { break }
        }
        let job = try XCTUnwrap(srv.server.queue.job(id))
        let finished = try XCTUnwrap(job.finished), started = try XCTUnwrap(job.started)
        let progress = arrivals.filter { $0.0 == "progress" }.map(\.1)
        XCTAssertGreaterThanOrEqual(progress.count, 20, "\(arrivals.map(\.0))")
        XCTAssertEqual(arrivals.last?.0, "done")
        let runTime = finished.timeIntervalSince(started)
        XCTAssertGreaterThan(runTime, 0.2)
        // Events were read as the steps ran: the first progress event well before the job ended, most of them before it.
        XCTAssertLessThan(progress[0], finished.addingTimeInterval(-runTime / 2))
        let early = progress.filter { $0 < finished }.count
        XCTAssertGreaterThanOrEqual(early, progress.count - 2, "progress events were held back until the job's end")
        XCTAssertGreaterThan(progress[progress.count - 1].timeIntervalSince(progress[0]), runTime / 2, "progress events arrived in one burst")
    }

    func testLCMModelsGetTheCLIDefaults() throws {
        let lcm = RunningServer.repoRoot.appendingPathComponent("Tests/PipelinesTests/Fixtures/tiny-lcm")
        let srv = try startServer { $0.model = lcm }
        let r = srv.request("POST", "/sdapi/v1/txt2img", json: ["prompt": "a cat", "seed": 5, "width": 16, "height": 16])
        XCTAssertEqual(r.status, 200, r.text)
        let info = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data((r.object["info"] as? String ?? "").utf8)) as? [String: Any])
        XCTAssertEqual(info["sampler_name"] as? String, "LCM")
        XCTAssertEqual(info["steps"] as? Int, 4)
        XCTAssertEqual(info["cfg_scale"] as? Double, 8.5)
        let s = try XCTUnwrap((r.object["images"] as? [String])?.first)
        let img = try ImageIO.decode([UInt8](try XCTUnwrap(Data(base64Encoded: s))))
        XCTAssertTrue(img.text("parameters")?.contains("Steps: 4, Sampler: LCM, CFG scale: 8.5") ?? false, img.text("parameters") ?? "")
        // `ldm txt2img` with no --sampler/--steps/--cfg-scale picks the same for this model.
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("ldm-lcm-\(UUID().uuidString).png")
        defer { try? FileManager.default.removeItem(at: out) }
        let p = Process()
        p.executableURL = ldm
        p.arguments = ["txt2img", "--model", lcm.path, "--prompt", "a cat", "--seed", "5", "--width", "16", "--height", "16", "--output", out.path, "--quiet"]
        p.arguments! += ["--precision", "f32"] // the server's precision (the CLI default, auto, is bf16 on native-bf16 CPUs)
        try p.run(); p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)
        XCTAssertEqual(try ImageIO.load(path: out.path).image.pixels, img.image.pixels, "server LCM defaults differ from the CLI's")
        // Given values win.
        let r2 = srv.request("POST", "/sdapi/v1/txt2img", json: ["prompt": "a cat", "seed": 5, "width": 16, "height": 16, "steps": 2, "cfg_scale": 3])
        let info2 = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data((r2.object["info"] as? String ?? "").utf8)) as? [String: Any])
        XCTAssertEqual(info2["steps"] as? Int, 2); XCTAssertEqual(info2["cfg_scale"] as? Double, 3); XCTAssertEqual(info2["sampler_name"] as? String, "LCM")
    }

    func testServeCommandPrecisionAndParallelModelsFlags() throws {
        func run(_ args: [String], interruptAfterReady: Bool) throws -> (Int32, String, String?) {
            let p = Process(), out = Pipe(), err = Pipe()
            p.executableURL = ldm
            p.arguments = ["serve", "--model", RunningServer.shapes.path, "--port", "0"] + args
            p.standardOutput = out; p.standardError = err
            try p.run()
            var options: String?
            if interruptAfterReady {
                // The first line is "ldm serve: listening on http://127.0.0.1:PORT/".
                var line = Data()
                while !line.contains(UInt8(ascii: "\n")) { let d = out.fileHandleForReading.availableData; if d.isEmpty { break }; line += d }
                let url = String(decoding: line, as: UTF8.self)
                if let r = url.range(of: "127.0.0.1:"), let port = Int(url[r.upperBound...].prefix { $0.isNumber }) {
                    let res = HTTPClient.send(port: port, method: "GET", path: "/sdapi/v1/options", headers: ["Host": "127.0.0.1", "Connection": "close"],
                                              body: Data(), timeout: 30)
                    options = res.text
                }
                p.interrupt()
            }
            p.waitUntilExit()
            return (p.terminationStatus, String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self), options)
        }
        let (rc, _, options) = try run(["--precision", "bf16"], interruptAfterReady: true)
        XCTAssertEqual(rc, 0)
        XCTAssertTrue(options?.contains("\"ldm_precision\":\"bf16\"") ?? false, options ?? "no options")
        for bad in [["--precision", "fp8"], ["--parallel-models", "3"], ["--parallel-models", "0"]] {
            let (code, stderr, _) = try run(bad, interruptAfterReady: false)
            XCTAssertNotEqual(code, 0, "\(bad)")
            XCTAssertTrue(stderr.contains(bad[0]), "\(bad): \(stderr)")
        }
    }
}
