// Special ("added") tokens as transformers' TokenizersBackend registers them in the `tokenizers` AddedVocabulary
// (transformers/tokenization_utils_tokenizers.py, tokenizers/src/tokenizer/added_vocabulary.rs): tokens with
// normalized == false are split out of the raw text, tokens with normalized == true out of the normalized text,
// both with leftmost-longest matching. Values come from tokenizer_config.json overridden by special_tokens_map.json.
import Foundation

public struct SpecialToken: Equatable, Sendable {
    public var content: String
    /// true: matched after normalization (lower-casing...), false: matched in the raw text.
    public var normalized: Bool
    public init(_ content: String, normalized: Bool = false) {
        self.content = content
        self.normalized = normalized
    }
}

public struct SpecialTokens: Equatable, Sendable {
    public var bos: SpecialToken?
    public var eos: SpecialToken?
    public var unk: SpecialToken?
    public var pad: SpecialToken?
    public var sep: SpecialToken?
    public var cls: SpecialToken?
    public var mask: SpecialToken?
    /// `model_max_length` of tokenizer_config.json when present.
    public var modelMaxLength: Int?

    public init(bos: SpecialToken? = nil, eos: SpecialToken? = nil, unk: SpecialToken? = nil, pad: SpecialToken? = nil,
                sep: SpecialToken? = nil, cls: SpecialToken? = nil, mask: SpecialToken? = nil, modelMaxLength: Int? = nil) {
        self.bos = bos
        self.eos = eos
        self.unk = unk
        self.pad = pad
        self.sep = sep
        self.cls = cls
        self.mask = mask
        self.modelMaxLength = modelMaxLength
    }

    /// transformers CLIPTokenizer defaults (SD 1.x): pad is "<|endoftext|>".
    public static let clip = SpecialTokens(bos: SpecialToken("<|startoftext|>"), eos: SpecialToken("<|endoftext|>"),
                                           unk: SpecialToken("<|endoftext|>"), pad: SpecialToken("<|endoftext|>"))
    /// transformers BertTokenizer defaults.
    public static let bert = SpecialTokens(unk: SpecialToken("[UNK]"), pad: SpecialToken("[PAD]"), sep: SpecialToken("[SEP]"),
                                           cls: SpecialToken("[CLS]"), mask: SpecialToken("[MASK]"))

    /// Registration order (SPECIAL_TOKENS_ATTRIBUTES); for equal contents the later entry's `normalized` wins.
    var registrationOrder: [SpecialToken] { [bos, eos, unk, sep, pad, cls, mask].compactMap { $0 } }

    /// Applies the entries of a tokenizer_config.json or special_tokens_map.json file on top of `self`.
    public func overridden(byJSONFile url: URL) throws -> SpecialTokens {
        let data: Data
        do { data = try Data(contentsOf: url) } catch {
            throw TokenizerError.unreadableFile(url.path, error.localizedDescription)
        }
        guard let object = try? JSONSerialization.jsonObject(with: data), let dict = object as? [String: Any] else {
            throw TokenizerError.invalidConfig("\(url.lastPathComponent) is not a JSON object")
        }
        var result = self
        func token(_ key: String) throws -> SpecialToken?? {
            guard let value = dict[key], !(value is NSNull) else { return .none }
            if let s = value as? String { return .some(SpecialToken(s, normalized: false)) }
            if let d = value as? [String: Any], let content = d["content"] as? String {
                return .some(SpecialToken(content, normalized: (d["normalized"] as? Bool) ?? false))
            }
            throw TokenizerError.invalidConfig("\(url.lastPathComponent): \(key) is neither a string nor an object with \"content\"")
        }
        if let t = try token("bos_token") { result.bos = t }
        if let t = try token("eos_token") { result.eos = t }
        if let t = try token("unk_token") { result.unk = t }
        if let t = try token("pad_token") { result.pad = t }
        if let t = try token("sep_token") { result.sep = t }
        if let t = try token("cls_token") { result.cls = t }
        if let t = try token("mask_token") { result.mask = t }
        if let n = dict["model_max_length"] as? NSNumber, n.doubleValue >= 1, n.doubleValue <= 1_000_000 {
            result.modelMaxLength = n.intValue
        }
        return result
    }

    /// Defaults, then tokenizer_config.json, then special_tokens_map.json (which wins, as in transformers).
    static func load(defaults: SpecialTokens, folder: URL) throws -> SpecialTokens {
        var tokens = defaults
        for name in ["tokenizer_config.json", "special_tokens_map.json"] {
            let url = folder.appendingPathComponent(name)
            if FileManager.default.fileExists(atPath: url.path) { tokens = try tokens.overridden(byJSONFile: url) }
        }
        return tokens
    }
}

/// Splits text into special-token ids and plain pieces (leftmost-longest match, like aho-corasick in tokenizers).
struct SpecialTokenSplitter {
    enum Piece: Equatable {
        case special(Int)
        case text([Unicode.Scalar])
    }
    private let tokens: [(scalars: [Unicode.Scalar], id: Int)]

    init(_ tokens: [(String, Int)]) {
        self.tokens = tokens.filter { !$0.0.isEmpty }.map { (Array($0.0.unicodeScalars), $0.1) }
    }

    var isEmpty: Bool { tokens.isEmpty }

    func split(_ text: [Unicode.Scalar]) -> [Piece] {
        if tokens.isEmpty { return text.isEmpty ? [] : [.text(text)] }
        var pieces: [Piece] = []
        var start = 0, i = 0
        while i < text.count {
            var best: (length: Int, id: Int)? = nil
            for t in tokens where t.scalars.count <= text.count - i && t.scalars.count > (best?.length ?? 0) {
                if text[i] == t.scalars[0] && text[i..<(i + t.scalars.count)].elementsEqual(t.scalars) { best = (t.scalars.count, t.id) }
            }
            if let b = best {
                if start < i { pieces.append(.text(Array(text[start..<i]))) }
                pieces.append(.special(b.id))
                i += b.length
                start = i
            } else {
                i += 1
            }
        }
        if start < text.count { pieces.append(.text(Array(text[start..<text.count]))) }
        return pieces
    }
}
