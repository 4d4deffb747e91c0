// Diffusers pipeline folders (diffusers pipelines/pipeline_utils.py `DiffusionPipeline.from_pretrained`,
// models/modeling_utils.py weight names): model_index.json lists components as
// [library, class]; each component folder has config.json (or scheduler_config.json) and weights
// diffusion_pytorch_model[.fp16].safetensors / model.safetensors / *.bin, possibly sharded
// through `<weights>.index[.fp16].json` {"weight_map": {tensor: shard}}.
import Foundation

public struct DiffusersComponent {
    public let name: String
    public let library: String?
    public let className: String?
    public let folder: URL
    public let configURL: URL?
    public let configData: Data?
    public let config: [String: Any]?
    /// Weight files in load order (one, or the shards of an index).
    public let weightFiles: [URL]
    public let variant: String?

    /// This component's tensors (safetensors or torch .bin), merged across shards.
    public func tensors() throws -> [String: TensorRecord] {
        var out: [String: TensorRecord] = [:]
        for f in weightFiles {
            let part = try CheckpointFile.openFile(f).tensors
            for (k, v) in part {
                guard out[k] == nil else { throw CheckpointError("\(name): tensor \(k) appears in two shards") }
                out[k] = v
            }
        }
        return out
    }
}

public struct DiffusersFolder {
    public let url: URL
    public let modelIndexData: Data?
    public let modelIndex: [String: Any]?
    public let className: String?
    public let components: [DiffusersComponent]

    static let weightBases = ["diffusion_pytorch_model.safetensors", "model.safetensors",
                              "diffusion_pytorch_model.bin", "pytorch_model.bin"]
    static let configNames = ["config.json", "scheduler_config.json", "preprocessor_config.json", "tokenizer_config.json"]

    public static func isFolder(_ url: URL) -> Bool {
        var dir: ObjCBool = false
        return FileManager.default.fileExists(atPath: url.path, isDirectory: &dir) && dir.boolValue
    }

    /// `variant` is preferred ("fp16"); without it non-variant files come first, variants are the fallback.
    public init(url: URL, variant: String? = nil) throws {
        self.url = url
        let indexURL = url.appendingPathComponent("model_index.json")
        if FileManager.default.fileExists(atPath: indexURL.path) {
            let d = try Data(contentsOf: indexURL)
            guard let idx = try? JSONSerialization.jsonObject(with: d) as? [String: Any] else {
                throw CheckpointError("\(indexURL.path): not a JSON object")
            }
            modelIndexData = d
            modelIndex = idx
            className = idx["_class_name"] as? String
            var comps: [DiffusersComponent] = []
            for key in idx.keys.sorted() where !key.hasPrefix("_") {
                guard let pair = idx[key] as? [Any], pair.count == 2, let lib = pair[0] as? String, let cls = pair[1] as? String else { continue }
                let folder = url.appendingPathComponent(key)
                guard DiffusersFolder.isFolder(folder) else { throw CheckpointError("\(url.path): component folder \(key)/ is missing") }
                comps.append(try DiffusersFolder.component(key, lib, cls, folder, variant))
            }
            components = comps
        } else if FileManager.default.fileExists(atPath: url.appendingPathComponent("config.json").path) {
            modelIndexData = nil
            modelIndex = nil
            let c = try DiffusersFolder.component("", nil, nil, url, variant)
            className = c.config?["_class_name"] as? String ?? (c.config?["architectures"] as? [String])?.first
            components = [c]
        } else {
            throw CheckpointError("\(url.path): neither model_index.json nor config.json found")
        }
    }

    public func component(_ name: String) -> DiffusersComponent? { components.first { $0.name == name } }

    static func component(_ name: String, _ lib: String?, _ cls: String?, _ folder: URL, _ variant: String?) throws -> DiffusersComponent {
        var cfgURL: URL?, cfgData: Data?, cfg: [String: Any]?
        for n in configNames {
            let u = folder.appendingPathComponent(n)
            if FileManager.default.fileExists(atPath: u.path) {
                let d = try Data(contentsOf: u)
                guard let o = try? JSONSerialization.jsonObject(with: d) as? [String: Any] else {
                    throw CheckpointError("\(u.path): not a JSON object")
                }
                cfgURL = u
                cfgData = d
                cfg = o
                break
            }
        }
        let (files, used) = try weights(in: folder, variant: variant)
        return DiffusersComponent(name: name, library: lib, className: cls, folder: folder, configURL: cfgURL,
                                  configData: cfgData, config: cfg, weightFiles: files, variant: used)
    }

    /// diffusers `_add_variant`: "a.b.safetensors" + fp16 -> "a.b.fp16.safetensors".
    public static func addVariant(_ name: String, _ variant: String?) -> String {
        guard let v = variant else { return name }
        var parts = name.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        parts.insert(v, at: parts.count - 1)
        return parts.joined(separator: ".")
    }

    static func weights(in folder: URL, variant: String?) throws -> ([URL], String?) {
        let fm = FileManager.default
        let order: [String?] = variant == nil ? [nil, "fp16"] : [variant, nil]
        for v in order {
            for base in weightBases {
                let single = folder.appendingPathComponent(addVariant(base, v))
                if fm.fileExists(atPath: single.path) { return ([single], v) }
                let index = folder.appendingPathComponent(addVariant(base + ".index.json", v))
                if fm.fileExists(atPath: index.path) {
                    let d = try Data(contentsOf: index)
                    guard let o = try? JSONSerialization.jsonObject(with: d) as? [String: Any],
                          let map = o["weight_map"] as? [String: String] else {
                        throw CheckpointError("\(index.path): no weight_map")
                    }
                    var shards: [String] = []
                    for f in Set(map.values).sorted() {
                        guard !f.contains("/"), !f.hasPrefix(".") else { throw CheckpointError("\(index.path): bad shard name \(f)") }
                        shards.append(f)
                    }
                    return (shards.map { folder.appendingPathComponent($0) }, v)
                }
            }
        }
        return ([], nil)
    }
}
