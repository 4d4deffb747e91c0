// Matches AUTOMATIC1111 stable-diffusion-webui modules/prompt_parser.py `parse_prompt_attention` (with `re_attention`
// and `re_break`): "(text)" x1.1, "[text]" x(1/1.1), "(text:1.3)" x1.3, "\(" "\)" "\[" "\]" "\\" literals,
// unbalanced brackets closed at the end, "BREAK" (whole word, surrounding whitespace dropped) -> ("BREAK", -1),
// runs of equal weight merged. Weights are computed in Double in the same order as Python floats.
// The one deliberate difference: A1111 raises on a weight like "(x:1.2.3)"; here that match is kept as literal text.

public enum PromptParser {
    public struct Fragment: Equatable, Sendable {
        public var text: String
        public var weight: Double
        public init(_ text: String, _ weight: Double) {
            self.text = text
            self.weight = weight
        }
        /// A "BREAK" marker as tokenize_line recognises it (weight exactly -1, i.e. not inside brackets).
        public var isBreak: Bool { text == "BREAK" && weight == -1 }
    }

    enum Kind: Equatable { case escaped, open, openSquare, weighted(Double), close, closeSquare, text }

    /// `parse_prompt_attention(text)`.
    public static func parseAttention(_ text: String) -> [Fragment] {
        var res: [Fragment] = []
        var round: [Int] = [], square: [Int] = []
        func multiplyRange(_ start: Int, _ m: Double) { for p in start..<res.count { res[p].weight *= m } }
        for (kind, raw) in lex(Array(text.unicodeScalars)) {
            switch kind {
            case .escaped: res.append(Fragment(string(raw.dropFirst()), 1.0))
            case .open: round.append(res.count)
            case .openSquare: square.append(res.count)
            case .weighted(let w) where !round.isEmpty: multiplyRange(round.removeLast(), w)
            case .close where !round.isEmpty: multiplyRange(round.removeLast(), 1.1)
            case .closeSquare where !square.isEmpty: multiplyRange(square.removeLast(), 1 / 1.1)
            default:
                for (i, part) in splitBreak(raw).enumerated() {
                    if i > 0 { res.append(Fragment("BREAK", -1)) }
                    res.append(Fragment(string(part), 1.0))
                }
            }
        }
        for p in round { multiplyRange(p, 1.1) }
        for p in square { multiplyRange(p, 1 / 1.1) }
        if res.isEmpty { res = [Fragment("", 1.0)] }
        var i = 0
        while i + 1 < res.count {
            if res[i].weight == res[i + 1].weight {
                res[i].text += res[i + 1].text
                res.remove(at: i + 1)
            } else {
                i += 1
            }
        }
        return res
    }

    static func string<C: Collection>(_ scalars: C) -> String where C.Element == Unicode.Scalar {
        String(String.UnicodeScalarView(scalars))
    }

    /// `re_attention.finditer`: \\( | \\) | \\[ | \\] | \\\\ | \\ | ( | [ | :([+-]?[.\d]+)\) | ) | ] | [^\\()\[\]:]+ | :
    static func lex(_ s: [Unicode.Scalar]) -> [(Kind, ArraySlice<Unicode.Scalar>)] {
        var out: [(Kind, ArraySlice<Unicode.Scalar>)] = []
        var i = 0
        let special: Set<Unicode.Scalar> = ["\\", "(", ")", "[", "]", ":"]
        while i < s.count {
            let c = s[i]
            switch c {
            case "\\":
                let n = i + 1 < s.count && ["(", ")", "[", "]", "\\"].contains(s[i + 1]) ? 2 : 1
                out.append((.escaped, s[i..<(i + n)]))
                i += n
            case "(":
                out.append((.open, s[i...i]))
                i += 1
            case "[":
                out.append((.openSquare, s[i...i]))
                i += 1
            case ")":
                out.append((.close, s[i...i]))
                i += 1
            case "]":
                out.append((.closeSquare, s[i...i]))
                i += 1
            case ":":
                var j = i + 1
                if j < s.count && (s[j] == "+" || s[j] == "-") { j += 1 }
                let numberStart = j
                while j < s.count && (s[j] == "." || isDecimalDigit(s[j])) { j += 1 }
                if j > numberStart && j < s.count && s[j] == ")" {
                    let raw = s[i...j]
                    if let w = parseFloat(s[(i + 1)..<j]) { out.append((.weighted(w), raw)) } else { out.append((.text, raw)) }
                    i = j + 1
                } else {
                    out.append((.text, s[i...i]))
                    i += 1
                }
            default:
                var j = i + 1
                while j < s.count && !special.contains(s[j]) { j += 1 }
                out.append((.text, s[i..<j]))
                i = j
            }
        }
        return out
    }

    /// Python `\d` (Unicode Nd).
    static func isDecimalDigit(_ c: Unicode.Scalar) -> Bool {
        c.isASCII ? (c.value >= 48 && c.value <= 57) : c.properties.generalCategory == .decimalNumber
    }

    /// Python `float()` of `[+-]?[.\d]+`; nil where Python raises (no digit, several dots).
    static func parseFloat(_ s: ArraySlice<Unicode.Scalar>) -> Double? {
        var sign = "", intPart = "", frac = "", seenDot = false
        for c in s {
            if c == "+" || c == "-" {
                sign = c == "-" ? "-" : ""
                continue
            }
            if c == "." {
                if seenDot { return nil }
                seenDot = true
                continue
            }
            guard let v = c.properties.numericValue, v >= 0, v <= 9 else { return nil }
            let d = String(Int(v))
            if seenDot { frac += d } else { intPart += d }
        }
        guard !(intPart.isEmpty && frac.isEmpty) else { return nil }
        return Double(sign + (intPart.isEmpty ? "0" : intPart) + "." + (frac.isEmpty ? "0" : frac))
    }

    /// Python `str.isspace` characters (the `\s` of `re`).
    static func isPythonSpace(_ c: Unicode.Scalar) -> Bool {
        switch c.value {
        case 0x09...0x0D, 0x1C...0x20, 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000: return true
        default: return false
        }
    }

    /// Python `re` word character (`\w`): letters, numbers, underscore.
    static func isWordChar(_ c: Unicode.Scalar) -> Bool {
        if c == "_" { return true }
        switch c.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter,
             .decimalNumber, .letterNumber, .otherNumber: return true
        default: return false
        }
    }

    /// `re.split(r"\s*\bBREAK\b\s*", text)`.
    static func splitBreak(_ s: ArraySlice<Unicode.Scalar>) -> [ArraySlice<Unicode.Scalar>] {
        let keyword = Array("BREAK".unicodeScalars)
        var parts: [ArraySlice<Unicode.Scalar>] = []
        var partStart = s.startIndex
        var i = s.startIndex
        while i + keyword.count <= s.endIndex {
            let isMatch = s[i..<(i + keyword.count)].elementsEqual(keyword)
                && (i == s.startIndex || !isWordChar(s[i - 1]))
                && (i + keyword.count == s.endIndex || !isWordChar(s[i + keyword.count]))
            if !isMatch {
                i += 1
                continue
            }
            var start = i
            while start > partStart && isPythonSpace(s[start - 1]) { start -= 1 }
            var end = i + keyword.count
            while end < s.endIndex && isPythonSpace(s[end]) { end += 1 }
            parts.append(s[partStart..<start])
            partStart = end
            i = end
        }
        parts.append(s[partStart..<s.endIndex])
        return parts
    }
}
