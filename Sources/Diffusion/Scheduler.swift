// The scheduler interface, shaped like diffusers SchedulerMixin subclasses (schedulers/scheduling_utils.py) as the
// StableDiffusion pipelines drive them (pipelines/stable_diffusion/pipeline_stable_diffusion*.py).
import TensorCore

/// A stateful sampler. Latents are one shaped float32 `Tensor` (NCHW in the pipelines; the schedulers work elementwise
/// and accept any shape). Usage, as in diffusers' denoising loop:
///
///     try s.setTimesteps(steps)
///     var x = s.scaleInitialNoise(Tensor.randn(shape, generator: generator))
///     for i in s.timesteps.indices {
///         let eps = model(s.scaleModelInput(x, stepIndex: i), s.timesteps[i])
///         x = try s.step(modelOutput: eps, stepIndex: i, sample: x, noise: generator)
///     }
///
/// `stepIndex` is the position in `timesteps` (absolute, also for img2img, which starts at `img2imgStartIndex`).
/// What diffusers passes to `step` besides the latents (DDIM's `eta`, TCD's `gamma`) is given when the scheduler is
/// built (`SchedulerFactory.make(_:config:eta:)`).
public protocol Scheduler: AnyObject {
    var config: SchedulerConfig { get }
    /// What is fed to the model at each step (integers for most schedulers, fractional for Karras sigmas).
    var timesteps: [Double] { get }
    /// diffusers `scheduler.order`: model evaluations per inference step in `timesteps` (2 for Heun).
    var order: Int { get }
    /// Scale of the initial Gaussian latents.
    var initNoiseSigma: Double { get }
    /// The number of inference steps last passed to `setTimesteps`.
    var numInferenceSteps: Int { get }
    func setTimesteps(_ steps: Int) throws
    func scaleModelInput(_ x: Tensor, stepIndex: Int) -> Tensor
    /// One denoising step; `modelOutput` has the shape of `sample`. Ancestral samplers draw their noise from `noise`
    /// in diffusers' order (one `randn(shape)` per step); `nil` means a zero noise contribution is impossible, so
    /// they throw.
    func step(modelOutput: Tensor, stepIndex: Int, sample: Tensor, noise: RandomSource?) throws -> Tensor
    /// Forward diffusion of clean latents to the noise level of `timesteps[stepIndex]` (img2img).
    func addNoise(original: Tensor, noise: Tensor, stepIndex: Int) -> Tensor
    /// diffusers `set_begin_index`, called by img2img pipelines.
    func setBeginIndex(_ index: Int)
}

extension Scheduler {
    /// diffusers img2img `get_timesteps(num_inference_steps, strength)`: the index into `timesteps` where
    /// denoising starts (call after `setTimesteps`). Also sets the begin index as the pipeline does.
    @discardableResult
    public func img2imgStartIndex(strength: Double) throws -> Int {
        guard strength >= 0, strength <= 1 else {
            throw DiffusionError.invalidArgument("strength must be in [0, 1], got \(strength)")
        }
        let n = numInferenceSteps
        let initTimestep = min(Int(Double(n) * strength), n)
        let tStart = max(n - initTimestep, 0)
        setBeginIndex(tStart * order)
        return min(tStart * order, timesteps.count)
    }

    /// The SDXL pipelines' discrete timestep cutoff of a fraction of the schedule:
    /// round(num_train_timesteps - fraction * num_train_timesteps) (Python's round, half to even).
    func discreteTimestepCutoff(_ fraction: Double) -> Double {
        let n = Double(config.numTrainTimesteps ?? 1000)
        return (n - fraction * n).rounded(.toNearestOrEven)
    }

    /// StableDiffusionXLImg2ImgPipeline.get_timesteps with `denoising_start` (0 < fraction < 1, strength ignored): the
    /// index into `timesteps` where denoising starts, the timesteps below the cutoff (one more for a second-order
    /// scheduler when their count is even). Sets the begin index as the pipeline does.
    @discardableResult
    public func denoisingStartIndex(_ fraction: Double) throws -> Int {
        guard fraction > 0, fraction < 1 else {
            throw DiffusionError.invalidArgument("denoising start must be in (0, 1), got \(fraction)")
        }
        let cutoff = discreteTimestepCutoff(fraction)
        var count = timesteps.filter { $0 < cutoff }.count
        if order == 2 && count % 2 == 0 { count += 1 }
        let start = max(timesteps.count - count, 0)
        setBeginIndex(start)
        return start
    }

    /// The SDXL pipelines' `denoising_end` (0 < fraction < 1): the end (exclusive) of the steps run from `start`,
    /// keeping the timesteps at or above the discrete cutoff (counted from `start`, as the pipelines filter their
    /// already-sliced timesteps and keep that many from the front).
    public func denoisingEndIndex(_ fraction: Double, from start: Int) throws -> Int {
        guard fraction > 0, fraction < 1 else {
            throw DiffusionError.invalidArgument("denoising end must be in (0, 1), got \(fraction)")
        }
        let cutoff = discreteTimestepCutoff(fraction)
        return start + timesteps[min(start, timesteps.count)...].filter { $0 >= cutoff }.count
    }

    /// prepare_latents: `latents * init_noise_sigma`, a float32 product as in torch.
    public func scaleInitialNoise(_ noise: Tensor) -> Tensor {
        let sigma = Float(initNoiseSigma)
        return mapValues(noise) { $0 * sigma }
    }
}

// MARK: - elementwise latent arithmetic (latents are small; accumulate in Double, store Float)

/// Runs `body` on the row-major float32 values of `tensors` (copied only when strided or not float32).
@inline(__always) func withValues<R>(_ tensors: [Tensor], _ body: ([UnsafePointer<Float>]) throws -> R) rethrows -> R {
    let dense = tensors.map { $0.contiguous().float32() }
    return try withExtendedLifetime(dense) { try body(dense.map { UnsafePointer($0.data) }) }
}

/// A new float32 tensor of `shape` whose element i is `value(i)`.
@inline(__always) func makeLatents(_ shape: [Int], _ value: (Int) -> Float) -> Tensor {
    let out = Tensor.empty(shape)
    let o = out.data
    for i in 0..<out.count {
        o[i] = value(i)
    }
    return out
}

func mapValues(_ x: Tensor, _ f: (Float) -> Float) -> Tensor {
    withValues([x]) { p in
        let xp = p[0]
        return makeLatents(x.shape) { f(xp[$0]) }
    }
}

/// a * x + b * y, elementwise in Double.
func lincomb(_ a: Double, _ x: Tensor, _ b: Double, _ y: Tensor) -> Tensor {
    precondition(x.shape == y.shape, "latent shapes differ: \(x.shape) vs \(y.shape)")
    return withValues([x, y]) { p in
        let xp = p[0], yp = p[1]
        return makeLatents(x.shape) { Float(a * Double(xp[$0]) + b * Double(yp[$0])) }
    }
}

/// sum_k coeffs[k] * tensors[k], elementwise in Double.
func combine(_ coeffs: [Double], _ tensors: [Tensor]) -> Tensor {
    withValues(tensors) { p in
        var acc = [Double](repeating: 0, count: tensors[0].count)
        for (c, xp) in zip(coeffs, p) {
            for i in acc.indices {
                acc[i] += c * Double(xp[i])
            }
        }
        return makeLatents(tensors[0].shape) { Float(acc[$0]) }
    }
}

@inline(__always) func scaled(_ x: Tensor, _ a: Double) -> Tensor { mapValues(x) { Float(Double($0) * a) } }

/// clamp(x, -range, range).
func clamped(_ x: Tensor, _ range: Double) -> Tensor {
    let r = Float(range)
    return mapValues(x) { min(max($0, -r), r) }
}

/// `randn(sample.shape)` from the step's generator.
func noiseLike(_ sample: Tensor, _ source: RandomSource) -> Tensor { Tensor.randn(sample.shape, generator: source) }

func checkSizes(_ modelOutput: Tensor, _ sample: Tensor, _ what: String) throws {
    guard modelOutput.shape == sample.shape else {
        throw DiffusionError.invalidArgument("\(what): model output has shape \(modelOutput.shape), sample \(sample.shape)")
    }
}

func checkIndex(_ i: Int, _ count: Int) throws {
    guard count > 0 else { throw DiffusionError.invalidArgument("call setTimesteps before step") }
    guard i >= 0, i < count else { throw DiffusionError.invalidArgument("stepIndex \(i) outside 0..<\(count)") }
}

func requireNoise(_ noise: RandomSource?, _ who: String) throws -> RandomSource {
    guard let n = noise else { throw DiffusionError.invalidArgument("\(who) needs a random source for its noise") }
    return n
}

/// pred_original_sample / epsilon from the model output for alpha-based schedulers (DDPM, DDIM).
func predictX0(_ pred: PredictionType, modelOutput m: Tensor, sample x: Tensor, alphaProd a: Double) -> (x0: Tensor, eps: Tensor) {
    let sa = a.squareRoot()
    let sb = (1 - a).squareRoot()
    switch pred {
    case .epsilon:
        return (lincomb(1 / sa, x, -sb / sa, m), m)
    case .sample:
        return (m, lincomb(1 / sb, x, -sa / sb, m))
    case .vPrediction:
        return (lincomb(sa, x, -sb, m), lincomb(sa, m, sb, x))
    }
}
