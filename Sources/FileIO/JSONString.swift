// JSON string literals as serde_json and Python's json.dumps(ensure_ascii=False) write them (RFC 8259 section 7):
// `"` and `\` escaped, the control characters below U+0020 as \n \r \t \b \f or \u00XX, everything else verbatim
// UTF-8. Used by the safetensors header writer and the web UI infotext's `quote`.
import Foundation

public enum JSONString {
    /// `s` as a quoted JSON string literal.
    public static func quoted(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"":
                out += "\\\""
            case "\\":
                out += "\\\\"
            case "\n":
                out += "\\n"
            case "\r":
                out += "\\r"
            case "\t":
                out += "\\t"
            case "\u{08}":
                out += "\\b"
            case "\u{0C}":
                out += "\\f"
            default:
                if u.value < 0x20 {
                    out += String(format: "\\u%04x", u.value)
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out + "\""
    }
}
