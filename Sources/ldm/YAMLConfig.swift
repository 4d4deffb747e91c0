// Reads a CompVis YAML config (configs/latent-diffusion/*.yaml, configs/stable-diffusion/v*-inference*.yaml) with
// Yams, as CompVis scripts do with OmegaConf.load: the top level must be a mapping. Errors name the file. A command
// reads its --config once: the typed configuration (CompVis.CompVisModelConfig) is kept for the process.
import CompVis
import Foundation
import Pipelines
import Yams

func loadYAMLMapping(_ path: String) throws -> [String: Any] {
    let text: String
    do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
        throw CLIError("--config \(path) cannot be read: \(error.localizedDescription)")
    }
    let value: Any?
    do { value = try Yams.load(yaml: text) } catch { throw CLIError("--config \(path) is not valid YAML: \(error)") }
    guard let mapping = value as? [String: Any] else { throw CLIError("--config \(path) is not a YAML mapping") }
    return mapping
}

/// `--config` files read and typed once per process (a command checks, summarizes and loads the same model).
final class CompVisConfigCache: @unchecked Sendable {
    static let shared = CompVisConfigCache()
    private let lock = NSLock()
    private var configs: [String: CompVisModelConfig] = [:]

    /// The configuration of the YAML at `path` (errors are not kept: the command stops on the first).
    func config(_ path: String) throws -> CompVisModelConfig {
        lock.lock()
        defer { lock.unlock() }
        if let c = configs[path] { return c }
        let c = try CompVisModelConfig(yaml: loadYAMLMapping(path))
        configs[path] = c
        return c
    }
}
