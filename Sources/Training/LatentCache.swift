// Latent caching for `ldm train ldm` (cache_latents): every training image goes through the frozen first stage once
// and its output is kept in RUN_DIR/latent_cache.safetensors. For an AutoencoderKL that output is the posterior's
// moments (mean and logvar: the DiagonalGaussianDistribution parameters), so each step still draws
// z = mean + exp(logvar / 2) * eps from the training generator, as CompVis LatentDiffusion.get_first_stage_encoding
// samples encode_first_stage's posterior anew every time; for a VQModel it is the (deterministic) pre-quantisation
// latent. A random crop would need a new latent every step and is refused; with random_flip both the centre crop and
// its mirror image are encoded, and the flip drawn for an example (the same draw as the image path) picks one.
// The file is keyed by fingerprints of the data (image_size, the flips, and every image's relative path, class and
// bytes) and of the first stage (its config and weights): when either changes the cache is rebuilt. It is written
// atomically (temp file, fsync, rename) like the checkpoints and read back memory-mapped.
import Autoencoders
import Checkpoints
import Dispatch
import Foundation
import NeuralNetwork
import TensorCore

/// A 64-bit fingerprint (murmur3-style mixing of 8-byte words); detects changed inputs, not a cryptographic hash.
struct Fingerprint {
    private(set) var state: UInt64 = 0x243F_6A88_85A3_08D3
    private var length: UInt64 = 0

    private static func mix(_ k: UInt64) -> UInt64 {
        var k = k &* 0x87C3_7B91_1142_53D5
        k = (k << 31) | (k >> 33)
        return k &* 0x4CF5_AD43_2745_937F
    }
    mutating func add(_ word: UInt64) {
        state ^= Self.mix(word)
        state = ((state << 27) | (state >> 37)) &* 5 &+ 0x52DC_E729
        length &+= 8
    }
    mutating func add(bytes: UnsafeRawBufferPointer) {
        add(UInt64(bytes.count))
        let words = bytes.count / 8
        for i in 0..<words { add(bytes.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self)) }
        var tail: UInt64 = 0
        for i in (8 * words)..<bytes.count { tail |= UInt64(bytes[i]) << (8 * UInt64(i - 8 * words)) }
        add(tail)
    }
    mutating func add(_ string: String) {
        var s = string
        s.withUTF8 { add(bytes: UnsafeRawBufferPointer($0)) }
    }
    mutating func add(_ data: Data) { data.withUnsafeBytes { add(bytes: $0) } }

    var hex: String {
        var h = state ^ length
        h ^= h >> 33
        h = h &* 0xFF51_AFD7_ED55_8CCD
        h ^= h >> 33
        h = h &* 0xC4CE_B9FE_1A85_EC53
        h ^= h >> 33
        return String(format: "%016llx", h)
    }
}

/// The first stage's outputs for every image (and its mirror image), memory-mapped from RUN_DIR/latent_cache.safetensors.
public final class LatentCache {
    public static let fileName = "latent_cache.safetensors"
    static let format = "ldm-latent-cache-1"
    static let tensorName = "latents"

    public enum Kind: String, Sendable {
        /// AutoencoderKL: posterior moments (2C, h, w) = mean and logvar, sampled every step.
        case klMoments = "kl_moments"
        /// VQModel: the pre-quantisation latents (C, h, w), used as they are.
        case vqLatents = "vq_latents"
    }
    public enum Origin: Equatable, Sendable {
        /// An up-to-date file was found.
        case loaded
        /// Encoded now; `reason` says why (no file, data changed, first stage changed, unreadable).
        case built(reason: String)
    }

    public let url: URL
    public let kind: Kind
    /// Number of images.
    public let count: Int
    /// 1, or 2 with random_flip (variant 1 = the mirrored image).
    public let variants: Int
    /// Shape of one entry: (C', h, w).
    public let entryShape: [Int]
    public let origin: Origin
    let record: TensorRecord
    var entryCount: Int { entryShape.reduce(1, *) }

    init(url: URL, kind: Kind, count: Int, variants: Int, entryShape: [Int], origin: Origin) throws {
        let file = try SafeTensors(url: url)
        guard let r = file[Self.tensorName], r.dtype == .F32, r.shape == [count, variants] + entryShape else {
            throw TrainingError("\(url.path): no F32 tensor \"\(Self.tensorName)\" of shape \([count, variants] + entryShape)")
        }
        self.url = url
        self.kind = kind
        self.count = count
        self.variants = variants
        self.entryShape = entryShape
        self.origin = origin
        record = r
    }

    /// The cached output for image `index`, flipped (variant 1) or not (variant 0): a copy of the mapped bytes.
    public func entry(_ index: Int, variant: Int) throws -> Tensor {
        guard (0..<count).contains(index), (0..<variants).contains(variant) else {
            throw TrainingError("latent cache entry (\(index), \(variant)) outside (\(count), \(variants))")
        }
        let n = entryCount, start = (index * variants + variant) * n * 4
        let values = try record.withRawBytes { raw in
            [Float](unsafeUninitializedCapacity: n) { p, initialized in
                if let dst = p.baseAddress { UnsafeMutableRawPointer(dst).copyMemory(from: raw.baseAddress! + start, byteCount: n * 4) }
                initialized = n
            }
        }
        return Tensor(values, shape: entryShape)
    }

    /// Opens RUN_DIR/latent_cache.safetensors when its keys match `dataset` and `encoder`; otherwise encodes every
    /// image (both flips when the dataset flips) in batches of `batchSize`, the next batch decoded in the background,
    /// and writes the file atomically. `log` gets one line on what happened and progress while encoding.
    public static func loadOrBuild(dataset: ImageFolderDataset, encoder: LatentEncoder, runDir: URL, batchSize: Int,
                                   log: (String) -> Void = { _ in }) throws -> LatentCache {
        guard !dataset.randomCrop else {
            throw TrainingError("cache_latents needs random_crop false: a random crop changes the image, and so its latent, every step (random_flip is fine: both flips are cached)")
        }
        guard let (kind, entryShape) = encoder.cacheLayout(imageSize: dataset.size) else {
            throw TrainingError("cache_latents needs a first_stage (there is nothing to encode in pixel space)")
        }
        let variants = dataset.randomFlip ? 2 : 1
        let url = runDir.appendingPathComponent(fileName)
        let dataKey = try dataFingerprint(dataset, variants: variants), stageKey = try encoder.fingerprint()
        let expected = ["format": format, "kind": kind.rawValue, "data_key": dataKey, "first_stage_key": stageKey,
                        "count": String(dataset.count), "variants": String(variants), "image_size": String(dataset.size)]
        var reason = "no cache in \(runDir.path) yet"
        if FileManager.default.fileExists(atPath: url.path) {
            do {
                let meta = try SafeTensors(url: url).metadata ?? [:]
                if meta["format"] != format { reason = "\(url.lastPathComponent) has another format (\(meta["format"] ?? "none"))" }
                else if meta["data_key"] != dataKey || meta["count"] != expected["count"] || meta["variants"] != expected["variants"]
                            || meta["image_size"] != expected["image_size"] { reason = "the training images changed" }
                else if meta["first_stage_key"] != stageKey || meta["kind"] != kind.rawValue { reason = "the first stage changed" }
                else {
                    let cache = try LatentCache(url: url, kind: kind, count: dataset.count, variants: variants, entryShape: entryShape, origin: .loaded)
                    log("latent cache: \(url.path) (\(dataset.count) images x \(variants) flips, up to date)")
                    return cache
                }
            } catch {
                reason = "\(url.lastPathComponent) is unreadable (\(error))"
            }
        }
        log("latent cache: encoding \(dataset.count) images x \(variants) flips (\(reason))")
        try FileManager.default.createDirectory(at: runDir, withIntermediateDirectories: true)
        let n = entryShape.reduce(1, *)
        let items = (0..<dataset.count).flatMap { i in (0..<variants).map { (index: i, flipped: $0 == 1) } }
        var bytes = Data(count: items.count * n * 4)
        let starts = Array(stride(from: 0, to: items.count, by: max(batchSize, 1)))
        let queue = DispatchQueue(label: "ldm.training.latent-cache")
        func decode(_ start: Int) -> BackgroundJob<Tensor> {
            let chunk = Array(items[start..<min(start + max(batchSize, 1), items.count)])
            return BackgroundJob(on: queue) {
                try stackExamples(chunk.map { try dataset.centeredExample(at: $0.index, flipped: $0.flipped).image })
            }
        }
        var next = starts.first.map(decode)
        var reported = 0
        for (k, start) in starts.enumerated() {
            guard let job = next else { break }
            let images = try job.wait()
            next = k + 1 < starts.count ? decode(starts[k + 1]) : nil
            let out = try encoder.cacheEntries(images).contiguous()
            guard out.shape == [images.shape[0]] + entryShape else {
                throw TrainingError("the first stage gave \(out.shape) for \(images.shape); expected (B, \(entryShape.map(String.init).joined(separator: ", ")))")
            }
            withExtendedLifetime(out) {
                bytes.withUnsafeMutableBytes { dst in
                    dst.baseAddress!.advanced(by: start * n * 4).copyMemory(from: out.data, byteCount: out.count * 4)
                }
            }
            let done = start + images.shape[0]
            if done * 10 / items.count > reported || done == items.count {
                reported = done * 10 / items.count
                log("latent cache: \(done)/\(items.count) encoded")
            }
        }
        try SafeTensors.write([SafeTensorsEntry(name: tensorName, dtype: .F32, shape: [dataset.count, variants] + entryShape, bytes: bytes)],
                              metadata: expected, to: url)
        return try LatentCache(url: url, kind: kind, count: dataset.count, variants: variants, entryShape: entryShape,
                               origin: .built(reason: reason))
    }

    /// image_size, the number of flips, and every image's path relative to the data folder, class and bytes.
    static func dataFingerprint(_ dataset: ImageFolderDataset, variants: Int) throws -> String {
        var f = Fingerprint()
        f.add("size \(dataset.size) variants \(variants) crop center count \(dataset.count)")
        let root = dataset.root.standardizedFileURL.path
        for (url, label) in dataset.files {
            var path = url.standardizedFileURL.path
            if path.hasPrefix(root) { path = String(path.dropFirst(root.count)) }
            f.add("\(path) \(label.map(String.init) ?? "-")")
            guard let data = FileManager.default.contents(atPath: url.path) else { throw TrainingError("cannot read \(url.path)") }
            f.add(data)
        }
        return f.hex
    }
}

extension LatentEncoder {
    /// What the cache keeps per image, or nil in pixel space.
    func cacheLayout(imageSize: Int) -> (LatentCache.Kind, [Int])? {
        switch self {
        case .identity: return nil
        case .kl(let m):
            let s = imageSize / m.downsamplingFactor
            return (.klMoments, [2 * m.config.latentChannels, s, s])
        case .vq(let m):
            let s = imageSize / m.downsamplingFactor
            return (.vqLatents, [m.config.embedDim, s, s])
        }
    }

    /// The outputs the cache keeps for images (B, 3, H, W): KL moments (B, 2C, h, w) or VQ latents (B, C, h, w).
    func cacheEntries(_ images: Tensor) throws -> Tensor {
        try GradMode.noGrad {
            switch self {
            case .identity: throw TrainingError("pixel-space training has no latents to cache")
            case .kl(let m): return try m.encode(images, tiled: .never).parameters
            case .vq(let m): return try m.encode(images)
            }
        }
    }

    /// The first stage's config and weights (names, shapes, float32 values).
    func fingerprint() throws -> String {
        var f = Fingerprint()
        let params: [(String, Tensor)]
        let encoderJSON = JSONEncoder()
        encoderJSON.outputFormatting = .sortedKeys
        switch self {
        case .identity: return "identity"
        case .kl(let m):
            f.add("AutoencoderKL")
            f.add(try encoderJSON.encode(m.config))
            params = m.namedParameters
        case .vq(let m):
            f.add("VQModel")
            f.add(try encoderJSON.encode(m.config))
            params = m.namedParameters
        }
        for (name, t) in params {
            f.add("\(name) \(t.shape)")
            let c = t.dtype == .float32 ? t.contiguous() : t.float32().contiguous()
            withExtendedLifetime(c) { f.add(bytes: UnsafeRawBufferPointer(start: c.data, count: c.count * 4)) }
        }
        return f.hex
    }
}

/// An image folder seen through its latent cache: the example's class and caption from the folder, its "image" the
/// cached first-stage output of the centre crop or (when the flip drawn from `generator` says so, as
/// ImageFolderDataset.example draws it) of its mirror image.
public final class CachedLatentDataset: TrainingDataset {
    public let cache: LatentCache
    public let source: ImageFolderDataset

    public init(cache: LatentCache, source: ImageFolderDataset) throws {
        guard cache.count == source.count, cache.variants == (source.randomFlip ? 2 : 1), !source.randomCrop else {
            throw TrainingError("the latent cache (\(cache.count) images x \(cache.variants) flips) does not fit the data set (\(source.count) images, random_flip \(source.randomFlip), random_crop \(source.randomCrop))")
        }
        self.cache = cache
        self.source = source
    }
    public var count: Int { source.count }
    public var classCount: Int? { source.classCount }

    public func example(at index: Int, generator: TorchGenerator) throws -> TrainingExample {
        guard (0..<count).contains(index) else { throw TrainingError("image index \(index) outside 0..<\(count)") }
        let flipped = source.randomFlip && ImageFolderDataset.drawsFlip(generator)
        return TrainingExample(image: try cache.entry(index, variant: flipped ? 1 : 0), classLabel: source.files[index].label,
                               caption: source.caption(at: index))
    }
}
