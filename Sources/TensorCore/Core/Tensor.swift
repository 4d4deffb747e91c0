// The tensor value: storage + shape + strides + offset + dtype, with the autograd fields of torch.Tensor
// (requires_grad, grad, grad_fn). Views (reshape, permute, narrow, expand) share storage as in PyTorch.

public final class Tensor: CustomStringConvertible {
    // Variables only for `rebind(to:)` (a parameter given the bytes of a loaded or merged tensor in place of a copy).
    public private(set) var storage: Storage
    public let shape: [Int]
    public private(set) var strides: [Int]
    public private(set) var offset: Int
    public private(set) var dtype: DType

    /// Leaf tensors that want gradients (parameters) set this; results of ops inherit it through `gradFn`.
    public var requiresGrad: Bool
    public var grad: Tensor?
    public internal(set) var gradFn: GradNode?
    /// Bumped by in-place updates (optimizer steps) so caches of reordered weights know they are stale.
    public internal(set) var version: Int = 0
    /// A backend's private copy of this tensor in another layout (reordered conv weights), valid for `version`.
    var layoutCache: (key: String, version: Int, storage: Storage)?
    /// For a parameter that an inference load converted from a memory-mapped weights file: where its copy came from,
    /// so that the copy can be released and made again (`WeightSource`). nil for every other tensor.
    public var weightSource: WeightSource?

    public init(storage: Storage, shape: [Int], strides: [Int]? = nil, offset: Int = 0, dtype: DType = .float32) {
        self.storage = storage
        self.shape = shape
        self.strides = strides ?? Tensor.contiguousStrides(shape)
        self.offset = offset
        self.dtype = dtype
        self.requiresGrad = false
    }

    public static func contiguousStrides(_ shape: [Int]) -> [Int] {
        var s = [Int](repeating: 1, count: shape.count)
        var acc = 1
        for i in stride(from: shape.count - 1, through: 0, by: -1) {
            s[i] = acc
            acc *= Swift.max(shape[i], 1)
        }
        return s
    }

    public var rank: Int { shape.count }
    public var count: Int { shape.reduce(1, *) }
    public func size(_ axis: Int) -> Int { shape[normalize(axis)] }
    public var isContiguous: Bool {
        var acc = 1
        for i in stride(from: shape.count - 1, through: 0, by: -1) where shape[i] != 1 {
            if strides[i] != acc { return false }
            acc *= shape[i]
        }
        return true
    }
    @inline(__always) public func normalize(_ axis: Int) -> Int {
        let a = axis < 0 ? axis + rank : axis
        precondition(a >= 0 && a < Swift.max(rank, 1), "axis \(axis) out of range for shape \(shape)")
        return a
    }

    /// Pointer to the first element of a float32 tensor.
    public var data: UnsafeMutablePointer<Float> {
        precondition(dtype == .float32, "data: tensor is \(dtype), not float32")
        return storage.floats() + offset
    }

    // MARK: creation

    public convenience init(zeros shape: [Int], dtype: DType = .float32) {
        let n = shape.reduce(1, *)
        self.init(storage: Storage(byteCount: n * dtype.byteSize, zeroed: true), shape: shape, dtype: dtype)
    }
    /// Uninitialised float32 tensor for kernels that overwrite every element.
    public static func empty(_ shape: [Int]) -> Tensor {
        Tensor(storage: Storage(byteCount: shape.reduce(1, *) * 4), shape: shape)
    }
    public convenience init(_ values: [Float], shape: [Int]) {
        precondition(values.count == shape.reduce(1, *), "Tensor(values:shape:): \(values.count) values for shape \(shape)")
        self.init(storage: Storage(byteCount: values.count * 4), shape: shape)
        values.withUnsafeBufferPointer { src in if let b = src.baseAddress { data.update(from: b, count: values.count) } }
    }
    public convenience init(scalar: Float) { self.init([scalar], shape: []) }
    public static func full(_ value: Float, _ shape: [Int]) -> Tensor {
        let t = empty(shape)
        t.data.update(repeating: value, count: t.count)
        return t
    }
    public static func ones(_ shape: [Int]) -> Tensor { full(1, shape) }
    public static func arange(_ n: Int) -> Tensor { Tensor((0..<n).map(Float.init), shape: [n]) }

    /// A parameter: a leaf that requires gradients.
    public func requiringGrad(_ flag: Bool = true) -> Tensor {
        requiresGrad = flag
        return self
    }

    // MARK: reading

    /// All elements in row-major order as float32 (converting storage types, following strides).
    public func toArray() -> [Float] {
        let c = contiguous().float32()
        return Array(UnsafeBufferPointer(start: c.data, count: c.count))
    }
    public var item: Float {
        precondition(count == 1, "item: tensor of shape \(shape) has \(count) elements")
        return toArray()[0]
    }

    public var description: String {
        let vals = count <= 16 ? toArray().map { "\($0)" }.joined(separator: ", ") : "\(count) values"
        return "Tensor(\(shape), \(dtype)\(requiresGrad ? ", requiresGrad" : ""): [\(vals)])"
    }

    /// Marks an in-place update (optimizer step, weight load).
    public func bumpVersion() { version &+= 1 }

    /// Makes this tensor (a parameter) refer to `other`'s elements, storage, layout and dtype, instead of copying
    /// them (`assign`): how inference loads keep a memory-mapped file's bytes or a 16-bit weight as stored, and how a
    /// merged LoRA replaces a weight. Shapes must agree; autograd flags stay; cached layouts are dropped.
    public func rebind(to other: Tensor) {
        precondition(other.shape == shape, "rebind: shape \(other.shape) for a tensor of shape \(shape)")
        storage = other.storage
        strides = other.strides
        offset = other.offset
        dtype = other.dtype
        layoutCache = nil
        bumpVersion()
    }

    /// A new tensor over the same elements (no autograd history): what `rebind(to:)` can restore later.
    public func alias() -> Tensor { Tensor(storage: storage, shape: shape, strides: strides, offset: offset, dtype: dtype) }
}

/// The file bytes a converted parameter was made from (a read-only mapping, float32 or 16-bit as stored) and the dtype
/// it was converted to. A process that is done with a model for now rebinds the parameter to `source` (its copy is
/// freed; the values are still there, as stored) and converts it again before the next use, with the same conversion,
/// so the restored copy is bit for bit the one the load made (NeuralNetwork's `Module.releaseConvertedWeights`).
public final class WeightSource {
    /// The file's tensor, in place in its mapping.
    public let source: Tensor
    /// What the load converted `source` to.
    public let dtype: DType
    /// The converted copy the parameter holds (while it holds it) and the parameter's `version` then: a parameter
    /// bound to anything else since (a merged LoRA weight) or updated in place is not released.
    public private(set) weak var converted: Storage?
    public private(set) var version: Int

    public init(source: Tensor, dtype: DType, convertedInto parameter: Tensor) {
        self.source = source
        self.dtype = dtype
        converted = parameter.storage
        version = parameter.version
    }

    /// `parameter` holds the conversion of `source` (again).
    public func holds(_ parameter: Tensor) {
        converted = parameter.storage
        version = parameter.version
    }

    /// Whether `parameter` still holds the copy converted from `source`, unchanged.
    public func isHeld(by parameter: Tensor) -> Bool { converted === parameter.storage && version == parameter.version }
}
