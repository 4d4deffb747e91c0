import Checkpoints
import Foundation
import NeuralNetwork

// Loading a model the way diffusers ModelMixin.from_pretrained / transformers PreTrainedModel.from_pretrained do
// for one component folder (config.json + weights), with strict checking of every parameter.

extension UNet2DConditionModel {
    /// A UNet from a diffusers component (e.g. `DiffusersFolder(url:).component("unet")`) or a lone model folder.
    public convenience init(pretrained component: DiffusersComponent) throws {
        guard let data = component.configData else { throw UNetError("\(component.folder.path): no config.json for the UNet") }
        try self.init(configData: data)
        try load(component.tensors(), component: component.name.isEmpty ? "unet" : component.name)
    }

    /// A UNet from a folder holding config.json and diffusion_pytorch_model(.fp16).safetensors / .bin.
    public convenience init(pretrainedFolder url: URL, variant: String? = nil) throws {
        let folder = try DiffusersFolder(url: url, variant: variant)
        guard let component = folder.component("unet") ?? folder.components.first(where: { $0.name.isEmpty }) else {
            throw UNetError("\(url.path): no unet component")
        }
        try self.init(pretrained: component)
    }
}
