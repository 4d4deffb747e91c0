// The command line's file checks, made before any model is loaded: inputs that must be readable files, the model
// path (a diffusers folder with model_index.json or a single file), and the PNG outputs (an existing folder, never
// an existing file without --overwrite). The library takes URLs and data; what a user typed is checked here.
import Foundation

enum FileChecks {
    /// A regular, readable file (`what` names it in the message: "init image", "mask").
    static func readableFile(_ path: String, what: String) throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw CLIError("\(what) \(path) does not exist")
        }
        guard !isDir.boolValue else {
            throw CLIError("\(what) \(path) is a directory, not a file")
        }
        guard FileManager.default.isReadableFile(atPath: path) else {
            throw CLIError("\(what) \(path) is not readable")
        }
    }

    /// A model: a diffusers folder (with model_index.json) or a single .safetensors / .ckpt file.
    static func modelPath(_ path: String) throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw CLIError("model \(path) does not exist")
        }
        if isDir.boolValue {
            guard FileManager.default.fileExists(atPath: (path as NSString).appendingPathComponent("model_index.json")) else {
                throw CLIError("model folder \(path) has no model_index.json (not a diffusers pipeline folder)")
            }
        } else {
            guard FileManager.default.isReadableFile(atPath: path) else {
                throw CLIError("model \(path) is not readable")
            }
        }
    }

    /// The PNG paths written for `batch` images: FILE itself, or FILE-1.png ... FILE-n.png.
    static func outputPaths(_ output: String, batch: Int) -> [String] {
        guard batch > 1 else {
            return [output]
        }
        let url = URL(fileURLWithPath: output)
        let ext = url.pathExtension.isEmpty ? "png" : url.pathExtension
        let stem = url.deletingPathExtension().path
        return (1...batch).map { "\(stem)-\($0).\(ext)" }
    }

    /// Output files: .png, in an existing folder, not existing unless `overwrite`.
    static func outputs(_ paths: [String], overwrite: Bool) throws {
        for p in paths {
            guard p.lowercased().hasSuffix(".png") else {
                throw CLIError("output \(p) must end in .png")
            }
            let dir = URL(fileURLWithPath: p).deletingLastPathComponent().path
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
                throw CLIError("output folder \(dir) does not exist")
            }
            if FileManager.default.fileExists(atPath: p), !overwrite {
                throw CLIError("\(p) already exists (pass --overwrite to replace it)")
            }
        }
    }
}
