// The scheduler interface, shaped like diffusers SchedulerMixin subclasses (schedulers/scheduling_utils.py) as the
// StableDiffusion pipelines drive them (pipelines/stable_diffusion/pipeline_stable_diffusion*.py).
import TensorCore

/// A stateful sampler. Usage, as in diffusers' denoising loop:
///
///     try s.setTimesteps(steps)
///     var x = noise.map { $0 * Float(s.initNoiseSigma) }
///     for i in s.timesteps.indices {
///         let eps = model(s.scaleModelInput(x, stepIndex: i), s.timesteps[i])
///         x = try s.step(modelOutput: eps, stepIndex: i, sample: x, noise: generator)
///     }
///
/// `stepIndex` is the position in `timesteps` (absolute, also for img2img, which starts at `img2imgStartIndex`).
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
    func scaleModelInput(_ x: [Float], stepIndex: Int) -> [Float]
    /// One denoising step. Ancestral samplers draw their noise from `noise` in diffusers' order
    /// (one `randn(shape)` per step); `nil` means a zero noise contribution is impossible, so they throw.
    func step(modelOutput: [Float], stepIndex: Int, sample: [Float], noise: RandomSource?) throws -> [Float]
    /// Forward diffusion of clean latents to the noise level of `timesteps[stepIndex]` (img2img).
    func addNoise(original: [Float], noise: [Float], stepIndex: Int) -> [Float]
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
}

// MARK: - elementwise helpers (latents are small; accumulate in Double, store Float)

@inline(__always) func lincomb(_ a: Double, _ x: [Float], _ b: Double, _ y: [Float]) -> [Float] {
    precondition(x.count == y.count, "latent sizes differ: \(x.count) vs \(y.count)")
    var out = [Float](repeating: 0, count: x.count)
    for i in x.indices { out[i] = Float(a * Double(x[i]) + b * Double(y[i])) }
    return out
}

/// sum_k coeffs[k] * arrays[k], elementwise in Double.
func combine(_ coeffs: [Double], _ arrays: [[Float]]) -> [Float] {
    var acc = [Double](repeating: 0, count: arrays[0].count)
    for (c, a) in zip(coeffs, arrays) { for i in acc.indices { acc[i] += c * Double(a[i]) } }
    return acc.map { Float($0) }
}

@inline(__always) func scaled(_ x: [Float], _ a: Double) -> [Float] { x.map { Float(Double($0) * a) } }

func checkSizes(_ a: [Float], _ b: [Float], _ what: String) throws {
    guard a.count == b.count else {
        throw DiffusionError.invalidArgument("\(what): model output has \(a.count) values, sample has \(b.count)")
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
func predictX0(_ pred: PredictionType, modelOutput m: [Float], sample x: [Float], alphaProd a: Double) -> (x0: [Float], eps: [Float]) {
    let sa = a.squareRoot(), sb = (1 - a).squareRoot()
    switch pred {
    case .epsilon:
        return (lincomb(1 / sa, x, -sb / sa, m), m)
    case .sample:
        return (m, lincomb(1 / sb, x, -sa / sb, m))
    case .vPrediction:
        return (lincomb(sa, x, -sb, m), lincomb(sa, m, sb, x))
    }
}
