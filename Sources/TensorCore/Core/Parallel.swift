import Foundation

// One thread pool for everything: our kernels run on the same OpenMP team as oneDNN (libgomp, loaded with
// libdnnl), entered through GOMP_parallel - the call a C compiler emits for `#pragma omp parallel`. Sharing the
// team avoids two pools spinning against each other on a 2-core machine.

private typealias GOMPParallel = @convention(c) (@convention(c) (UnsafeMutableRawPointer?) -> Void, UnsafeMutableRawPointer?, UInt32, UInt32) -> Void
private typealias OMPInt = @convention(c) () -> Int32

private final class ParallelBody {
    let n: Int
    let body: (Range<Int>) -> Void
    init(n: Int, body: @escaping (Range<Int>) -> Void) {
        self.n = n
        self.body = body
    }
}

public enum Parallel {
    private static let handle = dlopen("libgomp.so.1", RTLD_NOW | RTLD_GLOBAL)
    private static let gompParallel: GOMPParallel? = handle.flatMap { dlsym($0, "GOMP_parallel") }.map { unsafeBitCast($0, to: GOMPParallel.self) }
    private static let threadNum: OMPInt? = handle.flatMap { dlsym($0, "omp_get_thread_num") }.map { unsafeBitCast($0, to: OMPInt.self) }
    private static let numThreads: OMPInt? = handle.flatMap { dlsym($0, "omp_get_num_threads") }.map { unsafeBitCast($0, to: OMPInt.self) }
    private static let maxThreads: OMPInt? = handle.flatMap { dlsym($0, "omp_get_max_threads") }.map { unsafeBitCast($0, to: OMPInt.self) }

    /// Threads in the team (OMP_NUM_THREADS, else the number of cores).
    public static let threadCount: Int = Int(maxThreads?() ?? Int32(ProcessInfo.processInfo.activeProcessorCount))

    /// Splits 0..<n into one contiguous chunk per thread and runs `body` on each. Runs inline for small `n`
    /// (when `n * costPerItem` is below ~32k "operations") or when called from inside a parallel region.
    public static func forRange(_ n: Int, costPerItem: Int = 1, _ body: (Range<Int>) -> Void) {
        guard n > 0 else { return }
        let threads = min(threadCount, n)
        if threads <= 1 || n * costPerItem < 32_768 || (numThreads?() ?? 1) > 1 {
            body(0..<n)
            return
        }
        guard let run = gompParallel else {
            body(0..<n)
            return
        }
        withoutActuallyEscaping(body) { escaping in
            let box = ParallelBody(n: n, body: escaping)
            let ctx = Unmanaged.passUnretained(box).toOpaque()
            run({ raw in
                let box = Unmanaged<ParallelBody>.fromOpaque(raw!).takeUnretainedValue()
                let t = Int(Parallel.threadNum?() ?? 0), nt = Int(Parallel.numThreads?() ?? 1)
                let lo = box.n * t / nt, hi = box.n * (t + 1) / nt
                if lo < hi { box.body(lo..<hi) }
            }, ctx, UInt32(threads), 0)
            _ = box
        }
    }

    /// Runs `body(i)` for every i, chunked across threads.
    @inline(__always) public static func forEach(_ n: Int, costPerItem: Int = 1, _ body: (Int) -> Void) {
        forRange(n, costPerItem: costPerItem) { r in for i in r { body(i) } }
    }
}
