import Foundation

/// A reference-counted, 64-byte aligned buffer, or a borrowed region (a memory-mapped weights file) kept alive by `owner`.
public final class Storage: @unchecked Sendable {
    public let base: UnsafeMutableRawPointer
    public let byteCount: Int
    private let owner: AnyObject?
    private let owned: Bool

    public init(byteCount: Int, zeroed: Bool = false) {
        let n = max(byteCount, 64)
        let ptr: UnsafeMutableRawPointer
        if let reused = BufferCache.take(n) { ptr = reused }
        else {
            var p: UnsafeMutableRawPointer?
            guard posix_memalign(&p, 64, n) == 0, let fresh = p else { fatalError("Storage: cannot allocate \(byteCount) bytes") }
            ptr = fresh
        }
        if zeroed { memset(ptr, 0, n) }
        base = ptr; self.byteCount = byteCount; owner = nil; owned = true
    }

    /// Wraps memory that someone else owns (for example a mapped safetensors file); `owner` keeps it alive.
    public init(borrowing pointer: UnsafeMutableRawPointer, byteCount: Int, owner: AnyObject?) {
        base = pointer; self.byteCount = byteCount; self.owner = owner; owned = false
    }

    deinit { if owned && !BufferCache.give(base, max(byteCount, 64)) { free(base) } }

    @inline(__always) public func floats() -> UnsafeMutablePointer<Float> { base.assumingMemoryBound(to: Float.self) }
}

/// Keeps recently freed large buffers (>= 1 MiB) for reuse by the next allocation of the same size. Large blocks
/// come from mmap, so without this every activation of a model run page-faults its memory in afresh (seconds of
/// system time per VAE decode). Bounded by LDM_BUFFER_CACHE_MB (default 512).
enum BufferCache {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var free: [Int: [UnsafeMutableRawPointer]] = [:]
    nonisolated(unsafe) private static var cachedBytes = 0
    private static let limit: Int = (ProcessInfo.processInfo.environment["LDM_BUFFER_CACHE_MB"].flatMap { Int($0) } ?? 512) << 20
    private static let minimum = 1 << 20

    static func take(_ n: Int) -> UnsafeMutableRawPointer? {
        guard n >= minimum else { return nil }
        lock.lock(); defer { lock.unlock() }
        guard let p = free[n]?.popLast() else { return nil }
        cachedBytes -= n
        return p
    }
    static func give(_ p: UnsafeMutableRawPointer, _ n: Int) -> Bool {
        guard n >= minimum else { return false }
        lock.lock(); defer { lock.unlock() }
        guard cachedBytes + n <= limit else { return false }
        free[n, default: []].append(p); cachedBytes += n
        return true
    }
}
