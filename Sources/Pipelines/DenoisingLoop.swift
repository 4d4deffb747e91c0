// The one denoising loop behind every pipeline: diffusers' `for i, t in enumerate(timesteps)` loop
// (pipeline_stable_diffusion.py) with the img2img start (get_timesteps) and the 4-channel inpainting blend of
// pipeline_stable_diffusion_inpaint.py (init_latents_proper noised to timesteps[i + 1], then
// (1 - mask) * init_latents_proper + mask * latents), which is also what CompVis' DDIMSampler does with `mask`/`x0`.
import Diffusion
import Foundation
import TensorCore

/// Called after each model evaluation with (step, total); return false to cancel (the loop throws .cancelled).
public typealias ProgressHandler = (_ step: Int, _ total: Int) -> Bool

/// Sees the latents after every denoising step (the server's live previews), for the loops run by `body` on the
/// calling thread: `DenoisingObserver.with(observer) { ... }` (a thread-dictionary entry, so it also works on plain
/// threads outside Swift tasks).
public enum DenoisingObserver {
    public typealias Observer = (_ latents: [Float], _ shape: [Int]) -> Void
    final class Box { let f: Observer; init(_ f: @escaping Observer) { self.f = f } }
    static let key = "LatentDiffusion.DenoisingObserver"

    public static func with<T>(_ observer: @escaping Observer, _ body: () throws -> T) rethrows -> T {
        let d = Thread.current.threadDictionary
        let previous = d[key]
        d[key] = Box(observer)
        defer { d[key] = previous }
        return try body()
    }

    static var current: Observer? { (Thread.current.threadDictionary[key] as? Box)?.f }
}

/// Keeps the unmasked region on the noised original (4-channel inpainting / CompVis masked sampling).
/// `mask` is 1 where new content is generated, broadcast over channels: one value per (b, y, x).
public struct LatentMask {
    public var mask: [Float]          // (B, 1, h, w)
    public var imageLatents: [Float]  // (B, C, h, w), scaled
    public var noise: [Float]         // (B, C, h, w), the initial noise
    public init(mask: [Float], imageLatents: [Float], noise: [Float]) {
        self.mask = mask; self.imageLatents = imageLatents; self.noise = noise
    }

    func blend(_ x: [Float], shape: [Int], scheduler: Scheduler, stepIndex i: Int) -> [Float] {
        let proper = i < scheduler.timesteps.count - 1
            ? scheduler.addNoise(original: imageLatents, noise: noise, stepIndex: i + 1) : imageLatents
        let (b, c, hw) = (shape[0], shape[1], shape[2] * shape[3])
        var out = x
        for n in 0..<b {
            for ch in 0..<c {
                let base = (n * c + ch) * hw
                for p in 0..<hw {
                    let m = mask[n * hw + p]
                    out[base + p] = (1 - m) * proper[base + p] + m * x[base + p]
                }
            }
        }
        return out
    }
}

/// Runs `scheduler` from `startIndex` to the end on `latents` (flat NCHW, `shape`), drawing ancestral noise from
/// `generator`. The scheduler must have had `setTimesteps` called (and `img2imgStartIndex` for img2img).
public func denoise(latents: [Float], shape: [Int], scheduler: Scheduler, denoiser: Denoiser, mask: LatentMask? = nil,
                    startIndex: Int = 0, generator: RandomSource? = nil, progress: ProgressHandler? = nil) throws -> [Float] {
    guard shape.count == 4, shape.reduce(1, *) == latents.count else {
        throw PipelineError("latents have \(latents.count) values, not the shape \(shape)")
    }
    if let m = mask {
        guard m.mask.count == shape[0] * shape[2] * shape[3], m.imageLatents.count == latents.count, m.noise.count == latents.count else {
            throw PipelineError("inpainting mask/image latents do not match the latents \(shape)")
        }
    }
    let total = scheduler.timesteps.count - startIndex
    guard total >= 1 else { throw PipelineError("no denoising steps to run (start \(startIndex) of \(scheduler.timesteps.count))") }
    var x = latents
    for i in startIndex..<scheduler.timesteps.count {
        let eps = try denoiser.predict(x, shape: shape, scheduler: scheduler, stepIndex: i)
        x = try scheduler.step(modelOutput: eps, stepIndex: i, sample: x, noise: generator)
        if let m = mask { x = m.blend(x, shape: shape, scheduler: scheduler, stepIndex: i) }
        DenoisingObserver.current?(x, shape)
        if let progress, !progress(i - startIndex + 1, total) { throw PipelineError.cancelled }
    }
    return x
}
