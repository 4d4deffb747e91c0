// The "parameters" PNG text chunk written by AUTOMATIC1111 stable-diffusion-webui
// (modules/processing.py create_infotext; parsed by modules/infotext_utils.py parse_generation_parameters):
//   <prompt>
//   Negative prompt: <negative prompt>
//   Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 512x512, Model hash: abc123, Model: v1-5
// Values containing ',', ':' or a newline are written JSON-quoted (json.dumps, ensure_ascii=False).
import FileIO
import Foundation

public struct GenerationParameters: Equatable, Sendable {
    public struct Field: Equatable, Sendable {
        public var key: String
        public var value: String
        public init(_ key: String, _ value: String) {
            self.key = key
            self.value = value
        }
    }

    public var prompt: String
    public var negativePrompt: String
    public var steps: Int?
    public var sampler: String?
    public var cfgScale: Double?
    public var seed: Int?
    public var width: Int?
    public var height: Int?
    public var modelHash: String?
    public var model: String?
    /// Further "Key: value" pairs (e.g. "Denoising strength"), written after the known ones, in order.
    public var extra: [Field]

    public init(prompt: String = "", negativePrompt: String = "", steps: Int? = nil, sampler: String? = nil,
                cfgScale: Double? = nil, seed: Int? = nil, width: Int? = nil, height: Int? = nil,
                modelHash: String? = nil, model: String? = nil, extra: [Field] = []) {
        self.prompt = prompt
        self.negativePrompt = negativePrompt
        self.steps = steps
        self.sampler = sampler
        self.cfgScale = cfgScale
        self.seed = seed
        self.width = width
        self.height = height
        self.modelHash = modelHash
        self.model = model
        self.extra = extra
    }

    /// The value of an extra field by key.
    public func extraValue(_ key: String) -> String? { extra.first { $0.key == key }?.value }

    // MARK: formatting (create_infotext)

    static func formatNumber(_ x: Double) -> String {
        if x == x.rounded(), abs(x) < 1e15 { return String(Int64(x)) }
        return String(x)
    }

    /// A1111's infotext `quote`: JSON-encode when the value contains ',', '\n' or ':'.
    static func quote(_ s: String) -> String {
        guard s.contains(",") || s.contains("\n") || s.contains(":") else {
            return s
        }
        return JSONString.quoted(s)
    }

    /// The ordered "Key: value" pairs of the last line.
    public var fields: [Field] {
        var f: [Field] = []
        if let v = steps { f.append(Field("Steps", String(v))) }
        if let v = sampler { f.append(Field("Sampler", v)) }
        if let v = cfgScale { f.append(Field("CFG scale", GenerationParameters.formatNumber(v))) }
        if let v = seed { f.append(Field("Seed", String(v))) }
        if let w = width, let h = height { f.append(Field("Size", "\(w)x\(h)")) }
        if let v = modelHash { f.append(Field("Model hash", v)) }
        if let v = model { f.append(Field("Model", v)) }
        return f + extra
    }

    /// The infotext, as written into the PNG "parameters" chunk.
    public var text: String {
        var s = prompt
        if !negativePrompt.isEmpty { s += "\nNegative prompt: " + negativePrompt }
        let line = fields.map { $0.key == $0.value ? $0.key : "\($0.key): \(GenerationParameters.quote($0.value))" }
            .joined(separator: ", ")
        s += "\n" + line
        return s.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The PNG text chunk ("parameters") carrying `text`.
    public var pngTextChunk: PNGTextChunk { PNGTextChunk(keyword: "parameters", text: text) }

    // MARK: parsing (parse_generation_parameters)

    /// Parses infotext. Never fails: text without a parameter line is all prompt.
    public init(parsing x: String) {
        self.init()
        var lines = x.trimmingCharacters(in: .whitespacesAndNewlines)
            .split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        var last = lines.popLast() ?? ""
        var pairs = GenerationParameters.findParams(last)
        if pairs.count < 3 {
            lines.append(last)
            last = ""
            pairs = []
        }
        var doneWithPrompt = false
        for raw in lines {
            var line = raw.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("Negative prompt:") {
                doneWithPrompt = true
                line = String(line.dropFirst(16)).trimmingCharacters(in: .whitespaces)
            }
            if doneWithPrompt { negativePrompt += (negativePrompt.isEmpty ? "" : "\n") + line }
            else { prompt += (prompt.isEmpty ? "" : "\n") + line }
        }
        for (k, rawValue) in pairs {
            var v = rawValue
            if v.count >= 2, v.hasPrefix("\""), v.hasSuffix("\""), let u = GenerationParameters.unquote(v) { v = u }
            switch k {
            case "Steps" where Int(v) != nil && steps == nil: steps = Int(v)
            case "Sampler" where sampler == nil: sampler = v
            case "CFG scale" where Double(v) != nil && cfgScale == nil: cfgScale = Double(v)
            case "Seed" where Int(v) != nil && seed == nil: seed = Int(v)
            case "Size" where GenerationParameters.parseSize(v) != nil && width == nil:
                (width, height) = GenerationParameters.parseSize(v)!
            case "Model hash" where modelHash == nil: modelHash = v
            case "Model" where model == nil: model = v
            default: extra.append(Field(k, v))
            }
        }
    }

    static func parseSize(_ v: String) -> (Int, Int)? {
        let p = v.split(separator: "x", omittingEmptySubsequences: false)
        guard p.count == 2, p.allSatisfy({ !$0.isEmpty && $0.allSatisfy(\.isASCII) && $0.allSatisfy(\.isNumber) }),
              let w = Int(p[0]), let h = Int(p[1]) else { return nil }
        return (w, h)
    }

    /// Equivalent of findall(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)', line).
    static func findParams(_ line: String) -> [(String, String)] {
        let c = Array(line.unicodeScalars)
        func isWord(_ u: Unicode.Scalar) -> Bool { u.properties.isAlphabetic || u.properties.numericType != nil || u == "_" }
        func isKeyChar(_ u: Unicode.Scalar) -> Bool { isWord(u) || u == " " || u == "-" || u == "/" }
        func isSpace(_ u: Unicode.Scalar) -> Bool { u.properties.isWhitespace }
        var out: [(String, String)] = []
        var start = 0
        while start <= c.count {
            var i = start
            while i < c.count, isSpace(c[i]) { i += 1 }
            var matched = false
            if i < c.count, isWord(c[i]) {
                var j = i + 1
                while j < c.count, isKeyChar(c[j]) { j += 1 }
                if j - i >= 2, j < c.count, c[j] == ":" {
                    let key = String(String.UnicodeScalarView(c[i..<j]))
                    var v = j + 1
                    while v < c.count, isSpace(c[v]) { v += 1 }
                    var end: Int? = nil
                    if v < c.count, c[v] == "\"" {  // quoted alternative: "(?:\\.|[^\\"])+" then ',' or end
                        var q = v + 1, n = 0
                        while q < c.count, c[q] != "\"" {
                            if c[q] == "\\" {
                                guard q + 1 < c.count else { break }
                                q += 2
                            } else { q += 1 }
                            n += 1
                        }
                        if q < c.count, c[q] == "\"", n > 0, q + 1 == c.count || c[q + 1] == "," { end = q + 1 }
                    }
                    if end == nil {
                        var e = v
                        while e < c.count, c[e] != "," { e += 1 }
                        end = e
                    }
                    let e = end!
                    out.append((key, String(String.UnicodeScalarView(c[v..<e]))))
                    start = e < c.count ? e + 1 : e
                    matched = true
                    if e >= c.count { break }
                }
            }
            if !matched { start += 1 }
        }
        return out
    }

    /// json.loads for a JSON string literal; nil when malformed.
    static func unquote(_ s: String) -> String? {
        guard let data = "[\(s)]".data(using: .utf8),
              let arr = try? JSONSerialization.jsonObject(with: data) as? [Any], let v = arr.first as? String else { return nil }
        return v
    }
}
