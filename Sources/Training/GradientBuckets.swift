// Gradient averaging of data-parallel training, after torch.nn.parallel.DistributedDataParallel's Reducer
// (torch/csrc/distributed/c10d/reducer.cpp; Li et al., "PyTorch Distributed", VLDB 2020, section 3.2.3):
//  - the parameters are laid out once in buckets of at most `bucketBytes` (bucket_cap_mb, 25 MiB by default), in
//    reverse parameter order, the order in which backward produces their gradients;
//  - with `overlapsBackward`, a gradient-ready hook (TensorCore's GradientReadyHooks, torch's post-accumulate-grad
//    hook) copies each parameter's final gradient into its bucket during the backward pass, and a bucket whose
//    parameters are all ready starts its non-blocking all-reduce (MPI_Iallreduce) at once, while backward goes on
//    with the layers below. Buckets start strictly in bucket order (as the Reducer's next_bucket_), so every rank
//    issues the same collectives in the same order even when their backward passes reach parameters differently;
//  - parameters the loss's graph does not reach are marked ready before the pass (DDP's find_unused_parameters
//    walks the graph the same way), so they do not hold their bucket back; at the end of backward, whatever is not
//    yet packed is packed (its gradient, or zeros), the rest of the buckets start, and everything is waited for.
//    The gradients become sum / N.
// The after-backward path (`overlapsBackward` false) packs the same buckets after backward and starts them in the
// same order with the same non-blocking call, so both paths add the same numbers in the same MPI operations and give
// bit-identical gradients, at any number of ranks (Tests/TrainingTests/OverlapTests.swift checks the weights).
// The buckets run on their own communicator (a duplicate of MPI_COMM_WORLD, see CMPIShim), so collectives that run
// during backward (SyncBatchNorm's) or between steps never interleave with buckets in flight.
// Open MPI advances a non-blocking collective only inside MPI calls (no progress thread by default), so every hook
// call also tests the oldest bucket in flight, as Horovod-style overlap does on MPI.
import Foundation
import TensorCore

/// Averages the gradients of parameters over the ranks in buckets (see the file comment). A parameter that has a
/// gradient on some rank gets the average on all (zeros where it had none), so the optimizer step stays identical
/// everywhere; one with no gradient on any rank keeps none (AdamW skips it, as in one process).
public final class GradientAverager {
    public let communicator: Communicator
    /// The bucket cap in float32 values (`bucketBytes` / 4, at least 1).
    public private(set) var bucketElements: Int
    /// DDP's bucket_cap_mb, in bytes. Changing it re-plans the buckets (do it between steps).
    public var bucketBytes: Int {
        get { bucketElements * 4 }
        set {
            bucketElements = max(1, newValue / 4)
            plans = [:]
        }
    }
    /// Start each bucket's all-reduce during backward as soon as its gradients are final (DDP), or all of them after
    /// backward. The results are bit-identical either way.
    public var overlapsBackward: Bool
    /// Wall-clock seconds spent in gradient averaging on the training thread: packing in the hooks, starting,
    /// testing, waiting for the buckets (the slower rank included) and unpacking. With overlap, what backward hid is
    /// not counted.
    public private(set) var seconds = 0.0
    /// Float32 values reduced in the last call (the parameters' total size).
    public private(set) var lastElements = 0
    /// Buckets of the last reduction, and how many of them had started before backward ended (0 without overlap).
    public private(set) var lastBuckets = 0, lastBucketsStartedDuringBackward = 0

    private var plans: [[ObjectIdentifier]: BucketPlan] = [:]

    public init(communicator: Communicator, bucketBytes: Int = 25 << 20, overlapsBackward: Bool = true) {
        self.communicator = communicator
        bucketElements = max(1, bucketBytes / 4)
        self.overlapsBackward = overlapsBackward
    }

    /// Runs `loss.backward()`; when `reduce` (the last micro-batch of an optimizer step: DDP's no_sync for the
    /// others), the gradients of `parameters` are then averaged over the ranks, overlapped with the pass when
    /// `overlapsBackward`. In one process it is `loss.backward()`.
    public func backward(_ loss: Tensor, parameters: [Tensor], reduce: Bool = true) throws {
        guard reduce, communicator.size > 1, !parameters.isEmpty else {
            loss.backward()
            return
        }
        guard overlapsBackward else {
            loss.backward()
            try average(parameters)
            return
        }
        let reduction = begin(parameters)
        // Parameters this pass cannot reach are ready now (their gradient, if any, is from earlier micro-batches):
        // otherwise their bucket, and every bucket after it, would wait for the end of backward.
        timed { for (p, reached) in zip(parameters, loss.reaches(parameters)) where !reached { reduction.ready(p) } }
        GradientReadyHooks.withHooks(on: parameters, { [unowned self] p in timed { reduction.ready(p) } }) { loss.backward() }
        lastBucketsStartedDuringBackward = reduction.next
        try timed { try reduction.finish() }
    }

    /// Averages the gradients `parameters` hold now (after backward).
    public func average(_ parameters: [Tensor]) throws {
        guard communicator.size > 1, !parameters.isEmpty else { return }
        let reduction = begin(parameters)
        lastBucketsStartedDuringBackward = 0
        try timed { try reduction.finish() }
    }

    private func begin(_ parameters: [Tensor]) -> Reduction {
        let key = parameters.map(ObjectIdentifier.init)
        let plan = plans[key] ?? BucketPlan(parameters.map(\.count), cap: bucketElements)
        plans[key] = plan
        lastElements = plan.total
        lastBuckets = plan.buckets.count
        return Reduction(plan: plan, parameters: parameters, communicator: communicator)
    }

    private func timed<T>(_ body: () throws -> T) rethrows -> T {
        let start = DispatchTime.now().uptimeNanoseconds
        defer { seconds += Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 }
        return try body()
    }
}

/// The bucket layout of one parameter list: buckets of consecutive parameters in reverse order, each up to the cap
/// (a larger parameter goes alone), with one float32 buffer per bucket (several can be in flight at once).
final class BucketPlan {
    /// Parameter indices per bucket, in the order they are packed.
    let buckets: [[Int]]
    /// Per parameter: its bucket and its offset in the bucket's buffer.
    let place: [(bucket: Int, offset: Int)]
    /// One buffer per bucket, exactly its size.
    let buffers: [UnsafeMutableBufferPointer<Float>]
    let total: Int

    init(_ counts: [Int], cap: Int) {
        var buckets: [[Int]] = [], place = [(bucket: Int, offset: Int)](repeating: (0, 0), count: counts.count)
        var members: [Int] = [], n = 0
        for i in counts.indices.reversed() {
            if !members.isEmpty && n + counts[i] > cap {
                buckets.append(members)
                members = []
                n = 0
            }
            place[i] = (buckets.count, n)
            members.append(i)
            n += counts[i]
        }
        if !members.isEmpty { buckets.append(members) }
        self.buckets = buckets
        self.place = place
        buffers = buckets.map { m in
            let b = UnsafeMutableBufferPointer<Float>.allocate(capacity: m.reduce(0) { $0 + counts[$1] })
            b.initialize(repeating: 0)
            return b
        }
        total = counts.reduce(0, +)
    }

    deinit { for b in buffers { b.deallocate() } }
}

/// One averaging of one parameter list: the state of its buckets during a backward pass.
final class Reduction {
    let plan: BucketPlan
    let parameters: [Tensor]
    let communicator: Communicator
    private var index: [ObjectIdentifier: Int] = [:]
    private var packed: [Bool]
    private var waiting: [Int]
    private var inFlight: [PendingAllReduce?]
    private var completed: [Bool]
    /// The next bucket to start (buckets start in order), and the oldest that may still be in flight.
    private(set) var next = 0
    private var oldest = 0
    private var error: Error?

    init(plan: BucketPlan, parameters: [Tensor], communicator: Communicator) {
        self.plan = plan
        self.parameters = parameters
        self.communicator = communicator
        packed = [Bool](repeating: false, count: parameters.count)
        waiting = plan.buckets.map(\.count)
        inFlight = [PendingAllReduce?](repeating: nil, count: plan.buckets.count)
        completed = [Bool](repeating: false, count: plan.buckets.count)
        for (i, p) in parameters.enumerated() { index[ObjectIdentifier(p)] = i }
    }

    /// The gradient-ready hook: packs `p`'s gradient, starts the buckets that are complete, drives progress.
    func ready(_ p: Tensor) {
        guard error == nil, let i = index[ObjectIdentifier(p)], !packed[i] else { return }
        do {
            pack(i)
            try startCompleteBuckets()
            try progress()
        } catch { self.error = error }
    }

    private func pack(_ i: Int) {
        let p = parameters[i], (b, off) = plan.place[i], dst = plan.buffers[b].baseAddress! + off
        if let g = p.grad {
            precondition(g.count == p.count, "gradient of \(g.shape) for a parameter of \(p.shape)")
            let gc = g.float32().contiguous()
            withExtendedLifetime(gc) { dst.update(from: gc.data, count: p.count) }
        } else {
            dst.update(repeating: 0, count: p.count)
        }
        packed[i] = true
        waiting[b] -= 1
    }

    private func startCompleteBuckets() throws {
        while next < plan.buckets.count, waiting[next] == 0 {
            inFlight[next] = try communicator.startAllReduceSum(plan.buffers[next])
            next += 1
        }
    }

    /// Tests the oldest bucket in flight (MPI progresses non-blocking collectives only inside MPI calls).
    private func progress() throws {
        while oldest < next {
            guard try inFlight[oldest]!.test() else { return }
            completed[oldest] = true
            oldest += 1
        }
    }

    /// After backward: packs what the hooks did not (the current `.grad` or zeros), starts the remaining buckets,
    /// waits for all, and sets each gradient to the average (nil where no rank had one).
    func finish() throws {
        if let error { throw error }
        for i in parameters.indices where !packed[i] { pack(i) }
        try startCompleteBuckets()
        precondition(next == plan.buckets.count, "every bucket is packed")
        // Which parameters have a gradient on any rank (a blocking all-reduce on the world communicator while the
        // buckets are in flight on theirs).
        var present = parameters.map { $0.grad == nil ? Float(0) : 1 }
        try present.withUnsafeMutableBufferPointer { try communicator.allReduceSum($0) }
        let scale = 1 / Float(communicator.size)
        for b in plan.buckets.indices {
            if !completed[b] { try inFlight[b]!.wait() }
            let buf = plan.buffers[b]
            for i in plan.buckets[b] {
                let p = parameters[i]
                guard present[i] > 0 else { continue }
                let avg = Tensor(zeros: p.shape), off = plan.place[i].offset
                withExtendedLifetime(avg) {
                    for j in 0..<p.count { avg.data[j] = buf[off + j] * scale }
                }
                p.grad = avg
            }
        }
    }
}
