// Matches transformers 5.x `BertTokenizer` (models/bert/tokenization_bert.py, a `tokenizers` backend; the same
// pipeline as BertTokenizerFast, which CompVis ldm/modules/encoders/modules.py BERTTokenizer uses with
// bert-base-uncased, max_length=77, padding="max_length"):
//   special tokens [PAD] [UNK] [CLS] [SEP] [MASK] split from the raw text,
//   BertNormalizer(clean_text, handle_chinese_chars, strip_accents = lowercase, lowercase) (tokenizers normalizers/bert.rs),
//   BertPreTokenizer: split on whitespace, isolate punctuation (pre_tokenizers/bert.rs),
//   WordPiece: greedy longest match, "##" continuation, words over 100 characters -> [UNK] (models/wordpiece),
//   post-processor [CLS] ids [SEP], truncation to max_length, right padding with [PAD].
import Foundation

public struct BertTokenizer {
    public let vocabulary: [String: Int]
    public let clsTokenID: Int
    public let sepTokenID: Int
    public let padTokenID: Int
    public let unknownTokenID: Int
    public var doLowerCase: Bool
    /// nil: strip accents when lower-casing (original BERT behaviour).
    public var stripAccents: Bool?
    public var tokenizeChineseChars: Bool
    public var maxInputCharsPerWord = 100
    /// Default `maxLength` of `callAsFunction` (77, as CompVis BERTTokenizer).
    public var modelMaxLength: Int
    private let pieces: [ExactKey: Int]
    private let splitter: SpecialTokenSplitter

    /// Vocabulary lookups compare Unicode scalars exactly (Swift String equality is canonical-equivalence based).
    private struct ExactKey: Hashable {
        let utf8: [UInt8]
        init<S: Sequence>(_ scalars: S) where S.Element == Unicode.Scalar {
            var bytes: [UInt8] = []
            for s in scalars { bytes += Array(String(s).utf8) }
            utf8 = bytes
        }
    }

    /// `tokens` in id order (line order of vocab.txt); a token listed twice keeps its last line's id and leaves a gap at
    /// the first, as tokenizers' `WordPiece::read_file` does.
    public init(vocabulary tokens: [String], doLowerCase: Bool = true, stripAccents: Bool? = nil, tokenizeChineseChars: Bool = true,
                specialTokens: SpecialTokens = .bert, modelMaxLength: Int = 77) throws {
        try self.init(ids: tokens.enumerated().map { ($1, $0) }, doLowerCase: doLowerCase, stripAccents: stripAccents,
                      tokenizeChineseChars: tokenizeChineseChars, specialTokens: specialTokens, modelMaxLength: modelMaxLength)
    }

    /// token -> id pairs (ids may have gaps, e.g. a tokenizer.json `model.vocab` written from a vocab.txt with duplicate
    /// lines); for a token given twice the later pair wins. `addedTokens` (tokenizer.json) are split out of the raw text.
    public init(ids: [(String, Int)], doLowerCase: Bool = true, stripAccents: Bool? = nil, tokenizeChineseChars: Bool = true,
                specialTokens: SpecialTokens = .bert, modelMaxLength: Int = 77, addedTokens: [AddedToken] = []) throws {
        var vocab: [String: Int] = [:]
        var pieces: [ExactKey: Int] = [:]
        guard !ids.isEmpty else { throw TokenizerError.invalidVocabulary("the WordPiece vocabulary is empty") }
        if let bad = ids.first(where: { $0.1 < 0 }) { throw TokenizerError.invalidVocabulary("id of \"\(bad.0)\" is negative") }
        for (t, i) in ids + addedTokens.map({ ($0.content, $0.id) }) {
            vocab[t] = i
            pieces[ExactKey(t.unicodeScalars)] = i
        }
        func id(_ token: SpecialToken?, _ role: String) throws -> Int {
            guard let t = token else { throw TokenizerError.invalidConfig("BERT tokenizer needs \(role)") }
            guard let v = pieces[ExactKey(t.content.unicodeScalars)] else { throw TokenizerError.missingToken("\(role) \"\(t.content)\"") }
            return v
        }
        self.vocabulary = vocab
        self.pieces = pieces
        clsTokenID = try id(specialTokens.cls, "cls_token")
        sepTokenID = try id(specialTokens.sep, "sep_token")
        padTokenID = try id(specialTokens.pad, "pad_token")
        unknownTokenID = try id(specialTokens.unk, "unk_token")
        self.doLowerCase = doLowerCase
        self.stripAccents = stripAccents
        self.tokenizeChineseChars = tokenizeChineseChars
        self.modelMaxLength = modelMaxLength
        var seen = Set<String>()
        let registered = addedTokens.map { SpecialToken($0.content, normalized: $0.normalized) } + specialTokens.registrationOrder
        splitter = SpecialTokenSplitter(registered.compactMap { t in
            guard seen.insert(t.content).inserted, let v = pieces[ExactKey(t.content.unicodeScalars)] else { return nil }
            return (t.content, v)
        })
    }

    /// Loads a vocab.txt: one token per line, trailing whitespace trimmed (tokenizers `WordPiece::read_file`).
    public init(vocabularyFile url: URL, doLowerCase: Bool = true, stripAccents: Bool? = nil, modelMaxLength: Int = 77) throws {
        try self.init(vocabulary: Self.readVocabularyLines(url), doLowerCase: doLowerCase, stripAccents: stripAccents, modelMaxLength: modelMaxLength)
    }

    /// Loads a diffusers / transformers `tokenizer/` folder (the `tokenizer` component of an LDMTextToImagePipeline):
    /// vocab.txt (what transformers 4 writes and CompVis/ldm-text2im-large-256 ships) or else the WordPiece vocabulary of
    /// tokenizer.json (what transformers 5 writes); `do_lower_case`, `strip_accents`, `tokenize_chinese_chars` and the
    /// special tokens from tokenizer_config.json / special_tokens_map.json (tokenizer.json's BertNormalizer settings
    /// when it is the vocabulary's source and the config does not give them).
    public init(folder: URL) throws {
        let special = try SpecialTokens.load(defaults: .bert, folder: folder)
        var config: [String: Any] = [:]
        let configURL = folder.appendingPathComponent("tokenizer_config.json")
        if FileManager.default.fileExists(atPath: configURL.path) {
            guard let d = try JSONSerialization.jsonObject(with: Data(contentsOf: configURL)) as? [String: Any] else {
                throw TokenizerError.invalidConfig("tokenizer_config.json is not a JSON object")
            }
            config = d
        }
        var lower = config["do_lower_case"] as? Bool
        var strip = config["strip_accents"] as? Bool
        var chinese = config["tokenize_chinese_chars"] as? Bool
        let ids: [(String, Int)]
        var added: [AddedToken] = []
        let vocabURL = folder.appendingPathComponent("vocab.txt"), jsonURL = folder.appendingPathComponent("tokenizer.json")
        if FileManager.default.fileExists(atPath: vocabURL.path) {
            ids = try Self.readVocabularyLines(vocabURL).enumerated().map { ($1, $0) }
        } else if FileManager.default.fileExists(atPath: jsonURL.path) {
            let json = try TokenizerJSON(contentsOf: jsonURL)
            guard json.modelType == "WordPiece" else {
                throw TokenizerError.invalidVocabulary("tokenizer.json has no WordPiece model vocabulary (model type \(json.modelType))")
            }
            if let p = json.continuingSubwordPrefix, p != "##" {
                throw TokenizerError.invalidConfig("tokenizer.json: continuing_subword_prefix \"\(p)\" is not BERT's \"##\"")
            }
            // Ids may have gaps (transformers accepts them): order by id only for determinism.
            ids = json.vocabulary.sorted { $0.value < $1.value }.map { ($0.key, $0.value) }
            added = json.addedTokens
            if let n = json.normalizer, n["type"] as? String == "BertNormalizer" {
                lower = lower ?? n["lowercase"] as? Bool
                strip = strip ?? n["strip_accents"] as? Bool
                chinese = chinese ?? n["handle_chinese_chars"] as? Bool
            }
        } else {
            throw TokenizerError.unreadableFile(folder.path, "no vocab.txt or tokenizer.json")
        }
        try self.init(ids: ids, doLowerCase: lower ?? true, stripAccents: strip, tokenizeChineseChars: chinese ?? true,
                      specialTokens: special, modelMaxLength: special.modelMaxLength ?? 77, addedTokens: added)
    }

    static func readVocabularyLines(_ url: URL) throws -> [String] {
        var lines = try readTextFile(url).split(separator: "\n", omittingEmptySubsequences: false).map { line in
            String(String.UnicodeScalarView(line.unicodeScalars.reversed().drop(while: { $0.properties.isWhitespace }).reversed()))
        }
        if lines.last == "" { lines.removeLast() }
        guard !lines.isEmpty else { throw TokenizerError.invalidVocabulary("\(url.lastPathComponent) is empty") }
        return lines
    }

    /// Token ids without [CLS]/[SEP].
    public func encode(_ text: String) -> [Int] {
        var ids: [Int] = []
        for piece in splitter.split(Array(text.unicodeScalars)) {
            switch piece {
            case .special(let id): ids.append(id)
            case .text(let raw):
                for word in Self.preTokenize(normalize(raw)) { ids += wordPiece(word) }
            }
        }
        return ids
    }

    /// `tokenizer(text, truncation=True, max_length=maxLength, padding="max_length").input_ids`.
    public func callAsFunction(_ text: String, maxLength: Int? = nil) -> [Int] {
        let length = max(maxLength ?? modelMaxLength, 2)
        var out = [clsTokenID] + encode(text).prefix(length - 2) + [sepTokenID]
        out += [Int](repeating: padTokenID, count: length - out.count)
        return out
    }

    // MARK: - BertNormalizer

    func normalize(_ raw: [Unicode.Scalar]) -> [Unicode.Scalar] {
        var text: [Unicode.Scalar] = []
        text.reserveCapacity(raw.count)
        for c in raw {
            if c.value == 0 || c.value == 0xFFFD || BertUnicode.isControl(c) { continue }
            if BertUnicode.isWhitespace(c) {
                text.append(" ")
                continue
            }
            if tokenizeChineseChars && BertUnicode.isChineseChar(c) {
                text += [" ", c, " "]
                continue
            }
            text.append(c)
        }
        if stripAccents ?? doLowerCase {
            text = BertUnicode.nfd(text).filter { !BertUnicode.isNonspacingMark($0) }
        }
        if doLowerCase { text = text.flatMap(BertUnicode.lowercase) }
        return text
    }

    /// BertPreTokenizer: whitespace separates, punctuation characters are words of their own.
    static func preTokenize(_ text: [Unicode.Scalar]) -> [ArraySlice<Unicode.Scalar>] {
        var words: [ArraySlice<Unicode.Scalar>] = []
        var start = 0
        for (i, c) in text.enumerated() {
            if c.properties.isWhitespace {
                if start < i { words.append(text[start..<i]) }
                start = i + 1
            } else if BertUnicode.isPunctuation(c) {
                if start < i { words.append(text[start..<i]) }
                words.append(text[i...i])
                start = i + 1
            }
        }
        if start < text.count { words.append(text[start...]) }
        return words
    }

    // MARK: - WordPiece

    func wordPiece(_ word: ArraySlice<Unicode.Scalar>) -> [Int] {
        let chars = Array(word)
        if chars.count > maxInputCharsPerWord { return [unknownTokenID] }
        var ids: [Int] = []
        var start = 0
        let prefix = Array("##".unicodeScalars)
        while start < chars.count {
            var end = chars.count
            var found: Int? = nil
            while start < end {
                let key = start > 0 ? ExactKey(prefix + chars[start..<end]) : ExactKey(chars[start..<end])
                if let id = pieces[key] {
                    found = id
                    break
                }
                end -= 1
            }
            guard let id = found else { return [unknownTokenID] }
            ids.append(id)
            start = end
        }
        return ids
    }
}
