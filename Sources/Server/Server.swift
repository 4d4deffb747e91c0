// `ldm serve`: the HTTP server on Hummingbird 2 (hummingbird-project/hummingbird: Router, RouterMiddleware,
// Application, ServiceLifecycle's ServiceGroup): HTTP Basic authentication on every route (RFC 7617, credentials
// compared in constant time), JSON errors, bounded request bodies, and a clean stop that cancels the queue first so that
// waiting requests answer before the listener closes.
import Foundation
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle
import TensorCore

public struct ServerConfig: Sendable {
    public var host = "127.0.0.1"
    public var port = 7860
    public var model: URL?
    public var modelsDir: URL?
    /// HTTP Basic credentials (user, password); empty: no authentication.
    public var credentials: [(String, String)] = []
    public var queueSize = 16
    public var maxLoadedModels = 1
    /// Models that may generate at the same time (one job at a time per model); at most maxLoadedModels.
    public var parallelModels = 1
    /// `ldm serve --precision` (f32, auto, bf16), reported by /sdapi/v1/options; ServeCommand sets the compute scope.
    public var precision = "f32"
    /// What `precision` resolves to on this CPU (float32, or bfloat16): the loaded models' weights are held for it.
    public var computeType: DType = .float32
    public var outputDir: URL?
    /// Folder of LoRA files for the prompt syntax <lora:NAME:WEIGHT> and /sdapi/v1/loras (nil: no LoRAs).
    public var loraDir: URL?
    /// Largest request body (base64 init images and masks included).
    public var maxBodyBytes = 64 << 20
    public init() {}

    /// Parses --api-auth "user:pass[,user2:pass2]".
    public static func parseAuth(_ s: String) throws -> [(String, String)] {
        try s.split(separator: ",").map { pair in
            guard let colon = pair.firstIndex(of: ":"), colon != pair.startIndex, pair.index(after: colon) != pair.endIndex else {
                throw APIError(.badRequest, "invalid --api-auth", "--api-auth takes user:password pairs separated by commas")
            }
            return (String(pair[..<colon]), String(pair[pair.index(after: colon)...]))
        }
    }
}

/// Request context with the server's body limit.
public struct ServerContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public init(source: ApplicationRequestContextSource) { coreContext = .init(source: source) }
    public var maxUploadSize: Int { 64 << 20 }
}

/// Compares two byte strings in time that depends only on their lengths.
func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    var diff = UInt8(truncatingIfNeeded: a.count ^ b.count)
    for i in 0..<max(a.count, b.count) { diff |= (i < a.count ? a[i] : 0) ^ (i < b.count ? b[i] : 0) }
    return diff == 0
}

/// HTTP Basic authentication for every request (when credentials are set) and JSON bodies for every error.
struct GuardMiddleware: RouterMiddleware {
    typealias Context = ServerContext
    let credentials: [([UInt8], [UInt8])]

    func authorized(_ request: Request) -> Bool {
        guard !credentials.isEmpty else { return true }
        guard let h = request.headers[.authorization], h.count > 6, h.prefix(6).lowercased() == "basic ",
              let data = Data(base64Encoded: String(h.dropFirst(6)).trimmingCharacters(in: .whitespaces)),
              let colon = data.firstIndex(of: UInt8(ascii: ":")) else { return false }
        let user = [UInt8](data[data.startIndex..<colon]), pass = [UInt8](data[(colon + 1)...])
        var ok = false
        for (u, p) in credentials {  // every pair is compared, so timing does not tell which user matched
            let m = constantTimeEqual(user, u) && constantTimeEqual(pass, p)
            ok = ok || m
        }
        return ok
    }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard authorized(request) else {
            var e = APIError(.unauthorized, "unauthorized", "this server needs HTTP Basic credentials (--api-auth)")
            e.headers[.wwwAuthenticate] = "Basic realm=\"ldm\", charset=\"UTF-8\""
            throw e
        }
        do {
            return try await next(request, context)
        } catch let e as APIError {
            throw e
        } catch let e as HTTPError {
            switch e.status {
            case .notFound: throw APIError(.notFound, "not found", "no route \(request.method) \(request.uri.path)")
            case .contentTooLarge: throw APIError(.contentTooLarge, "request too large", "the request body is larger than the server accepts")
            case .methodNotAllowed: throw APIError(.methodNotAllowed, "method not allowed", "\(request.method) is not allowed on \(request.uri.path)")
            default: throw APIError(e.status, "request failed", e.body ?? e.status.reasonPhrase)
            }
        } catch is CancellationError {
            throw APIError(.serviceUnavailable, "cancelled", "the request was cancelled")
        } catch {
            throw APIError(.internalServerError, "internal error", "the server could not handle this request")
        }
    }
}

/// One documented route: what /openapi.json lists is exactly what the router serves.
public struct RouteDoc: Sendable {
    public let method: String, path: String, summary: String, tag: String
}

public final class LDMServer: @unchecked Sendable {
    public let config: ServerConfig
    public let registry: ModelRegistry
    public let cache: ModelCache
    public let engine: Engine
    public let queue: JobQueue
    public let options: OptionsStore
    private(set) public var routes: [RouteDoc] = []
    private var group: ServiceGroup?
    private let lock = NSLock()
    private var boundPort: Int?
    private var stopped = false

    public init(config: ServerConfig) throws {
        self.config = config
        registry = ModelRegistry(model: config.model, modelsDir: config.modelsDir)
        guard let first = registry.entries.first else {
            throw APIError(.badRequest, "no models", "no model found: give --model PATH or a --models-dir holding diffusers folders or .safetensors/.ckpt files")
        }
        cache = ModelCache(capacity: config.maxLoadedModels, computeType: config.computeType)
        engine = Engine(registry: registry, cache: cache, outputDir: config.outputDir, loraDir: config.loraDir)
        let engine = self.engine
        let registry = self.registry
        queue = JobQueue(capacity: config.queueSize, workers: min(config.parallelModels, config.maxLoadedModels),
                         modelKey: { (try? registry.resolve($0.model ?? "").name) ?? ($0.model ?? "") }) { engine.run($0) }
        options = OptionsStore(ServerOptions(model: first.name), registry: registry, precision: config.precision)
    }

    func buildRouter() -> Router<ServerContext> {
        let router = Router(context: ServerContext.self)
        router.add(middleware: GuardMiddleware(credentials: config.credentials.map { (Array($0.0.utf8), Array($0.1.utf8)) }))
        routes = []
        addA1111Routes(router)
        addJobRoutes(router)
        addPageRoutes(router)
        return router
    }

    /// Registers a handler and records it for /openapi.json.
    func route(_ router: Router<ServerContext>, _ method: HTTPRequest.Method, _ path: String, _ summary: String, tag: String,
               _ handler: @escaping @Sendable (Request, ServerContext) async throws -> Response) {
        routes.append(RouteDoc(method: method.rawValue, path: path, summary: summary, tag: tag))
        router.on(RouterPath(path.replacingOccurrences(of: "{", with: ":").replacingOccurrences(of: "}", with: "")), method: method, use: handler)
    }

    /// Runs until `stop()` (or a failure); `onReady` gets the bound port (useful with port 0).
    public func run(onReady: @escaping @Sendable (Int) -> Void = { _ in }) async throws {
        let router = buildRouter()
        var logger = Logger(label: "ldm-serve")
        logger.logLevel = .warning
        let app = Application(router: router,
                              configuration: .init(address: .hostname(config.host, port: config.port), serverName: "ldm"),
                              onServerRunning: { [weak self] ch in
                                  let p = ch.localAddress?.port ?? 0
                                  self?.lock.withLock { self?.boundPort = p }
                                  onReady(p)
                              }, logger: logger)
        let g = ServiceGroup(configuration: .init(services: [app], gracefulShutdownSignals: [], cancellationSignals: [], logger: logger))
        let already = lock.withLock {
            group = g
            return stopped
        }
        if already { return }
        // The server only infers: autograd off for its whole life. GradMode is one process-wide switch that noGrad
        // saves and restores, so generations on several worker threads would otherwise turn it on under each other.
        let savedGrad = GradMode.isEnabled
        GradMode.isEnabled = false
        defer { GradMode.isEnabled = savedGrad }
        try await g.run()
    }

    public var port: Int? { lock.withLock { boundPort } }

    /// Cancels the waiting jobs, stops the running one at its next step (nothing half-written: PNGs are written
    /// atomically), then closes the listener once the open requests have answered.
    public func stop() async {
        let g = lock.withLock {
            stopped = true
            return group
        }
        let q = queue
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            Thread.detachNewThread {
                q.shutdown()
                c.resume()
            }
        }
        await g?.triggerGracefulShutdown()
    }

    // MARK: helpers shared by the route files

    static func json(_ value: JSON, status: HTTPResponse.Status = .ok, headers: HTTPFields = [:]) -> Response {
        var h = headers
        h[.contentType] = "application/json"
        return Response(status: status, headers: h, body: .init(byteBuffer: ByteBuffer(bytes: value.serialized())))
    }

    /// Waits for a job for a synchronous request; a client that disconnects first cancels it (its queue slot is freed).
    func wait(for job: Job, _ request: Request) async throws {
        let q = queue
        try await request.body.consumeWithInboundCloseHandler({ _ in await job.wait() },
                                                              onInboundClosed: {
                                                                  job.cancel()
                                                                  q.cancel(job.id)
                                                              })
    }

    /// The request body as JSON, bounded by `limit` bytes (413 beyond it, 400 when malformed).
    static func body(_ request: inout Request, limit: Int) async throws -> JSON {
        let buffer: ByteBuffer
        do { buffer = try await request.collectBody(upTo: limit) } catch {
            throw APIError(.contentTooLarge, "request too large", "the request body is larger than \(limit) bytes")
        }
        return try JSON.parse(Data(buffer.readableBytesView))
    }
}

/// Options a client may read and change (/sdapi/v1/options), A1111 keys.
public final class OptionsStore: @unchecked Sendable {
    private let lock = NSLock()
    private var current: ServerOptions
    private var other: [String: JSON] = [:]
    let registry: ModelRegistry
    let precision: String

    init(_ o: ServerOptions, registry: ModelRegistry, precision: String = "f32") {
        current = o
        self.registry = registry
        self.precision = precision
    }

    public var value: ServerOptions {
        lock.lock()
        defer { lock.unlock() }
        return current
    }

    public var json: JSON {
        lock.lock()
        defer { lock.unlock() }
        var o = other
        o["sd_model_checkpoint"] = .string(current.model)
        o["CLIP_stop_at_last_layers"] = .int(current.clipSkip)
        o["randn_source"] = .string(current.randnSource)
        o["emphasis"] = .string(current.emphasis.webUIName ?? "diffusers")
        o["eta_ddim"] = .double(current.etaDDIM)
        o["samples_format"] = "png"
        o["sd_checkpoints_limit"] = .int(0)
        o["ldm_precision"] = .string(precision)
        return .object(o)
    }

    /// Validates every key first, then applies them all (a bad key changes nothing).
    public func update(_ body: JSON) throws {
        let f = try Fields(body)
        var o = value
        if let m = try f.optionalString("sd_model_checkpoint") { o.model = try registry.resolve(m).name }
        o.clipSkip = try f.int("CLIP_stop_at_last_layers", o.clipSkip, in: 1...12)
        o.randnSource = try f.string("randn_source", o.randnSource)
        guard ["CPU", "NV"].contains(o.randnSource) else {
            throw APIError.unprocessable("randn_source", "randn_source must be CPU or NV, got \(o.randnSource)")
        }
        o.emphasis = try GenerationSpec.parseEmphasis(f.optionalString("emphasis"), default: o.emphasis, field: "emphasis")
        o.etaDDIM = try f.double("eta_ddim", o.etaDDIM, in: 0...10)
        if let fmt = try f.optionalString("samples_format"), fmt.lowercased() != "png" {
            throw APIError.unprocessable("samples_format", "only png is written")
        }
        let known: Set = ["sd_model_checkpoint", "CLIP_stop_at_last_layers", "randn_source", "emphasis", "eta_ddim", "samples_format", "sd_checkpoints_limit", "ldm_precision"]
        lock.lock()
        current = o
        for (k, v) in f.values where !known.contains(k) && other.count < 256 { other[k] = v }
        lock.unlock()
    }
}
