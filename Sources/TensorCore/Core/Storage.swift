import Foundation

/// A reference-counted, 64-byte aligned buffer, or a borrowed region (a memory-mapped weights file) kept alive by `owner`.
public final class Storage: @unchecked Sendable {
    public let base: UnsafeMutableRawPointer
    public let byteCount: Int
    private let owner: AnyObject?
    private let owned: Bool
    /// The bytes are pages of a read-only file mapping (never written): `evictResidentPages` may drop them.
    public let isFileMapping: Bool
    /// Bytes actually reserved (a large buffer may come from the cache a little larger than asked for).
    private let capacity: Int

    public init(byteCount: Int, zeroed: Bool = false) {
        let n = max(byteCount, 64)
        let ptr: UnsafeMutableRawPointer
        var reserved = n
        if n >= BufferCache.minimum {
            let (p, size, fresh) = BufferCache.allocate(BufferCache.sizeClass(n))
            ptr = p
            reserved = size
            if zeroed && !fresh { memset(ptr, 0, n) } // fresh pages from mmap are already zero
        } else {
            var p: UnsafeMutableRawPointer?
            guard posix_memalign(&p, 64, n) == 0, let fresh = p else { fatalError("Storage: cannot allocate \(byteCount) bytes") }
            ptr = fresh
            if zeroed { memset(ptr, 0, n) }
        }
        base = ptr
        self.byteCount = byteCount
        owner = nil
        owned = true
        capacity = reserved
        isFileMapping = false
    }

    /// Wraps memory that someone else owns (for example a mapped safetensors file); `owner` keeps it alive.
    /// `fileMapping`: the memory is a read-only private mapping of a file, so its pages can be dropped and re-read.
    public init(borrowing pointer: UnsafeMutableRawPointer, byteCount: Int, owner: AnyObject?, fileMapping: Bool = false) {
        base = pointer
        self.byteCount = byteCount
        self.owner = owner
        owned = false
        capacity = byteCount
        isFileMapping = fileMapping
    }

    /// Drops this storage's resident pages when it is a read-only file mapping (madvise MADV_DONTNEED): the memory
    /// leaves the process's resident set and is read again from the page cache (or the file) on the next access.
    /// The contents never change. Pages shared with neighbouring tensors of the file are dropped too (also re-read).
    public func evictResidentPages() {
        guard isFileMapping, byteCount > 0 else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = Int(bitPattern: base) / page * page
        let end = (Int(bitPattern: base) + byteCount + page - 1) / page * page
        madvise(UnsafeMutableRawPointer(bitPattern: start), end - start, MADV_DONTNEED)
    }

    deinit {
        guard owned else { return }
        if capacity >= BufferCache.minimum { BufferCache.release(base, capacity) } else { free(base) }
    }

    @inline(__always) public func floats() -> UnsafeMutablePointer<Float> { base.assumingMemoryBound(to: Float.self) }
}

/// Large buffers (>= 1 MiB): mapped from the kernel directly (so that freeing one returns its memory, whatever
/// malloc's heuristics) and recently freed ones kept for reuse by the next allocation of the same size, since every
/// fresh mapping page-faults its memory in afresh (seconds of system time per VAE decode, 15% of a training step).
/// Sizes are rounded up to classes 1/8 of a power of two apart, so that near sizes share buffers. The cache hardly
/// raises the process's peak: a miss evicts cached buffers until live + cached is at most 1/32 above the high-water
/// mark of live buffers (the most the program itself ever needed at once); LDM_BUFFER_CACHE_MB caps it further.
/// (Strictly at the mark, a training step missed twice as often; 1/16 above it, the SD VAE decode's peak grew 5%.)
enum BufferCache {
    static let minimum = 1 << 20
    /// n rounded up to a multiple of an eighth of its highest power of two (at most 12.5% more; pages untouched
    /// beyond n are never faulted in).
    @inline(__always) static func sizeClass(_ n: Int) -> Int {
        let step = max((1 << (Int.bitWidth - 1 - n.leadingZeroBitCount)) / 8, 4096)
        return (n + step - 1) / step * step
    }
    private static let lock = NSLock()
    nonisolated(unsafe) private static var free: [Int: [UnsafeMutableRawPointer]] = [:]
    nonisolated(unsafe) private static var cachedBytes = 0, liveBytes = 0, peakLiveBytes = 0
    /// Cached bytes kept above the high-water mark of live bytes: 1/spareDivisor of it (LDM_BUFFER_CACHE_SPARE).
    private static let spareDivisor: Int = ProcessInfo.processInfo.environment["LDM_BUFFER_CACHE_SPARE"].flatMap { Int($0) }.map { max($0, 1) } ?? 4
    private static let limit: Int = ProcessInfo.processInfo.environment["LDM_BUFFER_CACHE_MB"].flatMap { Int($0) }.map { $0 << 20 } ?? Int.max / 2

    /// A buffer of at least n bytes (n a size class) and its size; `fresh` when newly mapped (zero-filled). A cached
    /// buffer of the same class is taken first, else the smallest cached one up to 25% larger.
    static func allocate(_ n: Int) -> (UnsafeMutableRawPointer, size: Int, fresh: Bool) {
        lock.lock()
        var size = n
        if free[n] == nil, let larger = free.keys.filter({ $0 > n && $0 <= n + n / 4 }).min() { size = larger }
        liveBytes += size
        peakLiveBytes = max(peakLiveBytes, liveBytes)
        if let p = free[size]?.popLast() {
            if free[size]!.isEmpty { free[size] = nil }
            cachedBytes -= size
            lock.unlock()
            return (p, size, false)
        }
        // A miss: drop cached buffers (of other sizes) until live + cached fits under the high-water mark (+ spare).
        var evict: [(UnsafeMutableRawPointer, Int)] = []
        while cachedBytes > 0 && liveBytes + cachedBytes > peakLiveBytes + peakLiveBytes / spareDivisor, let s = free.keys.max() {
            let p = free[s]!.removeLast()
            if free[s]!.isEmpty { free[s] = nil }
            cachedBytes -= s
            evict.append((p, s))
        }
        lock.unlock()
        for (p, s) in evict { munmap(p, s) }
        guard let p = mmap(nil, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), p != MAP_FAILED else {
            fatalError("Storage: cannot map \(n) bytes")
        }
        return (p, n, true)
    }

    /// Unmaps every cached buffer and lowers the high-water mark to the live bytes.
    static func releaseCached() {
        lock.lock()
        let all = free.flatMap { s, ps in ps.map { ($0, s) } }
        free = [:]
        cachedBytes = 0
        peakLiveBytes = liveBytes
        lock.unlock()
        for (p, s) in all { munmap(p, s) }
    }

    static func release(_ p: UnsafeMutableRawPointer, _ n: Int) {
        lock.lock()
        liveBytes -= n
        if cachedBytes + n <= limit {
            free[n, default: []].append(p)
            cachedBytes += n
            lock.unlock()
            return
        }
        lock.unlock()
        munmap(p, n)
    }
}

/// Returns the large buffers kept for reuse to the kernel and forgets the high-water mark of live buffers: for
/// memory a program has given up for good (float32 weights replaced by bf16 copies), which the cache would otherwise
/// keep resident as long as the process never needed less than its earlier peak.
public func releaseCachedTensorBuffers() {
    BufferCache.releaseCached()
}
