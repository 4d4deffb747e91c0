// Values produced by the restricted unpickler (see Unpickler.swift). Containers are classes
// because pickle memoizes objects and mutates them afterwards (SETITEMS/APPENDS/BUILD),
// as in CPython's Lib/pickle.py `_Unpickler`. Torch storages and tensors are descriptions only
// (torch/serialization.py `persistent_load`, torch/_utils.py `_rebuild_tensor_v2`).
import Foundation

public final class PickleList {
    public enum Kind { case list, tuple, set }
    public let kind: Kind
    public internal(set) var items: [PickleValue]
    init(_ kind: Kind, _ items: [PickleValue] = []) {
        self.kind = kind
        self.items = items
    }
}

/// An insertion-ordered dict (Python dicts and OrderedDict); string keys are indexed.
public final class PickleDict {
    public private(set) var keys: [PickleValue] = []
    public private(set) var values: [PickleValue] = []
    private var stringIndex: [String: Int] = [:]
    /// State applied by BUILD (e.g. an OrderedDict's `_metadata`), kept inert.
    public internal(set) var state: PickleValue?

    func set(_ k: PickleValue, _ v: PickleValue) {
        if case .string(let s) = k {
            if let i = stringIndex[s] {
                values[i] = v
                return
            }
            stringIndex[s] = keys.count
        }
        keys.append(k)
        values.append(v)
    }
    public subscript(_ key: String) -> PickleValue? { stringIndex[key].map { values[$0] } }
    public var count: Int { keys.count }
    func clear() {
        keys = []
        values = []
        stringIndex = [:]
        state = nil
    }
}

/// A storage referenced by a persistent id ('storage', <torch.XStorage>, key, location, numel).
public struct TorchStorageRef {
    public let key: String
    public let dtype: StorageDType
    public let typeName: String
    public let location: String
    public let elementCount: Int
}

/// A tensor rebuilt by torch._utils._rebuild_tensor_v2/_v3 (storage offset and strides in elements).
public final class TorchTensorRef {
    public let storage: TorchStorageRef
    public let dtype: StorageDType
    public let storageOffset: Int
    public let shape: [Int]
    public let stride: [Int]
    public internal(set) var isParameter = false
    init(storage: TorchStorageRef, dtype: StorageDType, storageOffset: Int, shape: [Int], stride: [Int]) {
        self.storage = storage
        self.dtype = dtype
        self.storageOffset = storageOffset
        self.shape = shape
        self.stride = stride
    }
}

/// A call that was recorded but not performed (allowed inert types like torch.device, or
/// anything when the unpickler runs with `.recordUnknownCalls`).
public final class PickleObject {
    public let module: String
    public let name: String
    public internal(set) var args: [PickleValue]
    public internal(set) var state: PickleValue?
    init(module: String, name: String, args: [PickleValue]) {
        self.module = module
        self.name = name
        self.args = args
    }
}

public enum PickleValue {
    case none
    case bool(Bool)
    case int(Int)
    /// Integers beyond 64 bits: little-endian two's complement bytes (LONG1/LONG4).
    case bigInt(Data)
    case float(Double)
    case string(String)
    case bytes(Data)
    case tuple(PickleList)
    case list(PickleList)
    case set(PickleList)
    case dict(PickleDict)
    /// A global referenced but never called (e.g. Lightning's ModelCheckpoint class as a dict key).
    case global(module: String, name: String)
    case storage(TorchStorageRef)
    case tensor(TorchTensorRef)
    case object(PickleObject)

    public var typeName: String {
        switch self {
        case .none: return "NoneType"
        case .bool: return "bool"
        case .int, .bigInt: return "int"
        case .float: return "float"
        case .string: return "str"
        case .bytes: return "bytes"
        case .tuple: return "tuple"
        case .list: return "list"
        case .set: return "set"
        case .dict: return "dict"
        case .global(let m, let n): return "global \(m).\(n)"
        case .storage: return "storage"
        case .tensor: return "tensor"
        case .object(let o): return "\(o.module).\(o.name)"
        }
    }

    public var isNone: Bool {
        if case .none = self { return true }
        return false
    }
    public var intValue: Int? {
        if case .int(let i) = self { return i }
        if case .bool(let b) = self { return b ? 1 : 0 }
        return nil
    }
    public var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }
    public var dictValue: PickleDict? {
        if case .dict(let d) = self { return d }
        return nil
    }
    public var tensorValue: TorchTensorRef? {
        if case .tensor(let t) = self { return t }
        return nil
    }
    public var sequenceItems: [PickleValue]? {
        switch self {
            case .tuple(let l), .list(let l), .set(let l): return l.items
            default: return nil
        }
    }

    /// Short Python-like rendering, bounded in depth and length (for reports and errors).
    public func summary(maxLength: Int = 200) -> String {
        var out = ""
        render(into: &out, depth: 0, budget: maxLength)
        return out.count > maxLength ? String(out.prefix(maxLength)) + "…" : out
    }

    private func render(into out: inout String, depth: Int, budget: Int) {
        if out.count > budget { return }
        if depth > 8 {
            out += "…"
            return
        }
        func seq(_ l: PickleList, _ open: String, _ close: String) {
            out += open
            for (i, v) in l.items.enumerated() {
                if out.count > budget {
                    out += "…"
                    break
                }
                if i > 0 { out += ", " }
                v.render(into: &out, depth: depth + 1, budget: budget)
            }
            out += close
        }
        switch self {
        case .none: out += "None"
        case .bool(let b): out += b ? "True" : "False"
        case .int(let i): out += String(i)
        case .bigInt(let d): out += "<int \(d.count * 8)-bit>"
        case .float(let f): out += String(f)
        case .string(let s): out += "'" + s.prefix(80) + (s.count > 80 ? "…" : "") + "'"
        case .bytes(let d): out += "b<\(d.count) bytes>"
        case .tuple(let l): seq(l, "(", ")")
        case .list(let l): seq(l, "[", "]")
        case .set(let l): seq(l, "{", "}")
        case .dict(let d):
            out += "{"
            for i in 0..<d.count {
                if out.count > budget {
                    out += "…"
                    break
                }
                if i > 0 { out += ", " }
                d.keys[i].render(into: &out, depth: depth + 1, budget: budget)
                out += ": "
                d.values[i].render(into: &out, depth: depth + 1, budget: budget)
            }
            out += "}"
        case .global(let m, let n): out += "<\(m).\(n)>"
        case .storage(let s): out += "<storage \(s.key) \(s.dtype.rawValue)×\(s.elementCount)>"
        case .tensor(let t): out += "<tensor \(t.dtype.rawValue) \(t.shape)>"
        case .object(let o): out += "<\(o.module).\(o.name)(…)>"
        }
    }
}
