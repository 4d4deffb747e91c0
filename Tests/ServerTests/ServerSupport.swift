// Test support: an `LDMServer` on an ephemeral loopback port inside the test process, with the shipped models/shapes
// model (a small text-conditional model, fast on a CPU), and plain blocking HTTP/1.1 requests over a loopback
// socket (RFC 9112: one request per connection, Content-Length or chunked bodies).
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Server
import XCTest

struct HTTPResult {
    let status: Int
    let headers: [String: String]
    let body: Data
    var json: Any? { try? JSONSerialization.jsonObject(with: body, options: [.fragmentsAllowed]) }
    var object: [String: Any] { json as? [String: Any] ?? [:] }
    var text: String { String(decoding: body, as: UTF8.self) }
}

final class RunningServer {
    let server: LDMServer
    let port: Int
    private let finished = DispatchSemaphore(value: 0)

    static var repoRoot: URL { URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent() }
    static var shapes: URL { repoRoot.appendingPathComponent("models/shapes") }

    init(_ configure: (inout ServerConfig) -> Void = { _ in }) throws {
        var c = ServerConfig()
        c.port = 0
        c.model = Self.shapes
        configure(&c)
        server = try LDMServer(config: c)
        final class PortBox: @unchecked Sendable { var port = 0 }
        let box = PortBox(), ready = DispatchSemaphore(value: 0), done = finished
        let s = server
        Task.detached {
            try? await s.run { p in box.port = p; ready.signal() }
            ready.signal()
            done.signal()
        }
        guard ready.wait(timeout: .now() + 60) == .success, box.port > 0 else { throw NSError(domain: "server did not start", code: 1) }
        port = box.port
    }

    func stop() {
        let s = server
        Task.detached { await s.stop() }
        _ = finished.wait(timeout: .now() + 120)
    }

    var base: String { "http://127.0.0.1:\(port)" }

    @discardableResult
    func request(_ method: String, _ path: String, json: Any? = nil, raw: Data? = nil, auth: (String, String)? = nil,
                 timeout: TimeInterval = 600) -> HTTPResult {
        var headers = ["Host": "127.0.0.1:\(port)", "Connection": "close"]
        var body = Data()
        if let json { body = (try? JSONSerialization.data(withJSONObject: json)) ?? Data() }
        if let raw { body = raw }
        if json != nil || raw != nil { headers["Content-Type"] = "application/json" }
        if method != "GET" { headers["Content-Length"] = String(body.count) }
        if let (u, p) = auth { headers["Authorization"] = "Basic " + Data("\(u):\(p)".utf8).base64EncodedString() }
        return HTTPClient.send(port: port, method: method, path: path, headers: headers, body: body, timeout: timeout)
    }

    /// Polls until `condition` holds (at most `seconds`).
    func waitUntil(_ seconds: Double = 120, _ condition: () -> Bool) -> Bool {
        let end = Date().addingTimeInterval(seconds)
        while Date() < end {
            if condition() { return true }
            Thread.sleep(forTimeInterval: 0.05)
        }
        return false
    }
}

extension XCTestCase {
    func startServer(_ configure: (inout ServerConfig) -> Void = { _ in }) throws -> RunningServer {
        let s = try RunningServer(configure)
        addTeardownBlock { s.stop() }
        return s
    }
}

/// A minimal blocking HTTP/1.1 client (Connection: close) for the tests and the load test.
enum HTTPClient {
    static func send(port: Int, method: String, path: String, headers: [String: String], body: Data, timeout: TimeInterval) -> HTTPResult {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return HTTPResult(status: -1, headers: [:], body: Data()) }
        defer { close(fd) }
        var tv = timeval(tv_sec: Int(timeout), tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let ok = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard ok == 0 else { return HTTPResult(status: -1, headers: [:], body: Data()) }
        var head = "\(method) \(path) HTTP/1.1\r\n"
        for (k, v) in headers { head += "\(k): \(v)\r\n" }
        var out = Data((head + "\r\n").utf8) + body
        while !out.isEmpty {
            let n = out.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { break }
            out.removeFirst(n)
        }
        var data = Data()
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buf, buf.count, 0)
            if n <= 0 { break }
            data.append(buf, count: n)
        }
        return parse(data)
    }

    static func parse(_ data: Data) -> HTTPResult {
        guard let sep = data.range(of: Data("\r\n\r\n".utf8)) else { return HTTPResult(status: -1, headers: [:], body: data) }
        let lines = String(decoding: data[..<sep.lowerBound], as: UTF8.self).components(separatedBy: "\r\n")
        let status = lines.first.flatMap { Int($0.split(separator: " ").dropFirst().first ?? "") } ?? -1
        var headers: [String: String] = [:]
        for l in lines.dropFirst() {
            guard let c = l.firstIndex(of: ":") else { continue }
            headers[l[..<c].lowercased()] = l[l.index(after: c)...].trimmingCharacters(in: .whitespaces)
        }
        var body = Data(data[sep.upperBound...])
        if headers["transfer-encoding"]?.lowercased() == "chunked" {
            var decoded = Data(), rest = body
            while let eol = rest.range(of: Data("\r\n".utf8)),
                  let size = Int(String(decoding: rest[..<eol.lowerBound], as: UTF8.self).split(separator: ";").first ?? "", radix: 16), size > 0 {
                let start = eol.upperBound
                guard rest.distance(from: start, to: rest.endIndex) >= size else { break }
                decoded += rest[start..<rest.index(start, offsetBy: size)]
                rest = Data(rest[rest.index(start, offsetBy: size)...].dropFirst(2))
            }
            body = decoded
        }
        return HTTPResult(status: status, headers: headers, body: body)
    }
}
