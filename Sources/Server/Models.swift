// The models a server may load (only --model and the entries of --models-dir; a path that leads outside it is refused)
// and a bounded least-recently-used cache of loaded ones (AUTOMATIC1111's sd_checkpoints_limit, modules/sd_models.py
// model_data.loaded_sd_models), loaded on demand by the generation worker.
import Foundation
import Pipelines
import TensorCore

public struct ModelEntry: Equatable, Sendable {
    /// Name as the API lists it (folder or file name without extension) and A1111's title.
    public let name: String
    public let url: URL
    /// Path relative to the models folder (or the name for --model): no server path is ever returned.
    public let filename: String
    public var title: String { name }
}

public final class ModelRegistry: @unchecked Sendable {
    public let primary: URL?
    public let modelsDir: URL?
    private let lock = NSLock()
    private var list: [ModelEntry] = []

    public init(model: URL?, modelsDir: URL?) {
        primary = model?.standardizedFileURL
        self.modelsDir = modelsDir?.standardizedFileURL.resolvingSymlinksInPath()
        refresh()
    }

    public var entries: [ModelEntry] {
        lock.lock()
        defer { lock.unlock() }
        return list
    }

    static func isModel(_ url: URL) -> Bool {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDir) else { return false }
        if isDir.boolValue { return FileManager.default.fileExists(atPath: url.appendingPathComponent("model_index.json").path) }
        return ["safetensors", "ckpt"].contains(url.pathExtension.lowercased())
    }

    /// Rescans --models-dir (A1111 refresh-checkpoints).
    public func refresh() {
        var found: [ModelEntry] = []
        if let p = primary { found.append(ModelEntry(name: p.deletingPathExtension().lastPathComponent, url: p, filename: p.lastPathComponent)) }
        if let dir = modelsDir, let items = try? FileManager.default.contentsOfDirectory(at: dir, includingPropertiesForKeys: nil) {
            for u in items.sorted(by: { $0.lastPathComponent < $1.lastPathComponent }) where Self.isModel(u) {
                let name = u.deletingPathExtension().lastPathComponent
                if !found.contains(where: { $0.name == name }) {
                    found.append(ModelEntry(name: name, url: u.standardizedFileURL, filename: u.lastPathComponent))
                }
            }
        }
        lock.lock()
        list = found
        lock.unlock()
    }

    /// Is `url` (its ".." and "." removed) inside --models-dir?
    func inside(_ url: URL) -> Bool {
        guard let dir = modelsDir else { return false }
        return url.standardizedFileURL.path.hasPrefix(dir.path + "/")
    }

    /// A model by name, title ("name [hash]"), file name, or a path inside --models-dir; errors name `field`.
    public func resolve(_ query: String, field: String = "sd_model_checkpoint") throws -> ModelEntry {
        var q = query.trimmingCharacters(in: .whitespaces)
        if q.hasSuffix("]"), let open = q.lastIndex(of: "[") { q = String(q[..<open]).trimmingCharacters(in: .whitespaces) }
        let all = entries
        if let e = all.first(where: { $0.name == q || $0.filename == q }) { return e }
        if q.contains("/") || q.contains("..") {
            let url = modelsDir.map { URL(fileURLWithPath: q, relativeTo: $0) } ?? URL(fileURLWithPath: q)
            guard inside(url) else {
                throw APIError(.forbidden, "invalid \(field)", "\(field): models are only loaded from --model and --models-dir")
            }
            if let e = all.first(where: { $0.url.standardizedFileURL.path == url.standardizedFileURL.path }) { return e }
        }
        throw APIError.unprocessable(field, "\(field): unknown model '\(query)'; available: \(all.map(\.name).joined(separator: ", "))")
    }
}

/// Loaded models, at most `capacity`, the least recently used evicted first. Used from the worker thread only.
public final class ModelCache: @unchecked Sendable {
    public struct Loaded {
        public let entry: ModelEntry
        public let bundle: ModelBundle
        public let preview: LatentPreview?
    }
    public let capacity: Int
    private let lock = NSLock()
    private var loaded: [Loaded] = []   // most recently used last

    /// The compute type of the server's jobs (`ldm serve --precision`, resolved): how loaded weights are held.
    public let computeType: DType
    public init(capacity: Int, computeType: DType = .float32) {
        self.capacity = max(1, capacity)
        self.computeType = computeType
    }

    public var names: [String] {
        lock.lock()
        defer { lock.unlock() }
        return loaded.map(\.entry.name)
    }

    public func get(_ entry: ModelEntry) throws -> Loaded {
        lock.lock()
        if let i = loaded.firstIndex(where: { $0.entry == entry }) {
            let m = loaded.remove(at: i)
            loaded.append(m)
            lock.unlock()
            return m
        }
        // Evict before loading so that at most `capacity` models are ever resident.
        while loaded.count >= capacity { loaded.removeFirst() }
        lock.unlock()
        let summary = try ModelSummary.read(entry.url)
        guard let text = summary.kind.textEncoder, text != .ldmBert, text != .sdxlRefiner, summary.firstStage == .autoencoderKL else {
            throw APIError.unprocessable("sd_model_checkpoint", "model \(entry.name) is not a Stable Diffusion text-to-image model (CLIP text encoder + AutoencoderKL)")
        }
        let bundle = try ModelBundle.load(entry.url, forInferenceIn: computeType)
        let m = Loaded(entry: entry, bundle: bundle, preview: try? LatentPreview(bundle: bundle))
        lock.lock()
        loaded.append(m)
        lock.unlock()
        return m
    }

    public func unloadAll() {
        lock.lock()
        loaded.removeAll()
        lock.unlock()
    }
}
