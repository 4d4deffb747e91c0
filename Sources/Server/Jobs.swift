// Jobs and the generation queue: a bounded FIFO of jobs run by worker threads, one job at a time per model and up to
// `workers` models at once (generation is CPU-bound and synchronous: it must not occupy Swift's cooperative pool or
// NIO's event loops; jobs of one model share its loaded weights, LoRA merges and clip skip, so they never overlap). Each job carries its
// own progress, latest latents (for previews), cancel / interrupt / skip flags (AUTOMATIC1111's shared.state
// interrupt and skip, modules/shared_state.py, but per job) and its listeners (the server-sent event stream).
import Foundation
import Imaging

/// One finished image: PNG bytes (with the `parameters` chunk), its seed and infotext.
public struct GeneratedImage: Sendable {
    public let png: [UInt8]
    public let seed: UInt64
    public let infotext: String
}

public struct JobEvent: Sendable {
    public let name: String
    public let data: JSON
}

public final class Job: @unchecked Sendable {
    public enum Status: String, Sendable { case queued, running, succeeded, failed, cancelled }
    public let id: String
    /// The request; once the job runs, with the model's defaults applied (LCM: sampler, steps, cfg).
    public var spec: GenerationSpec { locked { _spec } }
    private var _spec: GenerationSpec
    /// The model the job runs on: jobs with the same key run one after the other.
    public let modelKey: String
    public let created = Date()
    private let lock = NSLock()

    private var _status = Status.queued
    private var _step = 0, _steps = 0, _imageIndex = 0
    private var _started: Date?, _finished: Date?
    private var _latents: [Float]?, _shape: [Int] = []
    private var _images: [GeneratedImage] = []
    private var _error: APIError?
    private var _cancelled = false, _interrupted = false, _skipped = false
    private var _modelName = ""
    var preview: LatentPreview?
    private var waiters: [CheckedContinuation<Void, Never>] = []
    private var listeners: [UUID: AsyncStream<JobEvent>.Continuation] = [:]

    init(spec: GenerationSpec, modelKey: String = "") {
        id = UUID().uuidString.lowercased()
        _spec = spec
        self.modelKey = modelKey
    }

    private func locked<T>(_ f: () -> T) -> T {
        lock.lock()
        defer { lock.unlock() }
        return f()
    }

    public var status: Status { locked { _status } }
    public var images: [GeneratedImage] { locked { _images } }
    public var error: APIError? { locked { _error } }
    public var modelName: String { locked { _modelName } }
    public var isCancelled: Bool { locked { _cancelled } }
    public var wasInterrupted: Bool { locked { _interrupted } }
    public var started: Date? { locked { _started } }
    public var finished: Date? { locked { _finished } }

    /// A snapshot of progress: (image index, step, steps, images, interrupted, skipped).
    public struct Progress: Sendable {
        public var status: Status, imageIndex: Int, imageCount: Int, step: Int, steps: Int
        public var interrupted: Bool, skipped: Bool, started: Date?
        /// In [0, 1] over all images of the job (A1111's progress: job_no / job_count + step / steps / job_count).
        public var fraction: Double {
            if status == .succeeded { return 1 }
            guard imageCount > 0, steps > 0 else { return 0 }
            return min(1, (Double(imageIndex) + Double(step) / Double(steps)) / Double(imageCount))
        }
        /// A1111's eta_relative: elapsed / progress - elapsed.
        public var eta: Double {
            guard let s = started, fraction > 0 else { return 0 }
            let t = Date().timeIntervalSince(s)
            return max(0, t / fraction - t)
        }
    }
    public var progress: Progress {
        locked { Progress(status: _status, imageIndex: _imageIndex, imageCount: _spec.imageCount, step: _step, steps: _steps,
                          interrupted: _interrupted, skipped: _skipped, started: _started) }
    }

    /// The live preview PNG of the current latents (nil before the first step or when the model has none).
    public func previewPNG() -> [UInt8]? {
        let (lat, shape, pv) = locked { (_latents, _shape, preview) }
        guard let lat, let pv, let img = pv.image(latents: lat, shape: shape) else { return nil }
        return try? PNGCodec.encode(img)
    }
    public var latestLatents: ([Float], [Int])? { locked { _latents.map { ($0, _shape) } } }

    // MARK: worker side

    /// The worker's resolved form of the request (the model's defaults applied), reported by info and progress.
    func resolve(_ s: GenerationSpec) { locked { _spec = s } }
    func begin(model: String) {
        locked {
            _status = .running
            _started = Date()
            _modelName = model
        }
        emit(JobEvent(name: "started", data: ["id": .string(id), "model": .string(model)]))
    }
    func beginImage(_ index: Int, steps: Int) {
        locked {
            _imageIndex = index
            _step = 0
            _steps = steps
            _latents = nil
            _skipped = false
        }
    }
    func observe(_ latents: [Float], _ shape: [Int]) {
        locked {
            _latents = latents
            _shape = shape
        }
    }
    /// The progress callback: false stops the denoising loop.
    func stepDone(_ step: Int, _ total: Int) -> Bool {
        let (go, idx, count) = locked { () -> (Bool, Int, Int) in
            _step = step
            _steps = total
            return (!_cancelled && !_interrupted && !_skipped, _imageIndex, _spec.imageCount)
        }
        emit(JobEvent(name: "progress", data: ["id": .string(id), "image": .int(idx), "images": .int(count), "step": .int(step),
                                                "steps": .int(total), "progress": .double(progress.fraction)]))
        return go
    }
    /// Skip consumed: the next image runs.
    func clearSkip() { locked { _skipped = false } }
    func add(_ image: GeneratedImage) { locked { _images.append(image) } }

    func finish(_ status: Status, error: APIError? = nil) {
        let w = locked { () -> [CheckedContinuation<Void, Never>] in
            _status = status
            _error = error
            _finished = Date()
            _latents = nil
            let w = waiters
            waiters = []
            return w
        }
        var data: [String: JSON] = ["id": .string(id), "status": .string(status.rawValue), "images": .int(images.count)]
        if let e = error { data["error"] = .string(e.detail) }
        emit(JobEvent(name: "done", data: .object(data)))
        let ls = locked { () -> [AsyncStream<JobEvent>.Continuation] in
            let l = Array(listeners.values)
            listeners = [:]
            return l
        }
        ls.forEach { $0.finish() }
        w.forEach { $0.resume() }
    }

    // MARK: client side

    public var isFinished: Bool { [.succeeded, .failed, .cancelled].contains(status) }

    /// Waits for the job to finish; if the waiting task is cancelled (client gone, server stopping) the job is cancelled.
    public func wait() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let done = locked { () -> Bool in
                    if [.succeeded, .failed, .cancelled].contains(_status) { return true }
                    waiters.append(c)
                    return false
                }
                if done { c.resume() }
            }
        } onCancel: { self.cancel() }
    }

    public func cancel() { locked { _cancelled = true } }
    public func interrupt() { locked { _interrupted = true } }
    public func skip() { locked { _skipped = true } }
    var skipRequested: Bool { locked { _skipped } }

    /// Step events until the job ends (a finished job yields its final event at once).
    public func events() -> AsyncStream<JobEvent> {
        AsyncStream(bufferingPolicy: .bufferingNewest(64)) { c in
            let key = UUID()
            let done = locked { () -> Bool in
                if [.succeeded, .failed, .cancelled].contains(_status) { return true }
                listeners[key] = c
                return false
            }
            if done {
                c.yield(JobEvent(name: "done", data: ["id": .string(id), "status": .string(status.rawValue), "images": .int(images.count)]))
                c.finish()
            }
            c.onTermination = { [weak self] _ in self?.locked { _ = self?.listeners.removeValue(forKey: key) } }
        }
    }

    private func emit(_ e: JobEvent) {
        let ls = locked { Array(listeners.values) }
        ls.forEach { $0.yield(e) }
    }
}

/// The bounded FIFO and its worker threads: a worker takes the oldest waiting job whose model is not running.
public final class JobQueue: @unchecked Sendable {
    public let capacity: Int
    /// Models that may generate at the same time (worker threads).
    public let workers: Int
    private let cond = NSCondition()
    private var pending: [Job] = []
    private var runningJobs: [Job] = []
    private var history: [String: Job] = [:]
    private var order: [String] = []
    private var stopping = false
    private var durations: [Double] = []
    private let execute: (Job) -> Void
    private let modelKey: (GenerationSpec) -> String
    private let done = DispatchSemaphore(value: 0)
    /// Finished jobs kept for GET /ldm/v1/jobs/{id} (their images included).
    static let historyLimit = 64

    public init(capacity: Int, workers: Int = 1, modelKey: @escaping (GenerationSpec) -> String = { $0.model ?? "" },
                execute: @escaping (Job) -> Void) {
        self.capacity = max(1, capacity)
        self.workers = max(1, workers)
        self.execute = execute
        self.modelKey = modelKey
        for i in 0..<self.workers {
            let t = Thread { [weak self] in self?.loop() }
            t.name = "ldm-generation-\(i)"
            t.stackSize = 16 << 20
            t.start()
        }
    }

    /// Queues a job; 429 with Retry-After when `capacity` jobs are already waiting.
    public func submit(_ spec: GenerationSpec) throws -> Job {
        let key = modelKey(spec)
        cond.lock()
        defer { cond.unlock() }
        guard !stopping else { throw APIError(.serviceUnavailable, "shutting down", "the server is stopping") }
        guard pending.count < capacity else {
            var e = APIError(.tooManyRequests, "queue full", "\(pending.count) jobs are waiting; retry later")
            let avg = durations.isEmpty ? 10 : durations.reduce(0, +) / Double(durations.count)
            e.headers[.retryAfter] = String(max(1, Int((avg * Double(pending.count) / Double(workers)).rounded(.up))))
            throw e
        }
        let job = Job(spec: spec, modelKey: key)
        pending.append(job)
        remember(job)
        cond.broadcast()
        return job
    }

    private func remember(_ job: Job) {
        history[job.id] = job
        order.append(job.id)
        // Forget the oldest finished jobs beyond the limit (queued/running ones are never dropped).
        while order.count > Self.historyLimit + capacity + workers,
              let i = order.firstIndex(where: { history[$0]?.isFinished ?? true }) {
            history.removeValue(forKey: order.remove(at: i))
        }
    }

    public func job(_ id: String) -> Job? {
        cond.lock()
        defer { cond.unlock() }
        return history[id]
    }
    /// The most recently started running job (A1111's one global state).
    public var current: Job? {
        cond.lock()
        defer { cond.unlock() }
        return runningJobs.last
    }
    /// Every running job, oldest first.
    public var running: [Job] {
        cond.lock()
        defer { cond.unlock() }
        return runningJobs
    }
    public var queued: [Job] {
        cond.lock()
        defer { cond.unlock() }
        return pending
    }
    /// The running job, or else the last one that ran (A1111's progress shows the finished state until the next).
    public var latest: Job? {
        cond.lock()
        defer { cond.unlock() }
        return runningJobs.last ?? order.reversed().lazy.compactMap { self.history[$0] }.first { $0.started != nil }
    }

    /// Cancels a job: removed from the queue (its slot freed) or stopped at the next step.
    @discardableResult public func cancel(_ id: String) -> Job? {
        cond.lock()
        guard let job = history[id] else {
            cond.unlock()
            return nil
        }
        job.cancel()
        let wasPending = pending.contains { $0 === job }
        pending.removeAll { $0 === job }
        cond.unlock()
        if wasPending { job.finish(.cancelled) }
        return job
    }

    private func loop() {
        while true {
            cond.lock()
            var next: Job?
            while true {
                if stopping && pending.isEmpty { break }
                if let i = pending.firstIndex(where: { j in !runningJobs.contains { $0.modelKey == j.modelKey } }) {
                    next = pending.remove(at: i)
                    break
                }
                cond.wait()
            }
            guard let job = next else {
                cond.unlock()
                break
            }
            runningJobs.append(job)
            cond.unlock()
            if job.isCancelled { job.finish(.cancelled) } else {
                let t0 = Date()
                execute(job)
                let dt = Date().timeIntervalSince(t0)
                cond.lock()
                durations.append(dt)
                if durations.count > 20 { durations.removeFirst() }
                cond.unlock()
            }
            // A job of the same model may be waiting for this one: wake every worker.
            cond.lock()
            runningJobs.removeAll { $0 === job }
            cond.broadcast()
            cond.unlock()
        }
        done.signal()
    }

    /// Stops accepting jobs, cancels the waiting ones, interrupts the running ones and waits for the workers to end.
    public func shutdown() {
        cond.lock()
        if stopping {
            cond.unlock()
            return
        }
        stopping = true
        let waiting = pending
        pending = []
        let r = runningJobs
        cond.broadcast()
        cond.unlock()
        waiting.forEach {
            $0.cancel()
            $0.finish(.cancelled)
        }
        r.forEach { $0.cancel() }
        for _ in 0..<workers { done.wait() }
    }
}
