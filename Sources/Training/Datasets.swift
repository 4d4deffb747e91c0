// Training data, after the torchvision transforms of diffusers examples/text_to_image (Resize(size) of the shorter
// side, RandomCrop / CenterCrop, RandomHorizontalFlip, ToTensor, Normalize([0.5], [0.5])) and torchvision
// ImageFolder (class = sorted sub-folder index). Captions come from a .txt file beside each image.
// Randomness is a pure function of (seed, epoch, index): each epoch's order is a Fisher-Yates shuffle drawn from
// TorchGenerator(seed: mix(seed, epoch)), each example's crop/flip from TorchGenerator(seed: mix(seed, epoch, index)),
// so a resumed run sees exactly the batches an uninterrupted one would. Because a batch is a pure function of
// (epoch, index), the background loader (BatchLoader.swift) can prepare the next one while a step runs and still hand
// out exactly the batches of the synchronous path. Datasets therefore build their tensors from plain arrays
// (no TensorCore kernels, which would start a second OpenMP team off the training thread, and no autograd views).
import Foundation
import Imaging
import TensorCore

public struct TrainingExample {
    /// (C, H, W): pixels in [-1, 1], or latents when the trainer has no first stage.
    public var image: Tensor
    public var classLabel: Int?
    public var caption: String?
    public init(image: Tensor, classLabel: Int? = nil, caption: String? = nil) {
        self.image = image
        self.classLabel = classLabel
        self.caption = caption
    }
}

public protocol TrainingDataset: AnyObject {
    var count: Int { get }
    /// Number of classes, when examples carry class labels.
    var classCount: Int? { get }
    /// The example at `index`, its augmentation drawn from `generator` only. Called from the loader's background
    /// thread while the training thread runs a step: it must not change shared state, and should build its tensor
    /// from an array (`Tensor(values, shape:)`) rather than with tensor ops.
    func example(at index: Int, generator: TorchGenerator) throws -> TrainingExample
}

/// A batch of examples stacked on a new first axis.
public struct TrainingBatch {
    public var images: Tensor
    public var classLabels: [Int]?
    public var captions: [String]?
}

/// In-memory tensors (N, C, H, W) with optional labels (tests, pre-computed latents).
public final class TensorDataset: TrainingDataset {
    public let images: Tensor
    public let labels: [Int]?
    public let classCount: Int?
    public init(images: Tensor, labels: [Int]? = nil, classCount: Int? = nil) throws {
        guard images.rank == 4, images.shape[0] > 0 else { throw TrainingError("TensorDataset needs (N, C, H, W) images, got \(images.shape)") }
        if let labels, labels.count != images.shape[0] { throw TrainingError("TensorDataset: \(labels.count) labels for \(images.shape[0]) images") }
        self.images = images.float32().contiguous()
        self.labels = labels
        self.classCount = classCount ?? labels.map { ($0.max() ?? 0) + 1 }
    }
    public var count: Int { images.shape[0] }
    public func example(at index: Int, generator: TorchGenerator) throws -> TrainingExample {
        guard (0..<count).contains(index) else { throw TrainingError("TensorDataset index \(index) outside 0..<\(count)") }
        let n = images.count / count
        let values = withExtendedLifetime(images) { Array(UnsafeBufferPointer(start: images.data + index * n, count: n)) }
        return TrainingExample(image: Tensor(values, shape: Array(images.shape.dropFirst())), classLabel: labels?[index])
    }
}

/// A folder of PNG / JPEG images; with sub-folders, each sub-folder is a class (sorted names, as ImageFolder).
public final class ImageFolderDataset: TrainingDataset {
    public let root: URL
    public let size: Int
    public let randomCrop: Bool, randomFlip: Bool
    public let classNames: [String]
    public let files: [(url: URL, label: Int?)]
    public var classCount: Int? { classNames.isEmpty ? nil : classNames.count }
    public var count: Int { files.count }
    static let extensions: Set<String> = ["png", "jpg", "jpeg"]

    public init(root: URL, size: Int, randomCrop: Bool = true, randomFlip: Bool = true) throws {
        guard size > 0, size <= maxImageDimension else { throw TrainingError("image size \(size) must be in 1...\(maxImageDimension)") }
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: root.path, isDirectory: &isDir), isDir.boolValue else {
            throw TrainingError("data dir \(root.path) does not exist or is not a folder")
        }
        func images(in dir: URL) throws -> [URL] {
            try FileManager.default.contentsOfDirectory(at: dir, includingPropertiesForKeys: nil)
                .filter { Self.extensions.contains($0.pathExtension.lowercased()) }
                .sorted { $0.lastPathComponent < $1.lastPathComponent }
        }
        let subdirs = try FileManager.default.contentsOfDirectory(at: root, includingPropertiesForKeys: [.isDirectoryKey])
            .filter { (try? $0.resourceValues(forKeys: [.isDirectoryKey]).isDirectory) == true && !$0.lastPathComponent.hasPrefix(".") }
            .sorted { $0.lastPathComponent < $1.lastPathComponent }
        var files: [(URL, Int?)] = []
        var names: [String] = []
        if subdirs.isEmpty {
            files = try images(in: root).map { ($0, nil) }
        } else {
            for dir in subdirs {
                let found = try images(in: dir)
                guard !found.isEmpty else { continue }
                files += found.map { ($0, names.count) }
                names.append(dir.lastPathComponent)
            }
        }
        guard !files.isEmpty else { throw TrainingError("data dir \(root.path) holds no .png / .jpg / .jpeg images") }
        self.root = root
        self.size = size
        self.randomCrop = randomCrop
        self.randomFlip = randomFlip
        self.files = files.map { (url: $0.0, label: $0.1) }
        classNames = names
    }

    /// torchvision Resize(size) + RandomCrop / CenterCrop + RandomHorizontalFlip: the crop offsets (randint for the
    /// top, then the left) and the flip (rand < 0.5) come from `generator`, in that order.
    public func example(at index: Int, generator: TorchGenerator) throws -> TrainingExample {
        guard (0..<count).contains(index) else { throw TrainingError("image index \(index) outside 0..<\(count)") }
        var img = try resizedImage(at: index)
        var top = (img.height - size) / 2, left = (img.width - size) / 2
        if randomCrop {
            top = Int(try generator.randomInt(upperBound: Int64(img.height - size + 1), count: 1)[0])
            left = Int(try generator.randomInt(upperBound: Int64(img.width - size + 1), count: 1)[0])
        }
        img = try img.cropped(left: left, top: top, width: size, height: size)
        if randomFlip, Self.drawsFlip(generator) { img = flippedHorizontally(img) }
        return TrainingExample(image: Tensor(VaeImageProcessor.toTensor(img), shape: [3, size, size]), classLabel: files[index].label,
                               caption: caption(at: index))
    }

    /// RandomHorizontalFlip's draw: torch.rand(1) < 0.5.
    static func drawsFlip(_ generator: TorchGenerator) -> Bool { generator.uniform(count: 1)[0] < 0.5 }

    /// The centre-cropped image, flipped or not, without drawing anything (the latent cache encodes both).
    public func centeredExample(at index: Int, flipped: Bool) throws -> TrainingExample {
        guard (0..<count).contains(index) else { throw TrainingError("image index \(index) outside 0..<\(count)") }
        var img = try resizedImage(at: index)
        img = try img.cropped(left: (img.width - size) / 2, top: (img.height - size) / 2, width: size, height: size)
        if flipped { img = flippedHorizontally(img) }
        return TrainingExample(image: Tensor(VaeImageProcessor.toTensor(img), shape: [3, size, size]), classLabel: files[index].label,
                               caption: caption(at: index))
    }

    /// The caption file beside the image (trimmed), if there is one.
    public func caption(at index: Int) -> String? {
        let url = files[index].url.deletingPathExtension().appendingPathExtension("txt")
        return (try? String(contentsOf: url, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Resize(size, BILINEAR): the shorter side becomes `size`.
    func resizedImage(at index: Int) throws -> RGBImage {
        let img = try ImageIO.loadRGB(path: files[index].url.path)
        let s = Double(size) / Double(min(img.width, img.height))
        let w = max(size, Int((Double(img.width) * s).rounded())), h = max(size, Int((Double(img.height) * s).rounded()))
        return w != img.width || h != img.height ? try img.resized(width: w, height: h, filter: .bilinear) : img
    }

    func flippedHorizontally(_ img: RGBImage) -> RGBImage {
        var out = img
        for y in 0..<img.height {
            for x in 0..<img.width {
                let src = 3 * (y * img.width + img.width - 1 - x), dst = 3 * (y * img.width + x)
                for c in 0..<3 { out.pixels[dst + c] = img.pixels[src + c] }
            }
        }
        return out
    }
}

/// Deterministic epoch order and batching (drop_last, as the CompVis / diffusers loaders are usually configured).
public struct BatchSampler {
    public let dataset: TrainingDataset
    public let batchSize: Int
    public let seed: UInt64

    public init(dataset: TrainingDataset, batchSize: Int, seed: UInt64) throws {
        guard batchSize > 0 else { throw TrainingError("batch_size must be positive, got \(batchSize)") }
        guard dataset.count >= batchSize else { throw TrainingError("dataset has \(dataset.count) examples, fewer than batch_size \(batchSize)") }
        self.dataset = dataset
        self.batchSize = batchSize
        self.seed = seed
    }

    public var batchesPerEpoch: Int { dataset.count / batchSize }

    /// splitmix64 of the values, so nearby (seed, epoch, index) give unrelated generators.
    static func mix(_ values: UInt64...) -> UInt64 {
        var h: UInt64 = 0x9E37_79B9_7F4A_7C15
        for v in values {
            var z = h ^ v &+ 0x9E37_79B9_7F4A_7C15
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            h = z ^ (z >> 31)
        }
        return h
    }

    public func order(epoch: Int) throws -> [Int] {
        let g = TorchGenerator(seed: Self.mix(seed, UInt64(epoch)))
        var idx = Array(0..<dataset.count)
        for i in stride(from: idx.count - 1, to: 0, by: -1) {
            let j = Int(try g.randomInt(upperBound: Int64(i + 1), count: 1)[0])
            idx.swapAt(i, j)
        }
        return idx
    }

    public func batch(epoch: Int, index: Int) throws -> TrainingBatch {
        try batch(epoch: epoch, index: index, shard: .whole(batchSize))
    }

    /// The `shard` rows of batch `index` (data-parallel training: each rank loads only its own examples; an example's
    /// augmentation depends on (seed, epoch, example) only, so it is the same whichever rank loads it).
    public func batch(epoch: Int, index: Int, shard: BatchShard) throws -> TrainingBatch {
        guard (0..<batchesPerEpoch).contains(index) else { throw TrainingError("batch \(index) outside 0..<\(batchesPerEpoch)") }
        guard shard.globalBatch == batchSize else { throw TrainingError("a shard of a \(shard.globalBatch)-batch for a \(batchSize)-batch sampler") }
        let ids = try order(epoch: epoch)[index * batchSize ..< (index + 1) * batchSize].dropFirst(shard.range.lowerBound).prefix(shard.localBatch)
        let examples = try ids.map { try dataset.example(at: $0, generator: TorchGenerator(seed: Self.mix(seed, UInt64(epoch), UInt64($0), 1))) }
        let labels = examples.compactMap(\.classLabel), captions = examples.compactMap(\.caption)
        return TrainingBatch(images: try stackExamples(examples.map(\.image)),
                             classLabels: labels.count == examples.count ? labels : nil,
                             captions: captions.count == examples.count ? captions : nil)
    }

    /// The (epoch, batch) that follows `(epoch, index)`.
    public func position(after epoch: Int, _ index: Int) -> (epoch: Int, index: Int) {
        index + 1 == batchesPerEpoch ? (epoch + 1, 0) : (epoch, index + 1)
    }
}

/// torch.stack on a new first axis by plain copies (no kernel, no autograd: safe on the loader thread).
func stackExamples(_ images: [Tensor]) throws -> Tensor {
    guard let shape = images.first?.shape else { throw TrainingError("an empty batch") }
    guard images.allSatisfy({ $0.shape == shape }) else { throw TrainingError("examples in a batch have different shapes") }
    let n = shape.reduce(1, *)
    var values = [Float](repeating: 0, count: n * images.count)
    values.withUnsafeMutableBufferPointer { dst in
        for (i, t) in images.enumerated() {
            if t.dtype == .float32 && t.isContiguous {
                withExtendedLifetime(t) { (dst.baseAddress! + i * n).update(from: t.data, count: n) }
            } else {
                let v = t.toArray()
                for j in 0..<n { dst[i * n + j] = v[j] }
            }
        }
    }
    return Tensor(values, shape: [images.count] + shape)
}
