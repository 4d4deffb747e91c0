// The background half of a torch DataLoader (num_workers=1, prefetch_factor=1): while the training thread runs an
// optimizer step, one worker thread prepares the next batch (image decoding, resize / crop / flip, stacking; with
// the latent cache, gathering the cached moments). A batch is a pure function of (epoch, index) (Datasets.swift), so
// the prefetched batch is exactly the one the synchronous path would build: the training RNG (posterior samples,
// timesteps, noise, dropout) is drawn on the training thread only, in the same order either way.
// One worker is enough on a 2-core machine: the compute runs on an OpenMP team sized to the cores, and the worker's
// share is small (it never enters TensorCore kernels, see TrainingDataset).
import Dispatch
import Foundation

/// A value computed on a background queue; `wait()` blocks until it is there and rethrows its error.
final class BackgroundJob<Value>: @unchecked Sendable {
    // Written once by the worker before `done.signal()`, read only after `done.wait()`: the semaphore orders them.
    private var result: Result<Value, Error>?
    private let done = DispatchSemaphore(value: 0)
    private var waited = false

    init(on queue: DispatchQueue, _ work: @escaping () throws -> Value) {
        let body = UncheckedSendable(work)
        queue.async { [self] in
            result = Result { try body.value() }
            done.signal()
        }
    }

    /// The job's value (or its error). Call at most once per job, from one thread.
    func wait() throws -> Value {
        if !waited {
            done.wait()
            waited = true
        }
        guard let result else { throw TrainingError("background job finished without a result") }
        return try result.get()
    }
}

/// Hands a non-Sendable value to the worker queue. Safe here because the value (a closure over immutable datasets)
/// is only read there.
struct UncheckedSendable<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

/// Batches of a `BatchSampler`, with the next one prepared in the background when `prefetch` is on.
public final class BatchLoader {
    public let sampler: BatchSampler
    public let prefetch: Bool
    /// The rows of each batch this process loads (the whole batch in one process).
    public let shard: BatchShard
    private let queue = DispatchQueue(label: "ldm.training.batch-loader", qos: .utility)
    private var pending: (epoch: Int, index: Int, job: BackgroundJob<TrainingBatch>)?
    /// Batches handed out that the background thread had prepared.
    public private(set) var prefetchedBatches = 0
    /// Wall-clock seconds the caller spent in `batch` (building a batch, or waiting for the prefetched one).
    public private(set) var waitSeconds = 0.0

    public init(sampler: BatchSampler, prefetch: Bool, shard: BatchShard? = nil) {
        self.sampler = sampler
        self.prefetch = prefetch
        self.shard = shard ?? .whole(sampler.batchSize)
    }

    /// Batch `index` of `epoch`: the prefetched one when it is that batch, else built now. With `prefetchNext`,
    /// starts building the following batch before returning.
    public func batch(epoch: Int, index: Int, prefetchNext: Bool) throws -> TrainingBatch {
        let start = DispatchTime.now().uptimeNanoseconds
        defer { waitSeconds += Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 }
        let ready = pending.flatMap { $0.epoch == epoch && $0.index == index ? $0.job : nil }
        pending = nil   // a prefetched batch for another position (after a resume) is dropped
        let batch: TrainingBatch
        if let ready {
            batch = try ready.wait()
            prefetchedBatches += 1
        } else { batch = try sampler.batch(epoch: epoch, index: index, shard: shard) }
        if prefetch && prefetchNext {
            let next = sampler.position(after: epoch, index), sampler = sampler, shard = shard
            pending = (next.epoch, next.index, BackgroundJob(on: queue) { try sampler.batch(epoch: next.epoch, index: next.index, shard: shard) })
        }
        return batch
    }

    /// Waits for a batch still being prepared (so no worker outlives the caller's use of the data).
    public func finish() {
        if let p = pending { _ = try? p.job.wait() }
        pending = nil
    }
}
