import Checkpoints
import Foundation
import NeuralNetwork
import TensorCore

// Matches transformers models/clip/modeling_clip.py `CLIPTextModelWithProjection`: the CLIP text transformer plus
// `text_projection` (Linear(hidden_size, projection_dim, bias=False)) applied to the pooled output (`text_embeds`).
// SDXL's second text encoder (OpenCLIP ViT-bigG/14 in diffusers' layout, text_encoder_2/).

extension CLIPTextConfig {
    /// projection_dim of a CLIPTextModelWithProjection config.json (transformers' default 512).
    public static func projectionDim(_ data: Data) -> Int {
        let json = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any]
        return json?["projection_dim"] as? Int ?? 512
    }
}

public final class CLIPTextModelWithProjection: Module {
    public let textModel: CLIPTextModel
    public let textProjection: Linear
    public var config: CLIPTextConfig { textModel.config }
    public var projectionDim: Int { textProjection.weight.shape[0] }

    public init(config: CLIPTextConfig, projectionDim: Int) throws {
        guard projectionDim > 0 else { throw ConditioningError("CLIP: projection_dim must be positive, got \(projectionDim)") }
        textModel = try CLIPTextModel(config: config)
        textProjection = Linear(config.hiddenSize, projectionDim, bias: false)
    }

    public convenience init(configData: Data) throws {
        try self.init(config: CLIPTextConfig.decode(configData), projectionDim: CLIPTextConfig.projectionDim(configData))
    }

    /// A CLIPTextModelWithProjection component folder (config.json + model.safetensors).
    public convenience init(pretrained component: DiffusersComponent) throws {
        guard let data = component.configData else { throw ConditioningError("\(component.folder.path): no config.json for the text encoder") }
        try self.init(configData: data)
        try load(CLIPTextModel.normalizedKeys(try component.tensors()), component: component.name.isEmpty ? "text_encoder_2" : component.name)
    }

    /// SDXL's use: hidden_states[-(k + 1)] (k = 1: penultimate) and text_embeds (projected pooled output).
    public func hiddenStateAndTextEmbeds(_ ids: [[Int]], fromEnd k: Int) throws -> (hidden: Tensor, textEmbeds: Tensor) {
        let (hidden, pooled) = try textModel.hiddenStateAndPooled(ids, fromEnd: k)
        return (hidden, textProjection(pooled))
    }

    public var namedParameters: [(String, Tensor)] { textModel.namedParameters + scoped("text_projection", textProjection) }
}
