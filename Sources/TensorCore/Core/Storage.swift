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
        if n >= BufferCache.minimum {
            let (p, fresh) = BufferCache.allocate(n)
            ptr = p
            if zeroed && !fresh { memset(ptr, 0, n) } // fresh pages from mmap are already zero
        } else {
            var p: UnsafeMutableRawPointer?
            guard posix_memalign(&p, 64, n) == 0, let fresh = p else { fatalError("Storage: cannot allocate \(byteCount) bytes") }
            ptr = fresh
            if zeroed { memset(ptr, 0, n) }
        }
        base = ptr; self.byteCount = byteCount; owner = nil; owned = true
    }

    /// Wraps memory that someone else owns (for example a mapped safetensors file); `owner` keeps it alive.
    public init(borrowing pointer: UnsafeMutableRawPointer, byteCount: Int, owner: AnyObject?) {
        base = pointer; self.byteCount = byteCount; self.owner = owner; owned = false
    }

    deinit {
        guard owned else { return }
        let n = max(byteCount, 64)
        if n >= BufferCache.minimum { BufferCache.release(base, n) } else { free(base) }
    }

    @inline(__always) public func floats() -> UnsafeMutablePointer<Float> { base.assumingMemoryBound(to: Float.self) }
}

/// Large buffers (>= 1 MiB): mapped from the kernel directly (so that freeing one returns its memory, whatever
/// malloc's heuristics) and recently freed ones kept for reuse by the next allocation of the same size, since every
/// fresh mapping page-faults its memory in afresh (seconds of system time per VAE decode). The cache never raises
/// the process's peak: it keeps at most (high-water mark of live buffers - live buffers) bytes, so live + cached
/// stays at or below the most the program itself ever needed at once; and at most LDM_BUFFER_CACHE_MB (default 512).
enum BufferCache {
    static let minimum = 1 << 20
    private static let lock = NSLock()
    nonisolated(unsafe) private static var free: [Int: [UnsafeMutableRawPointer]] = [:]
    nonisolated(unsafe) private static var cachedBytes = 0, liveBytes = 0, peakLiveBytes = 0
    private static let limit: Int = (ProcessInfo.processInfo.environment["LDM_BUFFER_CACHE_MB"].flatMap { Int($0) } ?? 512) << 20

    /// A buffer of n bytes; `fresh` when newly mapped (zero-filled).
    static func allocate(_ n: Int) -> (UnsafeMutableRawPointer, fresh: Bool) {
        lock.lock()
        liveBytes += n
        peakLiveBytes = max(peakLiveBytes, liveBytes)
        if let p = free[n]?.popLast() {
            if free[n]!.isEmpty { free[n] = nil }
            cachedBytes -= n; lock.unlock(); return (p, false)
        }
        // A miss: drop cached buffers (of other sizes) until live + cached fits under the high-water mark again.
        var evict: [(UnsafeMutableRawPointer, Int)] = []
        while cachedBytes > 0 && liveBytes + cachedBytes > peakLiveBytes, let size = free.keys.max() {
            let p = free[size]!.removeLast()
            if free[size]!.isEmpty { free[size] = nil }
            cachedBytes -= size; evict.append((p, size))
        }
        lock.unlock()
        for (p, size) in evict { munmap(p, size) }
        guard let p = mmap(nil, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), p != MAP_FAILED else {
            fatalError("Storage: cannot map \(n) bytes")
        }
        return (p, true)
    }

    static func release(_ p: UnsafeMutableRawPointer, _ n: Int) {
        lock.lock()
        liveBytes -= n
        if cachedBytes + n <= limit { free[n, default: []].append(p); cachedBytes += n; lock.unlock(); return }
        lock.unlock()
        munmap(p, n)
    }
}
