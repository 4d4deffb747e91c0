// Character classes of tokenizers' BertNormalizer / BertPreTokenizer (normalizers/bert.rs, pre_tokenizers/bert.rs,
// utils: `is_whitespace`, `is_control`, `is_chinese_char`, `is_bert_punc`), computed from Swift's Unicode tables.
// The reference takes general categories from the `unicode_categories` crate, whose tables are Unicode 8.0: characters
// assigned later are neither control, punctuation nor nonspacing marks there. A full scan of all code points against
// tokenizers 0.23 (Fixtures/bert_unicode.txt, checked by BertTokenizerTests.testCharacterClassesMatchReference) found
// these rules exact except for the characters listed below, whose category changed after 8.0, and U+11938, which
// the reference's NFD (unicode-normalization-alignments) does not decompose. Lower-casing is Rust std's (Unicode 17).
enum BertUnicode {
    /// Punctuation in Unicode 8.0, no longer in Swift's tables.
    static let extraPunctuation: Set<UInt32> = [0x166D, 0x111C9]
    /// Nonspacing marks (Mn) in Unicode 8.0 but not in Swift's tables, and the reverse.
    static let extraNonspacingMarks: Set<UInt32> = [0x1734, 0x1171E]
    static let notNonspacingMarks: Set<UInt32> = [0x1885, 0x1886, 0xA9BD, 0x111C9]
    /// Characters the reference's NFD leaves alone.
    static let notDecomposed: Set<UInt32> = [0x11938]

    static func knownToCategoryTables(_ c: Unicode.Scalar) -> Bool {
        guard let age = c.properties.age else { return false }
        return (age.major, age.minor) <= (8, 0)
    }

    static func isWhitespace(_ c: Unicode.Scalar) -> Bool {
        c == "\t" || c == "\n" || c == "\r" || c.properties.isWhitespace
    }

    /// Cc, Cf, Cn, Co, Cs (except \t \n \r).
    static func isControl(_ c: Unicode.Scalar) -> Bool {
        if c == "\t" || c == "\n" || c == "\r" { return false }
        guard knownToCategoryTables(c) else { return false }
        switch c.properties.generalCategory {
        case .control, .format, .privateUse, .surrogate: return true
        default: return false
        }
    }

    static func isChineseChar(_ c: Unicode.Scalar) -> Bool {
        switch c.value {
        case 0x4E00...0x9FFF, 0x3400...0x4DBF, 0x20000...0x2A6DF, 0x2A700...0x2B73F, 0x2B740...0x2B81F, 0x2B920...0x2CEAF,
             0xF900...0xFAFF, 0x2F800...0x2FA1F: return true
        default: return false
        }
    }

    static func isPunctuation(_ c: Unicode.Scalar) -> Bool {
        if c.isASCII {
            let v = c.value
            return (33...47).contains(v) || (58...64).contains(v) || (91...96).contains(v) || (123...126).contains(v)
        }
        if extraPunctuation.contains(c.value) { return true }
        guard knownToCategoryTables(c) else { return false }
        switch c.properties.generalCategory {
        case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation, .initialPunctuation,
             .finalPunctuation, .otherPunctuation: return true
        default: return false
        }
    }

    /// NFD as the reference computes it (Foundation NFD, except for `notDecomposed`, which are starters).
    static func nfd(_ text: [Unicode.Scalar]) -> [Unicode.Scalar] {
        var out: [Unicode.Scalar] = []
        var start = 0
        func flush(_ end: Int) {
            guard start < end else { return }
            out += String(String.UnicodeScalarView(text[start..<end])).decomposedStringWithCanonicalMapping.unicodeScalars
        }
        for (i, c) in text.enumerated() where notDecomposed.contains(c.value) {
            flush(i)
            out.append(c)
            start = i + 1
        }
        flush(text.count)
        return out
    }

    static func isNonspacingMark(_ c: Unicode.Scalar) -> Bool {
        if extraNonspacingMarks.contains(c.value) { return true }
        if notNonspacingMarks.contains(c.value) { return false }
        return knownToCategoryTables(c) && c.properties.generalCategory == .nonspacingMark
    }

    /// Rust `char::to_lowercase` (full mapping, no context).
    static func lowercase(_ c: Unicode.Scalar) -> [Unicode.Scalar] {
        if c.isASCII { return [c.value >= 65 && c.value <= 90 ? Unicode.Scalar(c.value + 32)! : c] }
        return Array(c.properties.lowercaseMapping.unicodeScalars)
    }
}
