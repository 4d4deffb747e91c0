// Data-parallel training in the manner of torch.nn.parallel.DistributedDataParallel (Li et al., "PyTorch
// Distributed", VLDB 2020): every rank holds the whole model, computes the gradients of its shard of each global
// batch, and the gradients are averaged by an all-reduce in buckets (DDP's bucket_cap_mb = 25), overlapped with the
// backward pass (GradientBuckets.swift), before the identical optimizer step on every rank. Rank 0's parameters are broadcast at the start (DDP's constructor does the same).
// The trainers call one protocol, `Communicator`: `SingleProcess` is the identity (one process, nothing to reduce), so
// the training loop has one code path; `MPICommunicator` reaches Open MPI through the CMPIShim target, which loads
// libmpi at run time, so nothing here needs MPI to build or to train in one process.
import CMPIShim
import Foundation
import TensorCore

/// The collective operations data-parallel training needs.
public protocol Communicator: AnyObject {
    var rank: Int { get }
    var size: Int { get }
    /// Element-wise sum over all ranks, in place.
    func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws
    func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Double>) throws
    /// Starts an element-wise sum over all ranks, in place, without waiting (MPI_Iallreduce on a communicator of its
    /// own, so it never interleaves with the blocking collectives). `buffer` must stay valid and untouched until the
    /// returned reduction has completed. The default runs the blocking sum.
    func startAllReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws -> PendingAllReduce
    /// Rank `root`'s bytes to every rank, in place.
    func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int) throws
    func barrier() throws
    /// Ends every rank of the job with `code` (MPI_Abort); in one process, exit(code).
    func abort(code: Int32) -> Never
    /// MPI_Finalize (nothing for one process).
    func finalize()
}

/// A non-blocking all-reduce in flight (MPI_Request).
public protocol PendingAllReduce: AnyObject {
    /// Whether it has completed (MPI_Test, which also advances it: Open MPI progresses non-blocking collectives
    /// only inside MPI calls).
    func test() throws -> Bool
    /// Blocks until it has completed (MPI_Wait).
    func wait() throws
}

/// A reduction that had completed when it was returned.
final class CompletedAllReduce: PendingAllReduce {
    func test() throws -> Bool { true }
    func wait() throws {}
}

extension Communicator {
    public func startAllReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws -> PendingAllReduce {
        try allReduceSum(buffer)
        return CompletedAllReduce()
    }

    public var isRoot: Bool { rank == 0 }

    /// The mean over ranks of one value per rank (the same result on every rank).
    public func average(_ value: Double) throws -> Double {
        guard size > 1 else { return value }
        var v = [value]
        try v.withUnsafeMutableBufferPointer { try allReduceSum($0) }
        return v[0] / Double(size)
    }

    /// The mean over ranks of named values (the names must be the same on every rank; sorted before reducing).
    public func average(_ values: [String: Float]) throws -> [String: Float] {
        guard size > 1 else { return values }
        let keys = values.keys.sorted()
        var v = keys.map { Double(values[$0]!) } + [Double(keys.count)]
        try v.withUnsafeMutableBufferPointer { try allReduceSum($0) }
        guard v.last == Double(keys.count * size) else { throw TrainingError("ranks logged different loss terms") }
        return Dictionary(uniqueKeysWithValues: keys.enumerated().map { ($1, Float(v[$0] / Double(size))) })
    }

    /// The mean over ranks of a tensor (a fresh contiguous float32 tensor; `t` itself in one process).
    public func averaged(_ t: Tensor) throws -> Tensor {
        guard size > 1 else { return t }
        var v = t.float32().contiguous().toArray()
        try v.withUnsafeMutableBufferPointer { try allReduceSum($0) }
        let scale = 1 / Float(size)
        return Tensor(v.map { $0 * scale }, shape: t.shape)
    }

    /// Rank 0's values of `tensors` (contiguous float32, as parameters are) on every rank.
    public func broadcastFromRoot(_ tensors: [Tensor]) throws {
        guard size > 1 else { return }
        for t in tensors {
            precondition(t.dtype == .float32 && t.isContiguous, "broadcast needs contiguous float32 tensors")
            try withExtendedLifetime(t) { try broadcast(UnsafeMutableRawBufferPointer(start: t.data, count: t.count * 4), root: 0) }
            t.bumpVersion()
        }
    }
}

/// One process: every collective is the identity.
public final class SingleProcess: Communicator {
    public init() {}
    public var rank: Int { 0 }
    public var size: Int { 1 }
    public func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws {}
    public func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Double>) throws {}
    public func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int) throws {}
    public func barrier() throws {}
    public func abort(code: Int32) -> Never { exit(code) }
    public func finalize() {}
}

/// MPI_COMM_WORLD of an Open MPI job (see CMPIShim/include/ldm_mpi.h).
public final class MPICommunicator: Communicator {
    public let rank: Int
    public let size: Int
    private var finalized = false

    /// Loads libmpi (`library`, default libmpi.so.40) and initialises MPI (MPI_THREAD_FUNNELED: only this thread
    /// calls MPI; the batch loader's thread never does).
    public init(library: String? = nil) throws {
        var message = [CChar](repeating: 0, count: 512)
        guard ldm_mpi_load(library, &message, message.count) == 0 else {
            throw TrainingError("MPI launch detected but Open MPI could not be loaded: \(String(cString: message)). Install it (Debian: apt-get install openmpi-bin libopenmpi-dev) or run without mpirun")
        }
        var provided: Int32 = 0, r: Int32 = 0, s: Int32 = 0
        try Self.check(ldm_mpi_init(&provided), "MPI_Init_thread")
        try Self.check(ldm_mpi_rank(&r), "MPI_Comm_rank")
        try Self.check(ldm_mpi_size(&s), "MPI_Comm_size")
        rank = Int(r)
        size = Int(s)
    }

    static func check(_ code: Int32, _ what: String) throws {
        guard code != 0 else { return }
        var text = [CChar](repeating: 0, count: 300)
        ldm_mpi_error_string(code, &text, text.count)
        throw TrainingError("\(what) failed: \(String(cString: text))")
    }

    public func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        try Self.check(ldm_mpi_allreduce_sum_float(base, buffer.count), "MPI_Allreduce")
    }
    public func allReduceSum(_ buffer: UnsafeMutableBufferPointer<Double>) throws {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        try Self.check(ldm_mpi_allreduce_sum_double(base, buffer.count), "MPI_Allreduce")
    }
    public func startAllReduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws -> PendingAllReduce {
        let requests = MPIRequests()
        guard let base = buffer.baseAddress else { return requests }
        // MPI counts are int: larger buffers go as several requests.
        var off = 0
        while off < buffer.count {
            let n = min(buffer.count - off, 1 << 30)
            var request: UnsafeMutableRawPointer?
            try Self.check(ldm_mpi_iallreduce_sum_float(base + off, n, &request), "MPI_Iallreduce")
            requests.pending.append(request)
            off += n
        }
        return requests
    }
    public func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int) throws {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        try Self.check(ldm_mpi_broadcast(base, buffer.count, Int32(root)), "MPI_Bcast")
    }
    public func barrier() throws { try Self.check(ldm_mpi_barrier(), "MPI_Barrier") }
    public func abort(code: Int32) -> Never {
        _ = ldm_mpi_abort(code)
        exit(code)
    }
    public func finalize() {
        guard !finalized else { return }
        finalized = true
        _ = ldm_mpi_finalize()
    }
}

/// The MPI_Requests of one started all-reduce (MPI_Test / MPI_Wait release each when it completes).
final class MPIRequests: PendingAllReduce {
    var pending: [UnsafeMutableRawPointer?] = []
    func test() throws -> Bool {
        while var r = pending.first {
            var flag: Int32 = 0
            try MPICommunicator.check(ldm_mpi_test(&r, &flag), "MPI_Test")
            guard flag != 0 else {
                pending[0] = r
                return false
            }
            pending.removeFirst()
        }
        return true
    }
    func wait() throws {
        while var r = pending.first {
            try MPICommunicator.check(ldm_mpi_wait(&r), "MPI_Wait")
            pending.removeFirst()
        }
    }
}

public enum DataParallel {
    /// The rank and world size Open MPI's launcher (mpirun / orted) puts in the environment, if launched by it.
    public static func launchEnvironment(_ env: [String: String] = ProcessInfo.processInfo.environment) -> (rank: Int, size: Int)? {
        guard let s = env["OMPI_COMM_WORLD_SIZE"].flatMap(Int.init), let r = env["OMPI_COMM_WORLD_RANK"].flatMap(Int.init),
              s > 0, (0..<s).contains(r) else { return nil }
        return (r, s)
    }

    /// MPI when the process was started by Open MPI's mpirun, else one process. LDM_LIBMPI names another libmpi
    /// file (an Open MPI installed elsewhere).
    public static func communicator() throws -> Communicator {
        guard let launch = launchEnvironment() else { return SingleProcess() }
        let comm = try MPICommunicator(library: ProcessInfo.processInfo.environment["LDM_LIBMPI"])
        guard comm.rank == launch.rank, comm.size == launch.size else {
            throw TrainingError("MPI reports rank \(comm.rank) of \(comm.size) but mpirun set rank \(launch.rank) of \(launch.size)")
        }
        return comm
    }
}

/// This rank's part of a global batch: rows [rank * B / N, (rank + 1) * B / N). Every random draw of a step is made
/// for the whole global batch from the training generator (the same state on every rank) and then sliced, so each
/// example gets the same timestep, noise, dropout and posterior sample whatever N is, and one process (N = 1) draws
/// exactly what it drew before data parallelism existed.
public struct BatchShard: Equatable, Sendable {
    public let globalBatch: Int
    public let rank: Int
    public let count: Int

    public init(globalBatch: Int, rank: Int = 0, count: Int = 1) throws {
        guard count > 0, (0..<count).contains(rank) else { throw TrainingError("rank \(rank) outside 0..<\(count)") }
        guard globalBatch % count == 0 else {
            throw TrainingError("batch_size \(globalBatch) is not divisible by the \(count) ranks (each rank takes an equal shard of every batch)")
        }
        self.globalBatch = globalBatch
        self.rank = rank
        self.count = count
    }

    public static func whole(_ batch: Int) -> BatchShard { try! BatchShard(globalBatch: batch) }

    public var localBatch: Int { globalBatch / count }
    public var range: Range<Int> { rank * localBatch ..< (rank + 1) * localBatch }
    public var isWhole: Bool { count == 1 }

    /// This shard's rows of a global-batch tensor (the tensor itself when the shard is the whole batch).
    public func rows(_ t: Tensor) -> Tensor {
        precondition(t.shape.first == globalBatch, "a global-batch tensor has \(globalBatch) rows, got \(t.shape)")
        return isWhole ? t : t.narrow(0, range.lowerBound, localBatch).contiguous()
    }
    public func rows<T>(_ a: [T]) -> [T] {
        precondition(a.count == globalBatch)
        return isWhole ? a : Array(a[range])
    }
}
