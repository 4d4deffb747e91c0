// Errors thrown while loading tokenizer files (vocab.json, merges.txt, vocab.txt, tokenizer configs,
// the OpenCLIP gzip vocabulary). Mirrors the failures transformers/tokenizers raise for bad files.
import Foundation

public enum TokenizerError: Error, CustomStringConvertible, Equatable {
    case unreadableFile(String, String)
    case invalidVocabulary(String)
    case invalidMerges(String)
    case invalidConfig(String)
    case missingToken(String)
    case decompression(String)

    public var description: String {
        switch self {
        case .unreadableFile(let path, let why): return "cannot read tokenizer file \(path): \(why)"
        case .invalidVocabulary(let why): return "invalid tokenizer vocabulary: \(why)"
        case .invalidMerges(let why): return "invalid BPE merges: \(why)"
        case .invalidConfig(let why): return "invalid tokenizer config: \(why)"
        case .missingToken(let why): return "token missing from vocabulary: \(why)"
        case .decompression(let why): return "gzip decompression failed: \(why)"
        }
    }
}

/// Reads a whole file as UTF-8 text, throwing `TokenizerError` with the path on failure.
func readTextFile(_ url: URL) throws -> String {
    let data: Data
    do { data = try Data(contentsOf: url) } catch {
        throw TokenizerError.unreadableFile(url.path, "\(error.localizedDescription)")
    }
    guard let text = String(data: data, encoding: .utf8) else {
        throw TokenizerError.unreadableFile(url.path, "not valid UTF-8")
    }
    return text
}
