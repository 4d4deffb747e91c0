import Checkpoints
import Foundation
import NeuralNetwork

// Loading text encoders from a diffusers / transformers component folder (config.json + model.safetensors),
// as transformers PreTrainedModel.from_pretrained, with strict checking of every parameter.

extension CLIPTextModel {
    /// A CLIP text encoder from a component (e.g. `DiffusersFolder(url:).component("text_encoder")`).
    public convenience init(pretrained component: DiffusersComponent) throws {
        guard let data = component.configData else { throw ConditioningError("\(component.folder.path): no config.json for the text encoder") }
        try self.init(configData: data)
        try loadWeights(component.tensors())
    }
}

extension LDMBertModel {
    /// LDMBert from a component (the "bert" folder of CompVis/ldm-text2im-large-256).
    public convenience init(pretrained component: DiffusersComponent) throws {
        guard let data = component.configData else { throw ConditioningError("\(component.folder.path): no config.json for LDMBert") }
        try self.init(configData: data)
        try load(component.tensors(), component: component.name.isEmpty ? "bert" : component.name)
    }
}
