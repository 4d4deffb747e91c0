// Matches diffusers VectorQuantizer (models/autoencoders/vae.py) = taming-transformers VectorQuantizer2 (used by
// CompVis ldm/models/autoencoder.py VQModel): nearest codebook entry, commitment loss with `beta` (`legacy` decides
// which term beta weighs), straight-through estimator, optional `remap` to a subset of used codes, sane_index_shape.
import NeuralNetwork
import TensorCore

public final class VectorQuantizer: Module {
    /// What a code outside the `remap` subset becomes: a random used index, one extra index, or a fixed index.
    public enum UnknownIndex: Equatable, Sendable { case random, extra, index(Int) }

    public struct Output {
        /// Straight-through quantized latents (B, D, H, W): forward values are the codebook entries.
        public let quantized: Tensor
        /// Commitment + codebook loss (a scalar).
        public let loss: Tensor
        /// Code indices (remapped when `remap` is set), row-major over (B, H, W).
        public let indices: [Int]
        /// diffusers' shape of the index tensor: (B, H, W) with sane_index_shape, else (N, 1) with remap, else (N,).
        public let indexShape: [Int]
    }

    public let numEmbeddings: Int
    public let embedDim: Int
    public let beta: Float
    public let legacy: Bool
    public let embedding: Embedding
    /// The used codes of `remap` (the contents of taming's .npy file), or nil.
    public let used: [Int]?
    public let unknownIndex: UnknownIndex
    /// Size of the (remapped) index space.
    public let reEmbed: Int
    public let saneIndexShape: Bool

    public init(numEmbeddings: Int, embedDim: Int, beta: Float = 0.25, remap used: [Int]? = nil, unknownIndex: UnknownIndex = .random,
                saneIndexShape: Bool = false, legacy: Bool = true) throws {
        guard numEmbeddings > 0, embedDim > 0 else { throw AutoencoderError("VectorQuantizer needs a positive codebook size, got \(numEmbeddings) x \(embedDim)") }
        self.numEmbeddings = numEmbeddings
        self.embedDim = embedDim
        self.beta = beta
        self.legacy = legacy
        self.saneIndexShape = saneIndexShape
        embedding = Embedding(numEmbeddings, embedDim)
        self.used = used
        if let used {
            guard !used.isEmpty else { throw AutoencoderError("VectorQuantizer remap: the list of used codes is empty") }
            // Codes >= numEmbeddings are accepted as taming does (they are never matched); they fail in codebookEntry.
            if let bad = used.first(where: { $0 < 0 }) { throw AutoencoderError("VectorQuantizer remap: used code \(bad) is negative") }
            switch unknownIndex {
            case .extra:
                self.unknownIndex = .index(used.count)
                reEmbed = used.count + 1
            case .index(let i):
                guard i >= 0 else { throw AutoencoderError("VectorQuantizer remap: unknown index \(i) is negative") }
                self.unknownIndex = unknownIndex
                reEmbed = used.count
            case .random:
                self.unknownIndex = .random
                reEmbed = used.count
            }
        } else {
            self.unknownIndex = unknownIndex
            reEmbed = numEmbeddings
        }
    }

    public var namedParameters: [(String, Tensor)] { scoped("embedding", embedding) }

    /// Index of the nearest codebook entry (first one on ties, as torch.argmin) for every row of `flat` (N, D),
    /// by ||z||^2 + ||e||^2 - 2 z.e.
    public func nearestCodes(_ flat: Tensor) -> [Int] {
        let e = embedding.weight.detach()
        let dots = matmul(flat.detach(), e.transposed()).contiguous()            // (N, K)
        let eNorm = e.square().sum(axes: [1]).toArray()
        let zNorm = flat.detach().square().sum(axes: [1]).toArray()
        let k = numEmbeddings
        return withExtendedLifetime(dots) {
            let p = dots.data
            return zNorm.indices.map { n in
                var best = Float.infinity, bi = 0
                for j in 0..<k {
                    let d = zNorm[n] + eNorm[j] - 2 * p[n * k + j]
                    if d < best {
                        best = d
                        bi = j
                    }
                }
                return bi
            }
        }
    }

    /// Quantizes z (B, D, H, W). `generator` draws the random replacements of unknown codes under
    /// `remap` + `.random` (torch.randint(0, re_embed) on the global generator in the reference; a fresh
    /// TorchGenerator with torch's default seed when nil).
    public func callAsFunction(_ z: Tensor, generator: TorchGenerator? = nil) throws -> Output {
        guard z.rank == 4, z.shape[1] == embedDim else {
            throw AutoencoderError("VectorQuantizer: latents \(z.shape) must be (B, \(embedDim), H, W)")
        }
        let (b, h, w) = (z.shape[0], z.shape[2], z.shape[3])
        let zp = z.permuted([0, 2, 3, 1]).contiguous()                               // (B, H, W, D)
        var codes = nearestCodes(zp.reshaped([-1, embedDim]))
        let zq = embedding(codes, shape: [b, h, w])                                  // (B, H, W, D)
        let commitment = mseLoss(zq.detach(), zp), codebook = mseLoss(zq, zp.detach())
        let loss = legacy ? commitment + codebook * beta : commitment * beta + codebook
        let straight = zp + (zq - zp).detach()
        let quantized = straight.permuted([0, 3, 1, 2]).contiguous()
        var indexShape = [codes.count]
        if used != nil {
            codes = try remapToUsed(codes, generator: generator)
            indexShape = [codes.count, 1]
        }
        if saneIndexShape { indexShape = [b, h, w] }
        return Output(quantized: quantized, loss: loss, indices: codes, indexShape: indexShape)
    }

    /// Codebook indices -> positions in `used` (taming remap_to_used); unknown codes handled per `unknownIndex`.
    public func remapToUsed(_ codes: [Int], generator: TorchGenerator? = nil) throws -> [Int] {
        guard let used else { return codes }
        var position: [Int: Int] = [:]
        for (j, u) in used.enumerated() where position[u] == nil { position[u] = j }
        var out = codes.map { position[$0] ?? -1 }
        let unknown = out.indices.filter { out[$0] < 0 }
        guard !unknown.isEmpty else { return out }
        switch unknownIndex {
        case .random:
            let g = generator ?? TorchGenerator()
            let draws = try g.randomInt(low: 0, upperBound: Int64(reEmbed), count: unknown.count)
            for (i, d) in zip(unknown, draws) { out[i] = Int(d) }
        case .index(let u):
            for i in unknown { out[i] = u }
        case .extra:
            for i in unknown { out[i] = used.count }
        }
        return out
    }

    /// Remapped indices -> codebook indices (taming unmap_to_all): the extra index maps to used[0].
    public func unmapToAll(_ indices: [Int]) throws -> [Int] {
        guard let used else { return indices }
        return try indices.map { i in
            let j = reEmbed > used.count && i >= used.count ? 0 : i
            guard j >= 0 && j < used.count else { throw AutoencoderError("VectorQuantizer: index \(i) outside the \(used.count) used codes") }
            return used[j]
        }
    }

    /// Codebook entries for `indices` laid out as (B, H, W, D) and returned as (B, D, H, W) (get_codebook_entry).
    public func codebookEntry(_ indices: [Int], shape: [Int]) throws -> Tensor {
        guard shape.count == 4, shape[3] == embedDim, shape.reduce(1, *) == indices.count * embedDim else {
            throw AutoencoderError("VectorQuantizer: shape \(shape) does not hold \(indices.count) codes of size \(embedDim)")
        }
        let codes = try unmapToAll(indices)
        if let bad = codes.first(where: { $0 < 0 || $0 >= numEmbeddings }) {
            throw AutoencoderError("VectorQuantizer: code \(bad) outside the codebook of \(numEmbeddings)")
        }
        return embedding(codes, shape: Array(shape.prefix(3))).permuted([0, 3, 1, 2]).contiguous()
    }
}
