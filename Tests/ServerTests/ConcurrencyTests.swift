// Concurrent clients on loopback against one server: no lost or duplicated job, each client gets its own image (its
// seed in the PNG), reads keep answering while generations run, and the resident memory does not grow across 100
// generation requests (the full 200-client run with latencies is tools/load/load_test.py, docs/server.md).
import Foundation
import Imaging
import Server
import XCTest

final class ConcurrencyTests: XCTestCase {
    func testConcurrentClientsEachGetTheirOwnImage() throws {
        let srv = try startServer { $0.queueSize = 64 }
        let clients = 40
        final class Results: @unchecked Sendable {
            let lock = NSLock(); var ids: [String] = []; var seeds: [Int: String] = [:]; var failures: [String] = []
        }
        let res = Results()
        DispatchQueue.concurrentPerform(iterations: clients) { k in
            let seed = 7000 + k
            let body: [String: Any] = ["prompt": "a small blue square", "seed": seed, "steps": 1, "width": 32, "height": 32]
            var png: String?
            if k % 2 == 0 {
                let r = srv.request("POST", "/ldm/v1/jobs", json: body)
                guard r.status == 202, let id = r.object["id"] as? String else { res.lock.withLock { res.failures.append("submit \(r.status)") }; return }
                res.lock.withLock { res.ids.append(id) }
                for _ in 0..<2000 {
                    _ = srv.request("GET", "/sdapi/v1/progress?skip_current_image=true")
                    let j = srv.request("GET", "/ldm/v1/jobs/\(id)?preview=false").object
                    if j["status"] as? String == "succeeded" { png = (j["images"] as? [String])?.first; break }
                    Thread.sleep(forTimeInterval: 0.02)
                }
            } else {
                XCTAssertEqual(srv.request("GET", "/sdapi/v1/options").status, 200)
                let r = srv.request("POST", "/sdapi/v1/txt2img", json: body)
                png = (r.object["images"] as? [String])?.first
            }
            guard let png, let data = Data(base64Encoded: png), let img = try? ImageIO.decode([UInt8](data)),
                  let text = img.text("parameters") else {
                res.lock.withLock { res.failures.append("client \(k): no image") }; return
            }
            res.lock.withLock { res.seeds[seed] = text }
        }
        XCTAssertEqual(res.failures, [])
        XCTAssertEqual(Set(res.ids).count, res.ids.count, "duplicated job ids")
        XCTAssertEqual(res.ids.count, clients / 2)
        XCTAssertEqual(res.seeds.count, clients)
        for (seed, text) in res.seeds { XCTAssertTrue(text.contains("Seed: \(seed),"), "\(seed): \(text)") }
    }

    func testMemoryDoesNotGrowAcross100Requests() throws {
        let srv = try startServer()
        func generate(_ n: Int, from base: Int) {
            for i in 0..<n {
                let r = srv.request("POST", "/sdapi/v1/txt2img", json: ["prompt": "a green cross", "seed": base + i, "steps": 1, "width": 32, "height": 32])
                XCTAssertEqual(r.status, 200)
            }
        }
        func rss() -> Int { ((srv.request("GET", "/sdapi/v1/memory").object["ram"] as? [String: Any])?["process_rss"] as? Int) ?? 0 }
        generate(100, from: 0)
        let warm = rss()
        generate(100, from: 1000)
        let after = rss()
        XCTAssertGreaterThan(warm, 0)
        // The test process holds everything else of the suite too; the server must not add more than 5% (or 16 MB).
        XCTAssertLessThan(after - warm, max(warm / 20, 16 << 20), "resident memory grew from \(warm) to \(after) bytes")
    }
}
