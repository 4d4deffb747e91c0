// Reads a CompVis YAML config (configs/latent-diffusion/*.yaml, configs/stable-diffusion/v*-inference*.yaml) with
// Yams, as CompVis scripts do with OmegaConf.load: the top level must be a mapping. Errors name the file.
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
