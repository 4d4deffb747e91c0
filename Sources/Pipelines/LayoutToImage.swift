// Layout-to-image with CompVis' layout model (models/ldm/layout2img-openimages256/config.yaml: LatentDiffusion,
// cond_stage_key coordinates_bbox, BERTEmbedder(use_tokenizer=False, vocab_size 8192, max_seq_len 92), crossattn,
// VQModelInterface f = 4, 256 px), as CompVis samples it (notebook_helpers.py make_convolutional_sample /
// convsample_ddim, the README's "200 DDIM steps, eta=0"):
//   c = get_learned_conditioning(tokens) = BERTEmbedder(tokens) = TransformerWrapper(tokens, return_embeddings=True),
//   tokens = taming's ObjectsBoundingBoxConditionalBuilder.build(objects) (Tokenizers);
//   DDIMSampler.sample(S, batch_size, shape, conditioning=c, eta) from torch.randn, no classifier-free guidance;
//   decode_first_stage: VQModelInterface.decode(z / scale_factor) with quantization; clamp((x + 1) / 2).
// The objects come in the JSON format of `LayoutObject.parseList` (validated here, before any model is loaded).
import Conditioning
import Foundation
import TensorCore
import Tokenizers

/// One object of a layout: a class (number, or an Open Images name) and a box in [0, 1] image coordinates.
public struct LayoutObject: Equatable {
    public var classNumber: Int
    /// Corners x0, y0, x1, y1 relative to the image (0 = left/top, 1 = right/bottom).
    public var box: [Double]
    public var groupOf = false, occluded = false, depiction = false, inside = false

    public init(classNumber: Int, box: [Double], groupOf: Bool = false, occluded: Bool = false, depiction: Bool = false, inside: Bool = false) {
        self.classNumber = classNumber
        self.box = box
        self.groupOf = groupOf
        self.occluded = occluded
        self.depiction = depiction
        self.inside = inside
    }

    /// taming's Annotation: bbox (x0, y0, x1 - x0, y1 - y0), as its Open Images loader builds it from XMin/XMax.
    public var annotation: ObjectsBoundingBoxConditionalBuilder.Annotation {
        .init(categoryNo: classNumber, bbox: .init(corners: box[0], box[1], box[2], box[3]), isGroupOf: groupOf,
              isOccluded: occluded, isDepiction: depiction, isInside: inside)
    }

    static let keys: Set<String> = ["class", "box", "group_of", "occluded", "depiction", "inside"]

    /// Parses and validates a layout file: a JSON list of objects, or {"objects": [...]}; each object
    /// {"class": number or name, "box": [x0, y0, x1, y1], "group_of"/"occluded"/"depiction"/"inside": true|false}.
    /// Class numbers must be below `objectClasses`; names are looked up (case-insensitively) in `classNames`. Boxes
    /// must lie in [0, 1] with x0 < x1 and y0 < y1; at most `maxObjects` objects (taming would drop the rest).
    public static func parseList(_ data: Data, classNames: [String], objectClasses: Int, maxObjects: Int) throws -> [LayoutObject] {
        let root: Any
        do { root = try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]) } catch {
            throw PipelineError.invalidLayout("layout: not valid JSON (\(error.localizedDescription))")
        }
        let list: [Any]
        if let l = root as? [Any] {
            list = l
        } else if let d = root as? [String: Any], d.count == 1, let l = d["objects"] as? [Any] {
            list = l
        } else {
            throw PipelineError.invalidLayout("layout: expected a JSON list of objects or {\"objects\": [...]}")
        }
        guard list.count <= maxObjects else {
            throw PipelineError.invalidLayout("layout: \(list.count) objects, more than the model's \(maxObjects)")
        }
        var lower: [String: Int] = [:]
        for (i, n) in classNames.enumerated() { lower[n.lowercased()] = i }
        return try list.enumerated().map { i, item in
            let at = "layout objects[\(i)]"
            guard let o = item as? [String: Any] else { throw PipelineError.invalidLayout("\(at): expected an object {\"class\": ..., \"box\": [x0, y0, x1, y1]}") }
            if let k = o.keys.sorted().first(where: { !keys.contains($0) }) {
                throw PipelineError.invalidLayout("\(at): unknown key \"\(k)\" (class, box, group_of, occluded, depiction, inside)")
            }
            let number: Int
            switch o["class"] {
            case nil: throw PipelineError.invalidLayout("\(at): no \"class\"")
            case let s as String:
                guard let k = lower[s.trimmingCharacters(in: .whitespaces).lowercased()] else {
                    throw PipelineError.invalidLayout("\(at): unknown class name \"\(s)\" (\(classNames.count) Open Images names, e.g. \"\(classNames.prefix(3).joined(separator: "\", \""))\"; or a class number)")
                }
                number = k
            case let n as NSNumber where !isBool(n):
                let d = n.doubleValue
                guard d == d.rounded(), let k = Int(exactly: d) else { throw PipelineError.invalidLayout("\(at): class \(n) is not an integer") }
                number = k
            case let v?: throw PipelineError.invalidLayout("\(at): class must be a number or a name, got \(v)")
            }
            guard number >= 0, number < objectClasses else {
                throw PipelineError.invalidLayout("\(at): class \(number) is outside 0..<\(objectClasses)")
            }
            guard let b = o["box"] as? [Any], b.count == 4 else {
                throw PipelineError.invalidLayout("\(at): \"box\" must be [x0, y0, x1, y1] (four numbers in [0, 1])")
            }
            let box = try b.map { v -> Double in
                guard let n = v as? NSNumber, !isBool(n), n.doubleValue.isFinite else {
                    throw PipelineError.invalidLayout("\(at): box values must be numbers, got \(v)")
                }
                return n.doubleValue
            }
            guard box.allSatisfy({ (0...1).contains($0) }) else {
                throw PipelineError.invalidLayout("\(at): box \(box) reaches outside [0, 1] (coordinates are fractions of the image width and height)")
            }
            guard box[0] < box[2], box[1] < box[3] else {
                throw PipelineError.invalidLayout("\(at): box \(box) is empty or inverted (need x0 < x1 and y0 < y1)")
            }
            var flags: [String: Bool] = [:]
            for k in ["group_of", "occluded", "depiction", "inside"] {
                guard let v = o[k] else { continue }
                guard let n = v as? NSNumber, isBool(n) else { throw PipelineError.invalidLayout("\(at): \"\(k)\" must be true or false") }
                flags[k] = n.boolValue
            }
            return LayoutObject(classNumber: number, box: box, groupOf: flags["group_of"] ?? false, occluded: flags["occluded"] ?? false,
                                depiction: flags["depiction"] ?? false, inside: flags["inside"] ?? false)
        }
    }

    /// The objects as one line of JSON in the input format (class numbers, shortest decimal coordinates, flags only
    /// when set): what `ldm layout` records in the PNG's parameters, readable by `parseList`.
    public static func encodeList(_ objects: [LayoutObject]) -> String {
        "[" + objects.map { o in
            var parts = ["\"class\": \(o.classNumber)", "\"box\": [" + o.box.map { "\($0)" }.joined(separator: ", ") + "]"]
            for (k, v) in [("group_of", o.groupOf), ("occluded", o.occluded), ("depiction", o.depiction), ("inside", o.inside)] where v {
                parts.append("\"\(k)\": true")
            }
            return "{" + parts.joined(separator: ", ") + "}"
        }.joined(separator: ", ") + "]"
    }

    /// JSON true/false: JSONSerialization gives them as __NSCFBoolean (Linux and Darwin), numbers as NSNumber.
    static func isBool(_ n: NSNumber) -> Bool { String(describing: type(of: n)).contains("Boolean") }
}

public final class LayoutToImagePipeline {
    public static let defaultSteps = 50
    public let bundle: ModelBundle
    public let builder: ObjectsBoundingBoxConditionalBuilder
    let bert: LDMBertModel

    /// `objectClasses`: the builder's no_object_classes (what group/occluded/depiction/inside flags are multiples of);
    /// default the 340 Open Images classes.
    public init(bundle: ModelBundle, objectClasses: Int? = nil) throws {
        guard let b = bundle.layoutBuilder, let bert = bundle.bert else {
            throw PipelineError.wrongModelKind(model: bundle.url.path, kind: bundle.kind, task: .layout)
        }
        guard bundle.firstStage != nil else { throw PipelineError.invalidModel(bundle.url.path, "a layout model needs a first stage") }
        self.bundle = bundle
        self.bert = bert
        builder = try objectClasses.map {
            try ObjectsBoundingBoxConditionalBuilder(noObjectClasses: $0, noMaxObjects: b.noMaxObjects, noTokens: b.noTokens,
                                                     encodeCrop: b.encodeCrop, useGroupParameter: b.useGroupParameter,
                                                     useAdditionalParameters: b.useAdditionalParameters)
        } ?? b
    }

    /// taming's build(objects) with the objects in the given order and the full image as crop.
    public func tokens(_ objects: [LayoutObject]) throws -> [Int] {
        guard objects.count <= builder.noMaxObjects else {
            throw PipelineError.invalidLayout("layout: \(objects.count) objects, more than the model's \(builder.noMaxObjects)")
        }
        do { return try builder.build(objects.map(\.annotation)) } catch { throw PipelineError.invalidLayout("layout: \(error)") }
    }

    /// The denoised latents (B, C, H / f, W / f) for a layout's tokens.
    public func sampleLatents(tokens: [Int], _ o: SamplingOptions, width: Int? = nil, height: Int? = nil, generator: RandomSource,
                              progress: ProgressHandler? = nil) throws -> Tensor {
        try o.validate()
        let f = bundle.vaeScaleFactor
        let channels = bundle.unet.config.inChannels
        let (h, w) = (height ?? bundle.defaultImageSize, width ?? bundle.defaultImageSize)
        try Validation.checkSize(width: w, height: h, multiple: f)
        guard channels == bundle.latentChannels, channels == bundle.unet.config.outChannels else {
            throw PipelineError("the UNet takes \(channels) channels but the first stage has \(bundle.latentChannels) latent channels")
        }
        let c = try GradMode.noGrad { try bert(inputIDs: [[Int]](repeating: tokens, count: o.batchSize)) }
        let den = Denoiser(unet: bundle.unet, context: c)
        let run = try GenerationRun(o, schedulerConfig: bundle.schedulerConfig, generator: generator, progress: progress)
        return try run.latents(.noise(shape: [o.batchSize, channels, h / f, w / f]), den)
    }

    /// `o.batchSize` images of one layout.
    public func layoutToImage(_ objects: [LayoutObject], _ o: SamplingOptions, width: Int? = nil, height: Int? = nil,
                              generator: RandomSource, progress: ProgressHandler? = nil) throws -> GenerationResult {
        let z = try sampleLatents(tokens: tokens(objects), o, width: width, height: height, generator: generator, progress: progress)
        return try decodeLatents(z, firstStage: bundle.firstStage, scaled: true)  // z / scale_factor, quantized
    }
}
