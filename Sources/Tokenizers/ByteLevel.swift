// Matches `bytes_to_unicode` (openai CLIP simple_tokenizer.py, open_clip/tokenizer.py, GPT-2 encoder.py) and the
// byte -> char mapping of the `tokenizers` ByteLevel pre-tokenizer: every byte gets a printable unicode character,
// printable latin-1 bytes map to themselves, the others to U+0100 + n in byte order.

enum ByteLevel {
    /// `byteToUnicode[b]` is the character standing for byte `b`.
    static let byteToUnicode: [Character] = {
        var printable = Array(UInt32(33)...126) + Array(UInt32(161)...172) + Array(UInt32(174)...255)
        var codes = printable
        var n: UInt32 = 0
        for b in UInt32(0)..<256 where !printable.contains(b) {
            printable.append(b)
            codes.append(256 + n)
            n += 1
        }
        var table = [Character](repeating: " ", count: 256)
        for (b, c) in zip(printable, codes) { table[Int(b)] = Character(Unicode.Scalar(c)!) }
        return table
    }()

    /// Characters in the order of `bytes_to_unicode().values()` (dict insertion order): the first 256 vocabulary
    /// entries of the CLIP BPE vocabulary.
    static let orderedCharacters: [Character] = {
        var printable = Array(UInt32(33)...126) + Array(UInt32(161)...172) + Array(UInt32(174)...255)
        for b in UInt32(0)..<256 where !printable.contains(b) { printable.append(b) }
        return printable.map { byteToUnicode[Int($0)] }
    }()
}
