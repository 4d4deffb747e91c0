// Input checks shared by the pipelines and the `ldm` generation commands, made before any model is loaded
// (diffusers' StableDiffusionPipeline.check_inputs / StableDiffusionImg2ImgPipeline.check_inputs, plus file checks).
import Foundation

/// Everything a pipeline or a generation command refuses, with a message naming the bad value.
public struct PipelineError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ message: String) { description = message }
    /// The progress handler returned false.
    public static let cancelled = PipelineError("generation cancelled")
}

public enum Validation {
    /// Image sizes: positive multiples of `multiple` (8 for Stable Diffusion: the VAE factor and the UNet's /8 grid).
    public static func checkSize(width: Int, height: Int, multiple: Int = 8) throws {
        for (name, v) in [("width", width), ("height", height)] {
            guard v > 0 else { throw PipelineError("\(name) must be > 0, got \(v)") }
            guard v % multiple == 0 else { throw PipelineError("\(name) must be a multiple of \(multiple), got \(v)") }
            guard v <= 16384 else { throw PipelineError("\(name) \(v) is larger than 16384") }
        }
    }

    public static func checkSteps(_ steps: Int) throws {
        guard steps >= 1 else { throw PipelineError("steps must be >= 1, got \(steps)") }
        guard steps <= 1000 else { throw PipelineError("steps must be <= 1000 (num_train_timesteps), got \(steps)") }
    }

    public static func checkStrength(_ s: Double) throws {
        guard s.isFinite, s >= 0, s <= 1 else { throw PipelineError("strength must be in [0, 1], got \(s)") }
    }

    public static func checkGuidance(_ g: Double) throws {
        guard g.isFinite else { throw PipelineError("cfg scale must be a finite number, got \(g)") }
    }

    public static func checkEta(_ eta: Double) throws {
        guard eta.isFinite, eta >= 0 else { throw PipelineError("eta must be a finite number >= 0, got \(eta)") }
    }

    public static func checkBatchSize(_ n: Int) throws {
        guard n >= 1, n <= 64 else { throw PipelineError("batch size must be in 1...64, got \(n)") }
    }

    /// img2img: diffusers raises when strength leaves no denoising step.
    public static func checkImg2ImgSteps(steps: Int, strength: Double) throws {
        guard min(Int(Double(steps) * strength), steps) >= 1 else {
            throw PipelineError("strength \(strength) with \(steps) steps leaves no denoising step (steps * strength must be >= 1)")
        }
    }

    /// A regular, readable file (`what` names it in the message: "init image", "mask").
    public static func checkReadableFile(_ path: String, what: String) throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { throw PipelineError("\(what) \(path) does not exist") }
        guard !isDir.boolValue else { throw PipelineError("\(what) \(path) is a directory, not a file") }
        guard FileManager.default.isReadableFile(atPath: path) else { throw PipelineError("\(what) \(path) is not readable") }
    }

    /// A model: a diffusers folder (with model_index.json) or a single .safetensors / .ckpt file.
    public static func checkModelPath(_ path: String) throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { throw PipelineError("model \(path) does not exist") }
        if isDir.boolValue {
            guard FileManager.default.fileExists(atPath: (path as NSString).appendingPathComponent("model_index.json")) else {
                throw PipelineError("model folder \(path) has no model_index.json (not a diffusers pipeline folder)")
            }
        } else {
            guard FileManager.default.isReadableFile(atPath: path) else { throw PipelineError("model \(path) is not readable") }
        }
    }

    /// The PNG paths written for `batch` images: FILE itself, or FILE-1.png ... FILE-n.png.
    public static func outputPaths(_ output: String, batch: Int) -> [String] {
        guard batch > 1 else { return [output] }
        let url = URL(fileURLWithPath: output)
        let ext = url.pathExtension.isEmpty ? "png" : url.pathExtension
        let stem = url.deletingPathExtension().path
        return (1...batch).map { "\(stem)-\($0).\(ext)" }
    }

    /// Output files: .png, in an existing folder, not existing unless `overwrite`.
    public static func checkOutputs(_ paths: [String], overwrite: Bool) throws {
        for p in paths {
            guard p.lowercased().hasSuffix(".png") else { throw PipelineError("output \(p) must end in .png") }
            let dir = URL(fileURLWithPath: p).deletingLastPathComponent().path
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
                throw PipelineError("output folder \(dir) does not exist")
            }
            if FileManager.default.fileExists(atPath: p), !overwrite {
                throw PipelineError("\(p) already exists (pass --overwrite to replace it)")
            }
        }
    }

    public static func checkMaskSize(image: (width: Int, height: Int), mask: (width: Int, height: Int)) throws {
        guard image == mask else {
            throw PipelineError("mask is \(mask.width)x\(mask.height) but the init image is \(image.width)x\(image.height); they must match")
        }
    }
}
