import Checkpoints
import TensorCore

// How a load keeps the weights it reads. Training needs owned float32 master weights; inference does not, and a whole
// SD-1.5 image held every weight twice at its peak (the float32 copy and the mapped file's pages it was read from).
// For inference the parameters take the file's bytes in place where they can (safetensors is memory-mapped, as
// safetensors' `safe_open` and torch's `mmap=True` load): float32 tensors stay float32; 16-bit Linear and Conv2d
// weights become float32 once (`mapped`: float32 compute at its usual speed), or stay in the file's 16-bit type
// (`asStored`: half the memory; the ops widen them per call, about 1.5x the UNet's time on a Zen 4, and the float32
// results are exactly those of the converted weights), or become bf16 for bf16 compute (`bfloat16`: what
// `model.to(torch.bfloat16)` holds; autocast rounds weights to bf16 anyway, so the numbers do not change). Whatever is
// converted is converted once, and the file's pages it came from are dropped as soon as it is
// (`TensorRecord.releasePages`), so no weight is resident twice.

/// The storage `Module.load` gives the parameters it loads (`WeightStorage.current`, set for a scope with `with`).
public enum WeightStorage: String, Sendable, CaseIterable {
    /// Every parameter an owned float32 copy (training; the default).
    case float32
    /// Inference in float32: float32 parameters in place in the mapped file when it is one (and aligned); 16-bit ones
    /// converted to owned float32 once.
    case mapped
    /// Inference: float32 parameters and 16-bit Linear/Conv2d/Embedding weights as the file stores them, in place in
    /// the mapped file when it is one and aligned; other 16-bit parameters (biases, norms) converted to float32.
    case asStored
    /// Inference at bf16 compute: as `mapped`, with every Linear/Conv2d weight in bfloat16.
    case bfloat16

    @TaskLocal public static var current: WeightStorage = .float32

    /// Runs `body` (loads) with `storage` as the current policy.
    public static func with<T>(_ storage: WeightStorage, _ body: () throws -> T) rethrows -> T {
        try $current.withValue(storage, operation: body)
    }

    /// The inference policy for compute in `dtype` (the resolved `ComputePrecision`): `bfloat16` or `mapped`.
    public static func inference(computing dtype: DType) -> WeightStorage { dtype == .bfloat16 ? .bfloat16 : .mapped }
}

extension Tensor {
    /// Loads record `r` (same element count) into this parameter under `storage`. `lowerPrecision`: the parameter is
    /// a Linear or Conv2d weight (may stay 16-bit).
    public func load(_ r: TensorRecord, storage: WeightStorage, lowerPrecision: Bool) throws {
        guard storage != .float32 else {
            assign(try r.tensor().reshaped(shape))
            r.releasePages()
            return
        }
        let stored: DType? = r.dtype == .F32 ? .float32 : r.dtype == .BF16 ? .bfloat16 : r.dtype == .F16 ? .float16 : nil
        let want: DType = !lowerPrecision || storage == .mapped ? .float32 : storage == .bfloat16 ? .bfloat16 : stored ?? .float32
        // The record's bytes as a tensor without a copy (float32, bf16, f16 in a buffer already in memory).
        var inPlace: Tensor?
        if let stored, let (p, owner, mapped) = try r.bytesInPlace(), Int(bitPattern: p) % stored.byteSize == 0 {
            let bytes = Storage(borrowing: UnsafeMutableRawPointer(mutating: p), byteCount: r.byteCount, owner: owner, fileMapping: mapped)
            inPlace = Tensor(storage: bytes, shape: shape, dtype: stored)
        }
        weightSource = nil
        if let t = inPlace, t.dtype == want {
            rebind(to: t)
            return
        }
        let copy = try (inPlace ?? r.tensor()).to(want).contiguous().reshaped(shape)
        rebind(to: copy)
        // A Linear/Conv2d weight converted from a mapping can be released and made again (the ops take it as stored).
        if lowerPrecision, let t = inPlace, t.storage.isFileMapping { weightSource = WeightSource(source: t, dtype: want, convertedInto: self) }
        r.releasePages()
    }

    /// The conversion `load` made, made again from `source` (same op, same bits).
    static func convertedCopy(_ source: WeightSource) -> Tensor { source.source.to(source.dtype).contiguous() }
}

extension Module {
    /// The Linear and Conv2d weights reachable from this module (what may be held in 16 bits), by identity; with
    /// `embeddings`, the Embedding tables too (their op widens the table per call; they are not bf16 ops).
    public func lowerPrecisionWeights(embeddings: Bool = false) -> Set<ObjectIdentifier> {
        var out = Set<ObjectIdentifier>()
        forEachLayer { module in
            if let l = module as? Linear { out.insert(ObjectIdentifier(l.weight)) }
            else if let c = module as? Conv2d { out.insert(ObjectIdentifier(c.weight)) }
            else if embeddings, let e = module as? Embedding { out.insert(ObjectIdentifier(e.weight)) }
        }
        return out
    }

    /// Drops the resident pages of the parameters that are views of a memory-mapped weights file (see
    /// `Storage.evictResidentPages`): for a model that will not run again soon (the text encoder once the prompt is
    /// encoded, the UNet once the denoising loop is over, in a one-image process). Values never change; the next use
    /// reads them back from the page cache. Owned parameters are untouched.
    public func evictMappedWeights() {
        for (_, t) in namedParameters where t.storage.isFileMapping { t.storage.evictResidentPages() }
    }

    /// Frees the owned copies an inference load converted from a memory-mapped file (the bf16 Linear/Conv2d weights
    /// of a bf16-compute load, the float32 ones of a 16-bit file at float32 compute): each such parameter is rebound to
    /// the file's bytes it came from (still its values, as the file stores them; Linear and Conv2d take 16-bit and
    /// float32 weights alike) and their resident pages are dropped. For a model that will not run again soon (the UNet
    /// during the VAE decode of a one-image process); `restoreConvertedWeights` makes the copies again before the next
    /// use. Weights merged with a LoRA (or otherwise rebound since) stay. Returns the bytes freed.
    @discardableResult
    public func releaseConvertedWeights() -> Int {
        var freed = 0
        for (_, t) in namedParameters {
            guard let s = t.weightSource, s.isHeld(by: t) else { continue }
            freed += t.count * t.dtype.byteSize
            t.rebind(to: s.source)
            s.source.storage.evictResidentPages()
        }
        return freed
    }

    /// Makes again the copies `releaseConvertedWeights` freed, by the load's own conversion (bit for bit the same
    /// weights), and drops the file pages read for it. Parameters that were not released are untouched. Returns the
    /// bytes made again.
    @discardableResult
    public func restoreConvertedWeights() -> Int {
        var made = 0
        for (_, t) in namedParameters {
            guard let s = t.weightSource, s.source.storage === t.storage else { continue }
            let copy = Tensor.convertedCopy(s)
            t.rebind(to: copy)
            s.holds(t)
            s.source.storage.evictResidentPages()
            made += copy.count * copy.dtype.byteSize
        }
        return made
    }

    /// Calls `body` with every module reachable from this one (through stored properties of modules, structs,
    /// tuples, optionals and arrays of those), each once.
    func forEachLayer(_ body: (Module) -> Void) {
        var seen = Set<ObjectIdentifier>()
        func visit(_ value: Any) {
            var mirror: Mirror? = Mirror(reflecting: value)
            switch mirror!.displayStyle {
            case .class?:
                guard let module = value as? Module, seen.insert(ObjectIdentifier(module)).inserted else { return }
                body(module)
            case .optional?, .struct?, .tuple?, .enum?: break
            case .collection?:
                // Arrays of modules (or of optionals/arrays of them); never walk the elements of a numeric array.
                guard let first = mirror!.children.first?.value else { return }
                switch Mirror(reflecting: first).displayStyle {
                case .class?: guard first is Module else { return }
                case .optional?, .struct?, .tuple?, .collection?: break
                default: return // numbers, strings: nothing to find
                }
            default: return
            }
            while let m = mirror {
                for child in m.children { visit(child.value) }
                mirror = m.superclassMirror
            }
        }
        visit(self)
    }
}
