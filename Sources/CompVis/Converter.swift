// Library side of `ldm convert`: any readable checkpoint (torch zip, safetensors, diffusers folder)
// to one safetensors file, a diffusers folder to one CompVis-named file, a CompVis file to a diffusers
// folder (as diffusers/loaders/single_file_utils.py and scripts/convert_diffusers_to_original_stable_diffusion.py
// do, with the per-component tables of PipelineLayout.swift). Outputs are written atomically; dtype casts round
// to nearest even as torch's Tensor.to(dtype) does.
import Checkpoints
import Conditioning
import Foundation
import Tokenizers
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public struct ConvertOptions {
    public enum Target: String, CaseIterable, Sendable { case safetensors, diffusers, compvis }
    public enum DType: String, CaseIterable, Sendable { case keep, f32, f16, bf16 }
    public var target: Target?
    public var overwrite = false
    public var dtype: DType = .keep
    /// Use LitEma weights (model_ema.*) in place of the model weights.
    public var ema = false
    public var variant: String?
    /// bert-base-uncased's vocab.txt, written as tokenizer/ when a CompVis LDM-BERT file becomes a diffusers folder.
    public var bertVocabulary: URL?
    public init(target: Target? = nil, overwrite: Bool = false, dtype: DType = .keep, ema: Bool = false, variant: String? = nil) {
        self.target = target
        self.overwrite = overwrite
        self.dtype = dtype
        self.ema = ema
        self.variant = variant
    }
}

public enum Converter {
    static let componentWeights = ["unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors",
                                   "text_encoder": "model.safetensors", "vqvae": "diffusion_pytorch_model.safetensors",
                                   "bert": "model.safetensors", "text_encoder_2": "model.safetensors"]

    /// CompVis names -> diffusers components; names no rule covers are returned in `unmapped`.
    public static func compvisToDiffusers(_ tensors: [String: TensorRecord]) throws
        -> (layout: PipelineLayout, components: [String: [MappedTensor]], unmapped: [String]) {
        var layout = try PipelineLayout.detect(compvis: Array(tensors.keys))
        var out: [String: [MappedTensor]] = [:], seen: [String: String] = [:], unmapped: [String] = []
        if let tower = layout.openCLIP {
            let (m, un) = try tower.toDiffusers(tensors)
            if !m.isEmpty {
                out[tower.component] = m
                layout.openCLIPTextEncoder = tower == .sd2
            }
            unmapped += un
        }
        for name in tensors.keys.sorted() {
            guard let r = tensors[name] else { continue }
            if let tower = layout.openCLIP, name.hasPrefix(tower.prefix) { continue }
            guard let m = layout.toDiffusers(name, shape: r.shape) else {
                unmapped.append(name)
                continue
            }
            // BERTEmbedder: only tensors LDMBertModel has (x-transformers options it lacks stay unconverted).
            if m.component == "bert", let b = layout.bert, !b.diffusersKeys.contains(m.key) {
                unmapped.append(name)
                continue
            }
            let full = m.component + "." + m.key
            if let prev = seen[full] { throw CheckpointError("\(prev) and \(name) both map to \(full)") }
            seen[full] = name
            out[m.component, default: []].append(MappedTensor(name: m.key, shape: m.shape, source: r))
        }
        return (layout, out, unmapped)
    }

    /// diffusers names "<component>.<key>" -> CompVis names.
    /// `openCLIP`: the text encoder is SD2's OpenCLIP (config hidden_act "gelu"); nil: diffusers' layer-count test.
    public static func diffusersToCompVis(_ tensors: [String: TensorRecord], openCLIP: Bool? = nil) throws
        -> (mapped: [MappedTensor], unmapped: [String]) {
        let layout = try PipelineLayout.detect(diffusers: Array(tensors.keys))
        var out: [MappedTensor] = [], seen: [String: String] = [:], unmapped: [String] = []
        // SDXL: text_encoder_2 is always OpenCLIP; SD2: the text_encoder when its config (or diffusers' test) says so.
        let sd2 = openCLIP ?? OpenCLIPMapping.looksLikeOpenCLIP(diffusersKeys: Array(tensors.keys))
        let tower = layout.openCLIP ?? (sd2 ? OpenCLIPTower.sd2 : nil)
        let te = (tower?.component ?? "text_encoder") + "."
        if let tower {
            var sub: [String: TensorRecord] = [:]
            for (k, r) in tensors where k.hasPrefix(te) { sub[String(k.dropFirst(te.count))] = r }
            let (m, un) = try tower.toCompVis(sub)
            for t in m { seen[t.name] = te + t.name }
            out += m
            unmapped += un.map { te + $0 }
        }
        for name in tensors.keys.sorted() {
            guard let r = tensors[name] else { continue }
            if tower != nil && name.hasPrefix(te) { continue }
            let parts = name.split(separator: ".", maxSplits: 1)
            guard parts.count == 2,
                  parts[0] != "bert" || layout.bert?.diffusersKeys.contains(String(parts[1])) == true,
                  let m = layout.toCompVis(component: String(parts[0]), key: String(parts[1]), shape: r.shape) else {
                unmapped.append(name)
                continue
            }
            if let prev = seen[m.name] { throw CheckpointError("\(prev) and \(name) both map to \(m.name)") }
            seen[m.name] = name
            out.append(MappedTensor(name: m.name, shape: m.shape, source: r))
        }
        return (out, unmapped)
    }

    static func isDiffusersNamed(_ names: [String]) -> Bool {
        !names.contains { $0.hasPrefix(PipelineLayout.unetPrefix) || $0.hasPrefix(PipelineLayout.vaePrefix) || $0.hasPrefix(PipelineLayout.clipPrefix)
                          || $0.hasPrefix(PipelineLayout.sgmConditionerPrefix) }
            && names.contains { $0.hasPrefix("unet.") || $0.hasPrefix("vae.") || $0.hasPrefix("text_encoder.") }
    }

    /// `--to` when not given: a path ending in .safetensors gets one file (CompVis names from a
    /// diffusers folder, the same names otherwise); any other path gets a diffusers folder.
    public static func defaultTarget(inputIsFolder: Bool, output: URL) -> ConvertOptions.Target {
        if output.pathExtension.lowercased() == "safetensors" { return inputIsFolder ? .compvis : .safetensors }
        return .diffusers
    }

    /// Converts and writes; returns the lines to show the user.
    @discardableResult
    public static func convert(input: URL, output: URL, options: ConvertOptions) throws -> [String] {
        do { return try run(input: input, output: output, options: options) }
        catch let e as CheckpointError where !e.message.contains(input.lastPathComponent) && !e.message.contains(output.lastPathComponent) {
            throw CheckpointError("\(input.path): \(e.message)")
        }
    }

    static func run(input: URL, output: URL, options: ConvertOptions) throws -> [String] {
        let fm = FileManager.default
        guard fm.fileExists(atPath: input.path) else { throw CheckpointError("\(input.path): no such file or folder") }
        guard input.standardizedFileURL.resolvingSymlinksInPath().path != output.standardizedFileURL.resolvingSymlinksInPath().path else {
            throw CheckpointError("\(output.path): output is the input")
        }
        if fm.fileExists(atPath: output.path) && !options.overwrite {
            throw CheckpointError("\(output.path) already exists (pass --overwrite to replace it)")
        }
        let parent = output.deletingLastPathComponent()
        guard DiffusersFolder.isFolder(parent) else { throw CheckpointError("\(parent.path): output folder does not exist") }
        let file = try CheckpointFile.open(input, variant: options.variant)
        var tensors = file.tensors
        if options.ema {
            guard let e = file.emaTensors else { throw CheckpointError("\(input.path): no EMA weights (model_ema.*) to use") }
            tensors = e
        }
        let target = options.target ?? defaultTarget(inputIsFolder: file.format == .diffusersFolder, output: output)
        var lines: [String] = []
        var meta = file.metadata
        meta["format"] = "pt"
        meta["ldm_source_format"] = file.format.rawValue
        meta["ldm_source"] = input.lastPathComponent
        switch target {
        case .safetensors, .compvis:
            var mapped: [MappedTensor]
            if target == .compvis && isDiffusersNamed(Array(tensors.keys)) {
                let act = file.diffusers?.components.first { $0.name == "text_encoder" }?.config?["hidden_act"] as? String
                let openCLIP = act.map { $0 == "gelu" } ?? OpenCLIPMapping.looksLikeOpenCLIP(diffusersKeys: Array(tensors.keys))
                let (m, un) = try diffusersToCompVis(tensors, openCLIP: openCLIP)
                mapped = m
                let sdxl = tensors.keys.contains { $0.hasPrefix("text_encoder_2.") }
                if openCLIP && !sdxl && tensors.keys.contains(where: { $0.hasPrefix("text_encoder.") }) { lines.append(OpenCLIPMapping.reverseNote) }
                lines += describe(unmapped: un, to: "CompVis")
                meta["ldm_layout"] = "compvis"
            } else {
                // --to compvis on a CompVis file: FrozenCLIPEmbedder names in the released files' spelling
                // (cond_stage_model.transformer.text_model.*), also when they came in transformers 5's.
                let canonical = { (k: String) -> String in
                    guard target == .compvis, let p = [PipelineLayout.clipPrefix, CLIPTable.sdxlPrefix].first(where: { k.hasPrefix($0) }) else { return k }
                    return p + CLIPTextKeys.canonical(String(k.dropFirst(p.count)))
                }
                mapped = tensors.keys.sorted().compactMap { k in tensors[k].map { MappedTensor(name: canonical(k), shape: $0.shape, source: $0) } }
                if Set(mapped.map(\.name)).count != mapped.count {
                    throw CheckpointError("\(input.path): holds the text encoder under both spellings (with and without text_model.)")
                }
            }
            if file.format == .diffusersFolder { meta.removeValue(forKey: "_class_name") }
            let out = try entries(mapped, dtype: options.dtype)
            // The writer renames its temp file over `output`; only a folder in the way is removed first.
            if options.overwrite, DiffusersFolder.isFolder(output) { try fm.removeItem(at: output) }
            try SafeTensors.write(out, metadata: meta, to: output)
            lines.insert("wrote \(output.path): \(mapped.count) tensors (\(target.rawValue), from \(file.format.rawValue))", at: 0)
        case .diffusers:
            guard file.format != .diffusersFolder else { throw CheckpointError("\(input.path) is already a diffusers folder") }
            guard !isDiffusersNamed(Array(tensors.keys)) else {
                throw CheckpointError("\(input.path): names are diffusers-style (unet.*); convert to compvis first")
            }
            let (layout, comps, un) = try compvisToDiffusers(tensors)
            guard !comps.isEmpty else {
                throw CheckpointError("\(input.path): no CompVis UNet/VAE/CLIP tensors (model.diffusion_model.*, first_stage_model.*, cond_stage_model.transformer.* or .model.*, conditioner.embedders.*)")
            }
            lines += try writeDiffusers(layout: layout, components: comps, output: output, options: options)
            if layout.openCLIPTextEncoder { lines.append(OpenCLIPMapping.forwardNote) }
            lines += describe(unmapped: un, to: "diffusers")
        }
        return lines
    }

    static func describe(unmapped: [String], to layout: String) -> [String] {
        guard !unmapped.isEmpty else { return [] }
        var groups: [String: Int] = [:]
        for n in unmapped {
            let p = n.split(separator: ".")
            groups[p.count > 2 ? p[0..<2].joined(separator: ".") + ".*" : n, default: 0] += 1
        }
        return ["not converted (no \(layout) equivalent in the layout mapping): \(unmapped.count) tensors: "
                + groups.keys.sorted().map { groups[$0]! > 1 ? "\($0) (\(groups[$0]!))" : $0 }.joined(separator: ", ")]
    }

    static func writeDiffusers(layout: PipelineLayout, components: [String: [MappedTensor]], output: URL, options: ConvertOptions) throws -> [String] {
        let fm = FileManager.default
        let tmp = output.deletingLastPathComponent().appendingPathComponent(".\(output.lastPathComponent).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try fm.createDirectory(at: tmp, withIntermediateDirectories: false)
        var done = false
        defer { if !done { try? fm.removeItem(at: tmp) } }
        var lines: [String] = ["wrote \(output.path) (diffusers folder):"]
        let sdxl = try layout.isSDXL ? sdxlConditioning(layout: layout, components: components) : nil
        for name in components.keys.sorted() {
            guard let mapped = components[name], let weights = componentWeights[name] else { continue }
            let dir = tmp.appendingPathComponent(name)
            try fm.createDirectory(at: dir, withIntermediateDirectories: false)
            try SafeTensors.write(try entries(mapped, dtype: options.dtype), metadata: ["format": "pt"], to: dir.appendingPathComponent(weights))
            let shapes = Dictionary(mapped.map { ($0.name, $0.shape) }, uniquingKeysWith: { a, _ in a })
            var derived: DerivedConfig?
            do {
                switch name {
                case "unet":
                    derived = try layout.unet.map { try DiffusersConfigs.unet($0, shapes: shapes, sdxl: sdxl) }
                    if layout.bert != nil, var d = derived {
                        // CompVis/ldm-text2im-large-256: 256 px / 8 (txt2img-1p4B-eval.yaml image_size 32).
                        d.config["sample_size"] = 32
                        d.defaulted = d.defaulted.map { $0.hasPrefix("sample_size=") ? "sample_size=32 (txt2img-1p4B 256 px / 8)" : $0 }
                        derived = d
                    }
                case "vae", "vqvae": derived = try layout.vae.map { try DiffusersConfigs.vae($0, shapes: shapes, sdxl: layout.isSDXL) }
                case "bert": derived = try DiffusersConfigs.ldmBert(shapes: shapes)
                case "text_encoder_2": derived = try DiffusersConfigs.clipTextWithProjection(shapes: shapes)
                default: derived = try DiffusersConfigs.clipText(shapes: shapes, openCLIP: layout.openCLIPTextEncoder)
                }
            } catch let e as CheckpointError {
                lines.append("  \(name)/: \(mapped.count) tensors in \(weights); no config.json (\(e.message))")
                continue
            }
            if let d = derived {
                try DiffusersConfigs.json(d.config).write(to: dir.appendingPathComponent("config.json"))
                lines.append("  \(name)/: \(mapped.count) tensors in \(weights); config.json derived from shapes, defaulted: "
                             + d.defaulted.joined(separator: ", "))
            }
        }
        var index = components.keys.sorted()
        if layout.bert != nil {
            // LDMTextToImagePipeline also needs its scheduler and BertTokenizer (bert-base-uncased's vocab.txt).
            let sched = tmp.appendingPathComponent("scheduler")
            try fm.createDirectory(at: sched, withIntermediateDirectories: false)
            try DiffusersConfigs.json(DiffusersConfigs.ldmTextToImageScheduler).write(to: sched.appendingPathComponent("scheduler_config.json"))
            index.append("scheduler")
            lines.append("  scheduler/: DDIMScheduler as CompVis' DDIMSampler runs txt2img-1p4B (betas 0.00085..0.012 scaled_linear, leading, steps_offset 1)")
            if let vocab = options.bertVocabulary {
                let tok = tmp.appendingPathComponent("tokenizer")
                try fm.createDirectory(at: tok, withIntermediateDirectories: false)
                try fm.copyItem(at: vocab, to: tok.appendingPathComponent("vocab.txt"))
                try DiffusersConfigs.json(DiffusersConfigs.bertTokenizerConfig).write(to: tok.appendingPathComponent("tokenizer_config.json"))
                index.append("tokenizer")
                lines.append("  tokenizer/: BertTokenizer with \(vocab.lastPathComponent) (do_lower_case, model_max_length 77)")
            } else {
                lines.append("  tokenizer/: not written (no --bert-vocab): copy bert-base-uncased's vocab.txt into tokenizer/ before use")
            }
        }
        if layout.isSDXL {
            // StableDiffusionXLPipeline also needs its scheduler and CLIP tokenizers (OpenAI's vocabulary, shipped).
            let sched = tmp.appendingPathComponent("scheduler")
            try fm.createDirectory(at: sched, withIntermediateDirectories: false)
            try DiffusersConfigs.json(DiffusersConfigs.sdxlScheduler).write(to: sched.appendingPathComponent("scheduler_config.json"))
            index.append("scheduler")
            lines.append("  scheduler/: EulerDiscreteScheduler of stable-diffusion-xl-base-1.0")
            for (tok, text, pad) in [("tokenizer", "text_encoder", "<|endoftext|>"), ("tokenizer_2", "text_encoder_2", "!")]
                where components[text] != nil {
                try writeCLIPTokenizer(tmp.appendingPathComponent(tok), padToken: pad)
                index.append(tok)
                lines.append("  \(tok)/: CLIPTokenizer with OpenAI CLIP's vocabulary (pad \(pad))")
            }
        }
        try DiffusersConfigs.json(DiffusersConfigs.modelIndex(components: index))
            .write(to: tmp.appendingPathComponent("model_index.json"))
        try replace(output, with: tmp, overwrite: options.overwrite)
        done = true
        return lines
    }

    /// SDXL's added-conditioning sizes from the converted UNet and text_encoder_2 tensors.
    static func sdxlConditioning(layout: PipelineLayout, components: [String: [MappedTensor]]) throws -> SDXLConditioningShape? {
        guard let unet = components["unet"] else { return nil }
        let shapes = Dictionary(unet.map { ($0.name, $0.shape) }, uniquingKeysWith: { a, _ in a })
        let pooled = components["text_encoder_2"]?.first { $0.name == "text_projection.weight" }?.shape.first
        return try SDXLConditioningShape(unet: shapes, pooledDim: pooled, refiner: layout.isSDXLRefiner)
    }

    /// A transformers CLIPTokenizer folder (vocab.json, merges.txt, tokenizer_config.json) with the bundled OpenAI
    /// CLIP vocabulary, as stable-diffusion-xl-base-1.0's tokenizer/ (pad <|endoftext|>) and tokenizer_2/ (pad "!").
    static func writeCLIPTokenizer(_ dir: URL, padToken: String) throws {
        guard let url = CLIPTokenizer.bundledOpenCLIPVocabularyURL else {
            throw CheckpointError("the bundled CLIP vocabulary (bpe_simple_vocab_16e6.txt.gz) is missing")
        }
        let (vocab, merges) = try CLIPTokenizer.openCLIPVocabulary(gzipFile: url)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: false)
        try JSONSerialization.data(withJSONObject: vocab, options: [.sortedKeys, .withoutEscapingSlashes]).write(to: dir.appendingPathComponent("vocab.json"))
        let text = "#version: 0.2\n" + merges.map { "\($0.0) \($0.1)" }.joined(separator: "\n") + "\n"
        try Data(text.utf8).write(to: dir.appendingPathComponent("merges.txt"))
        let config: [String: Any] = ["tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
                                     "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": padToken,
                                     "do_lower_case": true]
        try DiffusersConfigs.json(config).write(to: dir.appendingPathComponent("tokenizer_config.json"))
    }

    /// Output bytes under the requested dtype; only floating-point tensors are cast.
    public static func entries(_ mapped: [MappedTensor], dtype: ConvertOptions.DType) throws -> [SafeTensorsEntry] {
        try mapped.map { m in
            let r = m.source
            let target: StorageDType? = switch dtype {
            case .keep: nil
            case .f32: .F32
            case .f16: .F16
            case .bf16: .BF16
            }
            let floating: Set<StorageDType> = [.F64, .F32, .F16, .BF16]
            guard let t = target, t != r.dtype, floating.contains(r.dtype) else {
                return SafeTensorsEntry(name: m.name, dtype: r.dtype, shape: m.shape, bytes: try r.rawData())
            }
            return SafeTensorsEntry(name: m.name, dtype: t, shape: m.shape, bytes: encode(try r.floats(), as: t))
        }
    }

    /// Float -> F32 / F16 / BF16 little-endian bytes, round to nearest even (NaN stays NaN).
    public static func encode(_ f: [Float], as dtype: StorageDType) -> Data {
        switch dtype {
        case .F16:
            return f.map { Float16($0).bitPattern.littleEndian }.withUnsafeBytes { Data($0) }
        case .BF16:
            return f.map { x -> UInt16 in
                let b = x.bitPattern
                if x.isNaN { return UInt16(b >> 16) | 0x0040 }
                return UInt16(truncatingIfNeeded: (b &+ 0x7FFF &+ ((b >> 16) & 1)) >> 16)
            }.map { $0.littleEndian }.withUnsafeBytes { Data($0) }
        default:
            return f.map { $0.bitPattern.littleEndian }.withUnsafeBytes { Data($0) }
        }
    }

    /// Renames `tmp` to `output`; an existing output (with overwrite) is moved aside first and removed after.
    static func replace(_ output: URL, with tmp: URL, overwrite: Bool) throws {
        let fm = FileManager.default
        var aside: URL?
        if fm.fileExists(atPath: output.path) {
            guard overwrite else { throw CheckpointError("\(output.path) already exists (pass --overwrite to replace it)") }
            let a = output.deletingLastPathComponent().appendingPathComponent(".\(output.lastPathComponent).old-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
            guard rename(output.path, a.path) == 0 else { throw CheckpointError("cannot move \(output.path) aside: \(String(cString: strerror(errno)))") }
            aside = a
        }
        guard rename(tmp.path, output.path) == 0 else {
            let msg = String(cString: strerror(errno))
            if let a = aside { _ = rename(a.path, output.path) }
            throw CheckpointError("cannot rename \(tmp.path) to \(output.path): \(msg)")
        }
        if let a = aside { try? fm.removeItem(at: a) }
    }
}
