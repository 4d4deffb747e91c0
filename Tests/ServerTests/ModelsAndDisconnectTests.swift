// --models-dir (entries listed, per-request model choice, paths leading outside refused), the bounded LRU of loaded
// models, and a synchronous request whose client disconnects: its job is cancelled and its queue slot freed.
import Foundation
import Imaging
import Server
import XCTest
#if canImport(Glibc)
import Glibc
#endif

final class ModelsAndDisconnectTests: XCTestCase {
    func testModelsDirPerRequestModelAndBoundedCache() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ldm-models-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try FileManager.default.createSymbolicLink(at: dir.appendingPathComponent("shapes-b"), withDestinationURL: RunningServer.shapes)
        try FileManager.default.createDirectory(at: dir.appendingPathComponent("not-a-model"), withIntermediateDirectories: true)
        let srv = try startServer { $0.modelsDir = dir; $0.maxLoadedModels = 1 }
        let names = (srv.request("GET", "/sdapi/v1/sd-models").json as? [[String: Any]] ?? []).compactMap { $0["model_name"] as? String }
        XCTAssertEqual(names, ["shapes", "shapes-b"])
        for (i, m) in ["shapes-b", "shapes", "shapes-b [abc123]"].enumerated() {
            let r = srv.request("POST", "/sdapi/v1/txt2img", json: ["prompt": "a circle", "seed": i, "steps": 1, "width": 32, "height": 32,
                                                                     "override_settings": ["sd_model_checkpoint": m]])
            XCTAssertEqual(r.status, 200, r.text)
            let info = try JSONSerialization.jsonObject(with: Data((r.object["info"] as? String ?? "").utf8)) as? [String: Any]
            XCTAssertEqual(info?["sd_model_name"] as? String, m.hasPrefix("shapes-b") ? "shapes-b" : "shapes")
            XCTAssertEqual(srv.server.cache.names.count, 1, "at most --max-loaded-models models stay loaded")
        }
        for bad in ["\(dir.path)/../", "/etc/passwd", "shapes-b/../../x"] {
            let r = srv.request("POST", "/sdapi/v1/options", json: ["sd_model_checkpoint": bad])
            XCTAssertEqual(r.status, 403, "\(bad): \(r.text)")
            XCTAssertFalse(r.text.contains(dir.path), r.text)
        }
        XCTAssertEqual(srv.request("POST", "/sdapi/v1/options", json: ["sd_model_checkpoint": "not-a-model"]).status, 422)
        // A model added later appears after refresh-checkpoints.
        try FileManager.default.createSymbolicLink(at: dir.appendingPathComponent("shapes-c"), withDestinationURL: RunningServer.shapes)
        XCTAssertEqual(srv.request("POST", "/sdapi/v1/refresh-checkpoints").status, 200)
        XCTAssertEqual(srv.request("POST", "/sdapi/v1/options", json: ["sd_model_checkpoint": "shapes-c"]).status, 200)
        XCTAssertEqual(srv.request("GET", "/sdapi/v1/options").object["sd_model_checkpoint"] as? String, "shapes-c")
    }

    func testDisconnectedSynchronousClientCancelsItsJob() throws {
        let srv = try startServer()
        let body = try JSONSerialization.data(withJSONObject: ["prompt": "a red cross", "seed": 3, "steps": 1000, "sampler_name": "DDIM",
                                                                "width": 32, "height": 32])
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(srv.port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        XCTAssertEqual(rc, 0)
        let request = Data("POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: \(body.count)\r\n\r\n".utf8) + body
        _ = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        var job: Job?
        XCTAssertTrue(srv.waitUntil { job = srv.server.queue.current; return (job?.progress.step ?? 0) >= 1 })
        close(fd)
        XCTAssertTrue(srv.waitUntil(60) { job?.status == .cancelled }, "\(String(describing: job?.status))")
        XCTAssertLessThan(job?.progress.step ?? 1000, 1000)
        XCTAssertNil(srv.server.queue.current)
        XCTAssertEqual(srv.request("GET", "/sdapi/v1/options").status, 200)
    }
}
