// `ldm serve`: the AUTOMATIC1111-compatible HTTP API, the job API and the web page (Server module) on this machine.
// It prints the URL once listening and stops cleanly on SIGINT/SIGTERM: waiting jobs are cancelled, the running one
// stops at its next step, open requests answer, then the listener closes.
import ArgumentParser
import Dispatch
import Foundation
import NeuralNetwork
import Server
import TensorCore
#if canImport(Glibc)
import Glibc
#endif

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "serve", abstract: "Serve the AUTOMATIC1111-compatible HTTP API, a job API and a web page.")

    @Option(help: "A model to serve (diffusers folder or CompVis .safetensors/.ckpt); the default model.")
    var model: String?

    @Option(name: .customLong("models-dir"), help: "A folder of models (diffusers folders, .safetensors/.ckpt files); only these and --model can be loaded.")
    var modelsDir: String?

    @Option(help: "Address to listen on (default: loopback only).")
    var host: String = "127.0.0.1"

    @Option(help: "Port (0: any free port).")
    var port: Int = 7860

    @Option(name: .customLong("api-auth"), help: "HTTP Basic credentials user:password[,user2:password2], required on every route including the page.")
    var apiAuth: String?

    @Option(name: .customLong("queue-size"), help: "Jobs that may wait behind the running one; more get 429 with Retry-After.")
    var queueSize: Int = 16

    @Option(name: .customLong("max-loaded-models"), help: "Models kept loaded (least recently used evicted).")
    var maxLoadedModels: Int = 1

    @Option(name: .customLong("parallel-models"), help: "Models that may generate at the same time (jobs of one model always run one after another); at most --max-loaded-models.")
    var parallelModels: Int = 1

    @Option(help: "Compute precision of every job: f32 (default), auto (bf16 where this CPU has native bf16) or bf16, as for ldm txt2img.")
    var precision: String = "f32"

    @Option(name: .customLong("output-dir"), help: "Folder where requests with save_images write their PNGs (without it, save_images is refused).")
    var outputDir: String?

    @Option(name: .customLong("lora-dir"), help: "Folder of LoRA files that prompts may use as <lora:NAME:WEIGHT> (listed by /sdapi/v1/loras).")
    var loraDir: String?

    func validate() throws {
        guard model != nil || modelsDir != nil else { throw ValidationError("give --model PATH and/or --models-dir DIR") }
        guard (0...65535).contains(port) else { throw ValidationError("--port must be in 0...65535, got \(port)") }
        guard (1...1024).contains(queueSize) else { throw ValidationError("--queue-size must be in 1...1024, got \(queueSize)") }
        guard (1...16).contains(maxLoadedModels) else { throw ValidationError("--max-loaded-models must be in 1...16, got \(maxLoadedModels)") }
        guard (1...16).contains(parallelModels), parallelModels <= maxLoadedModels else {
            throw ValidationError("--parallel-models must be in 1...--max-loaded-models (\(maxLoadedModels)), got \(parallelModels)")
        }
        guard let compute = ComputePrecision(rawValue: precision), compute != .int8 else {
            throw ValidationError("--precision must be auto, f32 or bf16, got \(precision) (int8 is for the generation commands)")
        }
        // bf16's native kernels are switched on per op through one process-wide flag: one generation at a time.
        guard parallelModels == 1 || compute.resolved == .float32 else {
            throw ValidationError("--parallel-models above 1 needs --precision f32 (bf16 runs one generation at a time)")
        }
        for (flag, path) in [("--models-dir", modelsDir), ("--output-dir", outputDir), ("--lora-dir", loraDir)] {
            guard let path else { continue }
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue else {
                throw ValidationError("\(flag) \(path) is not a folder")
            }
        }
        if let m = model { guard FileManager.default.fileExists(atPath: m) else { throw ValidationError("model \(m) does not exist") } }
        if let a = apiAuth { do { _ = try ServerConfig.parseAuth(a) } catch { throw ValidationError("--api-auth takes user:password pairs separated by commas") } }
    }

    func run() throws {
        var c = ServerConfig()
        c.host = host
        c.port = port
        c.model = model.map { URL(fileURLWithPath: $0) }
        c.modelsDir = modelsDir.map { URL(fileURLWithPath: $0, isDirectory: true) }
        c.credentials = try apiAuth.map(ServerConfig.parseAuth) ?? []
        c.queueSize = queueSize
        c.maxLoadedModels = maxLoadedModels
        c.parallelModels = parallelModels
        let compute = ComputePrecision(rawValue: precision) ?? .f32
        c.precision = compute.rawValue
        c.computeType = compute.resolved
        if compute == .bf16 && !compute.isNative {
            FileHandle.standardError.write(Data("--precision bf16: this CPU has no native bf16 in use; emulated on float32 kernels\n".utf8))
        }
        c.outputDir = outputDir.map { URL(fileURLWithPath: $0, isDirectory: true) }
        c.loraDir = loraDir.map { URL(fileURLWithPath: $0, isDirectory: true) }
        let server: LDMServer
        do { server = try LDMServer(config: c) } catch let e as APIError { throw ValidationError(e.detail) }

        signal(SIGINT, SIG_IGN)
        signal(SIGTERM, SIG_IGN)
        var sources: [DispatchSourceSignal] = []
        for sig in [SIGINT, SIGTERM] {
            let s = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            s.setEventHandler {
                FileHandle.standardError.write(Data("stopping\n".utf8))
                Task.detached { await server.stop() }
            }
            s.resume()
            sources.append(s)
        }
        let done = DispatchSemaphore(value: 0)
        final class Box: @unchecked Sendable { var error: Error? }
        let box = Box()
        let host = self.host
        Task.detached {
            do {
                try await server.run { port in
                    print("ldm serve: listening on http://\(host.contains(":") ? "[\(host)]" : host):\(port)/")
                    fflush(stdout)
                }
            } catch { box.error = error }
            done.signal()
        }
        // Autocast's precision is process-wide: set for the server's whole life, every worker thread computes at it.
        compute.run { done.wait() }
        _ = sources
        if let e = box.error { throw ValidationError("server stopped: \(e)") }
    }
}
