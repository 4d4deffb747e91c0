// Matches transformers 5.x `CLIPTokenizer` (models/clip/tokenization_clip.py, a `tokenizers` backend), the tokenizer
// a default `pip install diffusers transformers` uses for Stable Diffusion:
//   special tokens split from the text (SpecialTokens.swift),
//   normalizer  NFC -> Replace(\s+, " ") -> Lowercase (per character, full case mapping, no final-sigma rule),
//   pre-tokenizer Split(<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+)
//                 + ByteLevel (bytes_to_unicode),
//   model       BPE with end_of_word_suffix "</w>" (BytePairModel.swift),
//   post-processor <|startoftext|> ids <|endoftext|>, truncation to max_length, right padding with pad_token.
// transformers 4.x's slow tokenizer instead cleaned text with ftfy or BasicTokenizer; 5.x has only this path.
// The special-token alternatives of the split pattern are followed by ByteLevel's GPT-2 split, which cuts them into
// "<|", "endoftext", "|>"; they still matter because they end the match at ">".
// Unicode versions: the reference's Oniguruma regex knows Unicode 16.0; Swift's tables may be newer, so characters
// assigned later are neither letters nor numbers here. Lower-casing (Rust std) knows Unicode 17.0, like Swift 6.3.
import Foundation

public struct CLIPTokenizer {
    public let vocabulary: [String: Int]
    public let specialTokens: SpecialTokens
    public let bosTokenID: Int
    public let eosTokenID: Int
    public let padTokenID: Int
    /// Default `maxLength` of `callAsFunction` (tokenizer_config.json `model_max_length`, else 77).
    public var modelMaxLength: Int
    private let model: BytePairModel
    private let rawSplitter: SpecialTokenSplitter
    private let normalizedSplitter: SpecialTokenSplitter

    /// Builds the tokenizer from an in-memory vocabulary and merges (rank order). `addedTokens`: tokenizer.json's
    /// `added_tokens`, registered before the special tokens (whose `normalized` flag wins for the same content); an
    /// added token's id is its own, also when its content is not in the BPE vocabulary.
    public init(vocabulary modelVocabulary: [String: Int], merges: [(String, String)], specialTokens: SpecialTokens = .clip,
                addedTokens: [AddedToken] = []) throws {
        guard let bos = specialTokens.bos, let eos = specialTokens.eos else {
            throw TokenizerError.invalidConfig("CLIP tokenizer needs bos_token and eos_token")
        }
        let pad = specialTokens.pad ?? eos
        var vocabulary = modelVocabulary
        for t in addedTokens { vocabulary[t.content] = t.id }
        func id(_ t: SpecialToken, _ role: String) throws -> Int {
            guard let v = vocabulary[t.content] else { throw TokenizerError.missingToken("\(role) \"\(t.content)\"") }
            return v
        }
        self.vocabulary = vocabulary
        self.specialTokens = specialTokens
        bosTokenID = try id(bos, "bos_token")
        eosTokenID = try id(eos, "eos_token")
        padTokenID = try id(pad, "pad_token")
        modelMaxLength = specialTokens.modelMaxLength ?? 77
        model = try BytePairModel(vocabulary: modelVocabulary, merges: merges, unknownToken: specialTokens.unk?.content)
        var flags: [String: Bool] = [:]
        var order: [String] = []
        let registered = addedTokens.map { SpecialToken($0.content, normalized: $0.normalized) } + specialTokens.registrationOrder
        for t in registered where vocabulary[t.content] != nil {
            if flags[t.content] == nil { order.append(t.content) }
            flags[t.content] = t.normalized
        }
        rawSplitter = SpecialTokenSplitter(order.filter { flags[$0] == false }.compactMap { c in vocabulary[c].map { (c, $0) } })
        // Normalized special tokens are matched on their own normalized form.
        normalizedSplitter = SpecialTokenSplitter(order.filter { flags[$0] == true }.compactMap { c in
            vocabulary[c].map { (String(String.UnicodeScalarView(Self.normalize(Array(c.unicodeScalars)))), $0) }
        })
    }

    /// Loads vocab.json + merges.txt (all merge lines after an optional "#version" header, as tokenizers'
    /// `BPE::read_file`), with optional special_tokens_map.json / tokenizer_config.json.
    public init(vocabularyJSON: URL, merges: URL, specialTokensMap: URL? = nil, tokenizerConfig: URL? = nil) throws {
        var special = SpecialTokens.clip
        if let c = tokenizerConfig { special = try special.overridden(byJSONFile: c) }
        if let m = specialTokensMap { special = try special.overridden(byJSONFile: m) }
        try self.init(vocabulary: Self.readVocabularyJSON(vocabularyJSON), merges: Self.readMerges(merges), specialTokens: special)
    }

    /// Loads a diffusers `tokenizer/` (or `tokenizer_2/`) folder: tokenizer.json when present (what transformers 5
    /// reads first, and the only vocabulary file its `save_pretrained` writes), else vocab.json + merges.txt; special
    /// tokens from tokenizer_config.json / special_tokens_map.json.
    public init(folder: URL) throws {
        let special = try SpecialTokens.load(defaults: .clip, folder: folder)
        let json = folder.appendingPathComponent("tokenizer.json"), vocab = folder.appendingPathComponent("vocab.json")
        let fm = FileManager.default
        if fm.fileExists(atPath: json.path) {
            try self.init(tokenizerJSON: json, specialTokens: special)
        } else if fm.fileExists(atPath: vocab.path) {
            try self.init(vocabulary: Self.readVocabularyJSON(vocab), merges: Self.readMerges(folder.appendingPathComponent("merges.txt")),
                          specialTokens: special)
        } else {
            throw TokenizerError.unreadableFile(folder.path, "no tokenizer.json, nor vocab.json + merges.txt")
        }
    }

    /// Token ids of `text` without BOS/EOS.
    public func encode(_ text: String) -> [Int] {
        var ids: [Int] = []
        for piece in rawSplitter.split(Array(text.unicodeScalars)) {
            switch piece {
            case .special(let id): ids.append(id)
            case .text(let raw):
                for sub in normalizedSplitter.split(Self.normalize(raw)) {
                    switch sub {
                    case .special(let id): ids.append(id)
                    case .text(let normalized):
                        for word in Self.preTokenize(normalized) { ids += model.tokenize(Self.byteLevel(word)) }
                    }
                }
            }
        }
        return ids
    }

    /// `tokenizer(text, padding="max_length", max_length=maxLength, truncation=True).input_ids`:
    /// BOS + first maxLength-2 ids + EOS, right-padded with the pad token.
    public func callAsFunction(_ text: String, maxLength: Int? = nil) -> [Int] {
        let length = max(maxLength ?? modelMaxLength, 2)
        let ids = encode(text)
        var out = [bosTokenID] + ids.prefix(length - 2) + [eosTokenID]
        out += [Int](repeating: padTokenID, count: length - out.count)
        return out
    }

    // MARK: - Normalizer and pre-tokenizer

    /// NFC, runs of White_Space -> " ", per-character lower-casing (Rust `char::to_lowercase`).
    static func normalize(_ raw: [Unicode.Scalar]) -> [Unicode.Scalar] {
        let nfc = String(String.UnicodeScalarView(raw)).precomposedStringWithCanonicalMapping
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(raw.count)
        var inSpace = false
        for s in nfc.unicodeScalars {
            if s.properties.isWhitespace {
                if !inSpace { out.append(" ") }
                inSpace = true
                continue
            }
            inSpace = false
            if s.isASCII {
                out.append(s.value >= 65 && s.value <= 90 ? Unicode.Scalar(s.value + 32)! : s)
            } else {
                out.append(contentsOf: s.properties.lowercaseMapping.unicodeScalars)
            }
        }
        return out
    }

    /// Unicode version of the reference's regex character classes (Oniguruma in tokenizers 0.23).
    static let referenceUnicodeVersion = (major: 16, minor: 0)

    static func knownToReference(_ s: Unicode.Scalar) -> Bool {
        guard let age = s.properties.age else { return false }
        return (age.major, age.minor) <= referenceUnicodeVersion
    }

    static func isLetter(_ s: Unicode.Scalar) -> Bool {
        if s.isASCII { return (s.value >= 65 && s.value <= 90) || (s.value >= 97 && s.value <= 122) }
        guard knownToReference(s) else { return false }
        switch s.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return true
        default: return false
        }
    }

    static func isNumber(_ s: Unicode.Scalar) -> Bool {
        if s.isASCII { return s.value >= 48 && s.value <= 57 }
        guard knownToReference(s) else { return false }
        switch s.properties.generalCategory {
        case .decimalNumber, .letterNumber, .otherNumber: return true
        default: return false
        }
    }

    private static let contractions: [[Unicode.Scalar]] = ["s", "t", "re", "ve", "m", "ll", "d"].map { Array($0.unicodeScalars) }
    private static let specialWords: [[Unicode.Scalar]] = ["<|startoftext|>", "<|endoftext|>"].map { Array($0.unicodeScalars) }

    /// The CLIP split pattern, hand-written, leftmost-first:
    /// <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
    /// followed by ByteLevel's split of the special-token matches into "<|", letters, "|>".
    static func preTokenize(_ text: [Unicode.Scalar]) -> [ArraySlice<Unicode.Scalar>] {
        var words: [ArraySlice<Unicode.Scalar>] = []
        var i = 0
        let n = text.count
        while i < n {
            let s = text[i]
            if s.properties.isWhitespace {
                i += 1
                continue
            }
            if s == "<", let w = specialWords.first(where: { i + $0.count <= n && text[i..<(i + $0.count)].elementsEqual($0) }) {
                words += [text[i..<(i + 2)], text[(i + 2)..<(i + w.count - 2)], text[(i + w.count - 2)..<(i + w.count)]]
                i += w.count
                continue
            }
            if s == "'" {
                if let c = contractions.first(where: { i + $0.count < n && text[(i + 1)...(i + $0.count)].elementsEqual($0) }) {
                    words.append(text[i...(i + c.count)])
                    i += c.count + 1
                    continue
                }
            }
            var j = i + 1
            if isLetter(s) {
                while j < n && isLetter(text[j]) { j += 1 }
            } else if !isNumber(s) {
                while j < n && !text[j].properties.isWhitespace && !isLetter(text[j]) && !isNumber(text[j]) { j += 1 }
            }
            words.append(text[i..<j])
            i = j
        }
        return words
    }

    /// UTF-8 bytes mapped through bytes_to_unicode.
    static func byteLevel(_ word: ArraySlice<Unicode.Scalar>) -> String {
        var out = String()
        for s in word { for b in String(s).utf8 { out.append(ByteLevel.byteToUnicode[Int(b)]) } }
        return out
    }

    // MARK: - Files

    static func readVocabularyJSON(_ url: URL) throws -> [String: Int] {
        let data: Data
        do { data = try Data(contentsOf: url) } catch {
            throw TokenizerError.unreadableFile(url.path, error.localizedDescription)
        }
        // JSONDecoder, not JSONSerialization: the latter drops a U+FEFF at the start of a string on Linux.
        guard let vocab = try? JSONDecoder().decode([String: Int].self, from: data) else {
            throw TokenizerError.invalidVocabulary("\(url.lastPathComponent) is not a JSON object of token -> integer id")
        }
        if let bad = vocab.first(where: { $0.value < 0 }) {
            throw TokenizerError.invalidVocabulary("\(url.lastPathComponent): id of \"\(bad.key)\" is negative")
        }
        return vocab
    }

    static func readMerges(_ url: URL) throws -> [(String, String)] {
        var merges: [(String, String)] = []
        for (index, line) in try readTextFile(url).split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let trimmed = line.hasSuffix("\r") ? line.dropLast() : line
            if trimmed.isEmpty || trimmed.hasPrefix("#version") { continue }
            let parts = trimmed.split(separator: " ", omittingEmptySubsequences: false)
            guard parts.count == 2 else {
                throw TokenizerError.invalidMerges("\(url.lastPathComponent) line \(index + 1) is not two space-separated tokens")
            }
            merges.append((String(parts[0]), String(parts[1])))
        }
        return merges
    }
}
