// Builds the CLIP BPE vocabulary from OpenCLIP's bpe_simple_vocab_16e6.txt.gz exactly as open_clip/tokenizer.py
// (SimpleTokenizer.__init__) and openai CLIP's simple_tokenizer.py do: merges = lines[1 : 49152-256-2+1],
// vocab = bytes_to_unicode values + the same with "</w>" + joined merges + the two special tokens. The special tokens
// get transformers' names "<|startoftext|>" (49406) and "<|endoftext|>" (49407) so ids equal openai/clip-vit-*'s
// vocab.json. The .gz file ships as a resource so CompVis single-file checkpoints (no tokenizer folder) work.
import Foundation

extension CLIPTokenizer {
    /// Vocabulary and merges from an OpenCLIP gzip BPE file.
    public static func openCLIPVocabulary(gzipFile url: URL) throws -> (vocabulary: [String: Int], merges: [(String, String)]) {
        let compressed: Data
        do { compressed = try Data(contentsOf: url) } catch {
            throw TokenizerError.unreadableFile(url.path, error.localizedDescription)
        }
        guard let text = String(data: try Gzip.decompress(compressed), encoding: .utf8) else {
            throw TokenizerError.invalidMerges("\(url.lastPathComponent) is not UTF-8 text")
        }
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        let end = 49152 - 256 - 2 + 1
        guard lines.count >= end else {
            throw TokenizerError.invalidMerges("\(url.lastPathComponent) has \(lines.count) lines, expected at least \(end)")
        }
        var merges: [(String, String)] = []
        merges.reserveCapacity(end - 1)
        for (offset, line) in lines[1..<end].enumerated() {
            let parts = line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" })
            guard parts.count == 2 else {
                throw TokenizerError.invalidMerges("\(url.lastPathComponent) line \(offset + 2) is not two tokens")
            }
            merges.append((String(parts[0]), String(parts[1])))
        }
        var list = ByteLevel.orderedCharacters.map { String($0) }
        list += list.map { $0 + "</w>" }
        list += merges.map { $0.0 + $0.1 }
        list += ["<|startoftext|>", "<|endoftext|>"]
        var vocab: [String: Int] = [:]
        vocab.reserveCapacity(list.count)
        for (i, token) in list.enumerated() { vocab[token] = i }
        return (vocab, merges)
    }

    /// URL of the bundled bpe_simple_vocab_16e6.txt.gz.
    public static var bundledOpenCLIPVocabularyURL: URL? {
        Bundle.module.url(forResource: "bpe_simple_vocab_16e6.txt", withExtension: "gz", subdirectory: "Resources")
    }

    /// The openai/OpenCLIP CLIP tokenizer from the bundled vocabulary. `padToken`: "<|endoftext|>" for SD 1.x
    /// (diffusers tokenizer/), "!" (id 0) for SD 2.x's diffusers tokenizer; the pad token is a special token and so
    /// is split out of the text, as transformers does.
    public static func openCLIPDefault(padToken: String = "<|endoftext|>", modelMaxLength: Int = 77) throws -> CLIPTokenizer {
        guard let url = bundledOpenCLIPVocabularyURL else {
            throw TokenizerError.unreadableFile("bpe_simple_vocab_16e6.txt.gz", "resource missing from the Tokenizers bundle")
        }
        let (vocab, merges) = try openCLIPVocabulary(gzipFile: url)
        var special = SpecialTokens.clip
        special.pad = SpecialToken(padToken)
        special.modelMaxLength = modelMaxLength
        return try CLIPTokenizer(vocabulary: vocab, merges: merges, specialTokens: special)
    }
}
