// Library side of `ldm inspect`: CheckpointReport (CompVis ldm/models/diffusion/ddpm.py component
// prefixes, diffusers folders) of a file or folder, optionally with the LitEma weights
// (ldm/modules/ema.py) substituted for the model weights.
import Checkpoints
import Foundation

public enum Inspection {
    public static func report(path: String, variant: String? = nil, maxTensors: Int = .max, ema: Bool = false) throws -> String {
        let url = URL(fileURLWithPath: path)
        guard FileManager.default.fileExists(atPath: url.path) else { throw CheckpointError("\(path): no such file or folder") }
        var file = try CheckpointFile.open(url, variant: variant)
        if ema {
            guard let t = file.emaTensors else { throw CheckpointError("\(path): no EMA weights (model_ema.*) in this checkpoint") }
            file = CheckpointFile(url: file.url, format: file.format, tensors: t, metadata: file.metadata,
                                  diffusers: file.diffusers, torch: file.torch)
        }
        var out = CheckpointReport.make(file, title: path, maxTensors: maxTensors)
        if ema { out = out.replacingOccurrences(of: "\ntensors: ", with: "\nweights: EMA (model_ema.*) substituted for model.*\ntensors: ") }
        return out
    }
}
