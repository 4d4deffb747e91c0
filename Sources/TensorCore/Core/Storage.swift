import Foundation

/// A reference-counted, 64-byte aligned buffer, or a borrowed region (a memory-mapped weights file) kept alive by `owner`.
public final class Storage: @unchecked Sendable {
    public let base: UnsafeMutableRawPointer
    public let byteCount: Int
    private let owner: AnyObject?
    private let owned: Bool

    public init(byteCount: Int, zeroed: Bool = false) {
        var p: UnsafeMutableRawPointer?
        let n = max(byteCount, 64)
        guard posix_memalign(&p, 64, n) == 0, let ptr = p else { fatalError("Storage: cannot allocate \(byteCount) bytes") }
        if zeroed { memset(ptr, 0, n) }
        base = ptr; self.byteCount = byteCount; owner = nil; owned = true
    }

    /// Wraps memory that someone else owns (for example a mapped safetensors file); `owner` keeps it alive.
    public init(borrowing pointer: UnsafeMutableRawPointer, byteCount: Int, owner: AnyObject?) {
        base = pointer; self.byteCount = byteCount; self.owner = owner; owned = false
    }

    deinit { if owned { free(base) } }

    @inline(__always) public func floats() -> UnsafeMutablePointer<Float> { base.assumingMemoryBound(to: Float.self) }
}
