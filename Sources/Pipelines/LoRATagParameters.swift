// The parameters of a prompt's `<lora:...>` tag as AUTOMATIC1111 reads them (modules/extra_networks.py
// ExtraNetworkParams: the text after `lora:` split at ":", items with "=" named, the others positional;
// extensions-builtin/Lora/extra_networks_lora.py activate): positional NAME, TE multiplier (default 1), UNET multiplier
// (default: the TE one); named `te=` and `unet=` override them. `dyn` (a dynamic rank cut) is refused, as are other
// named parameters and extra positional ones (A1111 ignores unknown names; here they are errors naming them).
import Foundation

extension LoRAPrompt {
    /// One tag's text without the `<lora:` and `>`: "NAME", "NAME:0.8", "NAME:0.8:0.5", "NAME:te=0.8:unet=0.5".
    public static func tag(_ body: String) throws -> LoRATag {
        let items = body.split(separator: ":", omittingEmptySubsequences: false).map { String($0).trimmingCharacters(in: .whitespaces) }
        var positional: [String] = [], named: [(String, String)] = []
        for item in items {
            if let eq = item.firstIndex(of: "=") {
                named.append((String(item[..<eq]).trimmingCharacters(in: .whitespaces),
                              String(item[item.index(after: eq)...]).trimmingCharacters(in: .whitespaces)))
            } else {
                positional.append(item)
            }
        }
        let text = "<lora:\(body)>"
        guard let name = positional.first, !name.isEmpty else { throw LoRAError("prompt LoRA tag \(text) has no name") }
        func number(_ s: String, _ what: String) throws -> Float {
            guard let v = Float(s), v.isFinite else {
                throw LoRAError("prompt LoRA tag \(text): the \(what) '\(s)' is not a number (expected <lora:NAME:WEIGHT>, <lora:NAME:TE:UNET> or <lora:NAME:te=X:unet=Y>)")
            }
            return v
        }
        guard positional.count <= 3 else {
            throw LoRAError("prompt LoRA tag \(text): the fourth value (A1111's dyn, a dynamic rank) is not supported")
        }
        var te: Float = positional.count > 1 ? try number(positional[1], "text-encoder weight") : 1
        var unet: Float? = positional.count > 2 ? try number(positional[2], "UNet weight") : nil
        for (key, value) in named {
            switch key {
            case "te": te = try number(value, "text-encoder weight")
            case "unet": unet = try number(value, "UNet weight")
            case "dyn": throw LoRAError("prompt LoRA tag \(text): dyn (a dynamic rank) is not supported")
            default: throw LoRAError("prompt LoRA tag \(text): unknown parameter '\(key)' (te= and unet= are understood)")
            }
        }
        // A1111: the UNet multiplier defaults to the text encoder's; kept nil when equal so that a one-weight tag is
        // the plain (file, weight) it always was.
        return LoRATag(name: name, weight: te, unetWeight: unet == te ? nil : unet)
    }
}
