// Reads the `tokenizers` serialization `tokenizer.json` (tokenizers/src/tokenizer/serialization.rs,
// models/bpe/serialization.rs, models/wordpiece/serialization.rs), the only vocabulary file transformers 5
// `save_pretrained` writes: `model.vocab` (token -> id; ids may have gaps, e.g. a WordPiece vocab.txt with duplicate
// lines, where the last duplicate keeps its line number), `model.merges` (BPE: "a b" strings as tokenizers < 0.20
// writes them, or [a, b] pairs as newer ones do; rank = position) and `added_tokens` (id, content, normalized,
// special), which the AddedVocabulary splits out of the text before the model runs.
import Foundation

/// One entry of tokenizer.json `added_tokens`.
public struct AddedToken: Equatable, Sendable, Decodable {
    public var id: Int
    public var content: String
    /// true: matched in the normalized text; false: in the raw text.
    public var normalized: Bool
    public var special: Bool

    public init(id: Int, content: String, normalized: Bool = false, special: Bool = true) {
        self.id = id
        self.content = content
        self.normalized = normalized
        self.special = special
    }

    enum CodingKeys: String, CodingKey { case id, content, normalized, special }
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        id = try c.decode(Int.self, forKey: .id)
        content = try c.decode(String.self, forKey: .content)
        special = try c.decodeIfPresent(Bool.self, forKey: .special) ?? false
        // tokenizers' AddedToken default: normalized = !special.
        normalized = try c.decodeIfPresent(Bool.self, forKey: .normalized) ?? !special
    }
}

/// The parts of a tokenizer.json this package's tokenizers use.
public struct TokenizerJSON {
    public var modelType: String
    /// `model.vocab` (exact strings: decoded with JSONDecoder, which keeps a leading U+FEFF on Linux).
    public var vocabulary: [String: Int]
    /// BPE merges in rank order (empty for WordPiece).
    public var merges: [(String, String)]
    public var addedTokens: [AddedToken]
    public var unknownToken: String?
    public var endOfWordSuffix: String?
    public var continuingSubwordPrefix: String?
    /// The `normalizer` object as JSON (for BertNormalizer settings).
    public var normalizer: [String: Any]?

    private struct File: Decodable {
        struct Model: Decodable {
            var type: String?
            var vocab: [String: Int]?
            var merges: [Merge]?
            var unk_token: String?
            var end_of_word_suffix: String?
            var continuing_subword_prefix: String?
        }
        var model: Model?
        var added_tokens: [AddedToken]?
    }

    /// A merge written as "a b" or as ["a", "b"].
    private struct Merge: Decodable {
        let pair: (String, String)?
        let shown: String
        init(from decoder: Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let s = try? c.decode(String.self) {
                let parts = s.split(separator: " ", omittingEmptySubsequences: false)
                pair = parts.count == 2 ? (String(parts[0]), String(parts[1])) : nil
                shown = s
            } else {
                let a = try c.decode([String].self)
                pair = a.count == 2 ? (a[0], a[1]) : nil
                shown = "\(a)"
            }
        }
    }

    public init(contentsOf url: URL) throws {
        let data: Data
        do { data = try Data(contentsOf: url) } catch { throw TokenizerError.unreadableFile(url.path, error.localizedDescription) }
        try self.init(data: data, name: url.lastPathComponent)
    }

    public init(data: Data, name: String = "tokenizer.json") throws {
        let file: File
        do { file = try JSONDecoder().decode(File.self, from: data) } catch {
            throw TokenizerError.invalidVocabulary("\(name) is not a tokenizers JSON file (model.vocab, model.merges, added_tokens): \(error)")
        }
        guard let model = file.model, let type = model.type, let vocab = model.vocab else {
            throw TokenizerError.invalidVocabulary("\(name) has no model with a type and a vocab")
        }
        if let bad = vocab.first(where: { $0.value < 0 }) {
            throw TokenizerError.invalidVocabulary("\(name): id of \"\(bad.key)\" is negative")
        }
        modelType = type
        vocabulary = vocab
        merges = try (model.merges ?? []).enumerated().map { i, m in
            guard let p = m.pair else { throw TokenizerError.invalidMerges("\(name): merge \(i) \(m.shown) is not two tokens") }
            return p
        }
        addedTokens = file.added_tokens ?? []
        if let bad = addedTokens.first(where: { $0.id < 0 || $0.content.isEmpty }) {
            throw TokenizerError.invalidVocabulary("\(name): added token \"\(bad.content)\" has id \(bad.id)")
        }
        unknownToken = model.unk_token
        endOfWordSuffix = model.end_of_word_suffix
        continuingSubwordPrefix = model.continuing_subword_prefix
        normalizer = (try? JSONSerialization.jsonObject(with: data) as? [String: Any])?["normalizer"] as? [String: Any]
    }
}

extension CLIPTokenizer {
    /// A CLIP BPE tokenizer from a tokenizer.json (what transformers 5 `save_pretrained` writes instead of vocab.json +
    /// merges.txt), with special tokens from `specialTokens` (tokenizer_config.json / special_tokens_map.json).
    public init(tokenizerJSON url: URL, specialTokens: SpecialTokens = .clip) throws {
        let t = try TokenizerJSON(contentsOf: url)
        guard t.modelType == "BPE" else {
            throw TokenizerError.invalidVocabulary("\(url.lastPathComponent): model type \(t.modelType), a CLIP tokenizer needs BPE")
        }
        if let suffix = t.endOfWordSuffix, suffix != "</w>" {
            throw TokenizerError.invalidConfig("\(url.lastPathComponent): end_of_word_suffix \"\(suffix)\" is not CLIP's \"</w>\"")
        }
        var special = specialTokens
        if special.unk == nil, let u = t.unknownToken { special.unk = SpecialToken(u) }
        try self.init(vocabulary: t.vocabulary, merges: t.merges, specialTokens: special, addedTokens: t.addedTokens)
    }
}
