// Restricted unpickler for torch checkpoints. Opcode semantics follow CPython Lib/pickle.py
// (`_Unpickler.load_*`); the allow-list follows torch/_weights_only_unpickler.py: only torch's
// tensor/parameter rebuild functions, storage types, dtypes, OrderedDict, torch.Size, set and
// `_codecs.encode` may be called. Nothing is ever executed: calls build descriptions.
import Foundation

public struct UnpicklerLimits {
    /// Deepest container nesting accepted in the result.
    public var maxDepth = 256
    public init() {}
}

public enum UnknownCallPolicy {
    /// Throw "refused to call module.name" (default, like torch.load(weights_only=True)).
    case refuse
    /// Record the call as an inert `.object` (still never executed).
    case recordInert
}

public final class Unpickler {
    private let data: UnsafeRawBufferPointer
    private var pos = 0
    private var stack: [PickleValue] = []
    private var marks: [Int] = []
    private var memo: [UInt64: PickleValue] = [:]
    /// Every container created, so a failed or partly unreachable result can be torn down without recursion.
    private var registry: [AnyObject] = []
    private let limits: UnpicklerLimits
    private let policy: UnknownCallPolicy
    private let persistentLoad: (PickleValue) throws -> PickleValue
    public private(set) var objectCount = 0

    public init(_ data: UnsafeRawBufferPointer, limits: UnpicklerLimits = .init(), policy: UnknownCallPolicy = .refuse,
                persistentLoad: @escaping (PickleValue) throws -> PickleValue) {
        self.data = data
        self.limits = limits
        self.policy = policy
        self.persistentLoad = persistentLoad
    }

    /// Unpickles `data` (a copy of an entry's bytes).
    public static func load(_ bytes: Data, limits: UnpicklerLimits = .init(), policy: UnknownCallPolicy = .refuse,
                            persistentLoad: @escaping (PickleValue) throws -> PickleValue) throws -> (PickleValue, Int) {
        try bytes.withUnsafeBytes { raw in
            let u = Unpickler(raw, limits: limits, policy: policy, persistentLoad: persistentLoad)
            let v = try u.load()
            return (v, u.objectCount)
        }
    }

    /// Unpickles the pickle at the start of `bytes`, which may go on past its STOP (legacy torch files are several
    /// pickles and raw data in a row): the value, the objects created and the number of bytes the pickle took.
    public static func loadPrefix(_ bytes: UnsafeRawBufferPointer, limits: UnpicklerLimits = .init(),
                                  policy: UnknownCallPolicy = .refuse,
                                  persistentLoad: @escaping (PickleValue) throws -> PickleValue) throws -> (PickleValue, Int, Int) {
        let u = Unpickler(bytes, limits: limits, policy: policy, persistentLoad: persistentLoad)
        let v = try u.load()
        return (v, u.objectCount, u.pos)
    }

    public func load() throws -> PickleValue {
        do {
            let v = try run()
            try validate(v)
            stack = []
            memo = [:]
            registry = []
            return v
        } catch {
            teardown(keep: [])
            throw error
        }
    }

    // MARK: - Reading primitives

    private func fail(_ msg: String) -> CheckpointError { CheckpointError("pickle: \(msg) (at byte \(pos))") }

    private func need(_ n: Int) throws {
        guard n >= 0, n <= data.count - pos else { throw fail("value of \(n) bytes runs past the end of the \(data.count)-byte pickle") }
    }
    private func byte() throws -> UInt8 {
        try need(1)
        defer { pos += 1 }
        return data[pos]
    }
    private func le(_ n: Int) throws -> UInt64 {
        try need(n)
        var v: UInt64 = 0
        for i in 0..<n { v |= UInt64(data[pos + i]) << (8 * UInt64(i)) }
        pos += n
        return v
    }
    private func bytes(_ n: UInt64) throws -> UnsafeRawBufferPointer {
        guard n <= UInt64(data.count - pos) else { throw fail("value of \(n) bytes runs past the end of the \(data.count)-byte pickle") }
        defer { pos += Int(n) }
        return UnsafeRawBufferPointer(rebasing: data[pos..<(pos + Int(n))])
    }
    private func line() throws -> String {
        var e = pos
        while e < data.count && data[e] != 0x0A { e += 1 }
        guard e < data.count else { throw fail("unterminated text line") }
        defer { pos = e + 1 }
        return String(decoding: UnsafeRawBufferPointer(rebasing: data[pos..<e]), as: UTF8.self)
    }
    private func utf8(_ n: UInt64) throws -> String {
        let b = try bytes(n)
        guard let s = String(validating: b, as: UTF8.self) else { throw fail("invalid UTF-8 string") }
        return s
    }

    // MARK: - Stack

    private func push(_ v: PickleValue) { stack.append(v) }
    private func pop() throws -> PickleValue {
        guard let v = stack.popLast() else { throw fail("stack underflow") }
        if let m = marks.last, stack.count < m { throw fail("stack underflow below MARK") }
        return v
    }
    private func top() throws -> PickleValue {
        guard let v = stack.last, stack.count > (marks.last ?? 0) else { throw fail("stack underflow") }
        return v
    }
    private func popMark() throws -> [PickleValue] {
        guard let m = marks.popLast() else { throw fail("no MARK on the stack") }
        guard m <= stack.count else { throw fail("MARK above the stack") }
        let items = Array(stack[m...])
        stack.removeSubrange(m...)
        return items
    }
    private func newList(_ k: PickleList.Kind, _ items: [PickleValue]) -> PickleList {
        let l = PickleList(k, items)
        registry.append(l)
        objectCount += 1
        return l
    }
    private func newDict() -> PickleDict {
        let d = PickleDict()
        registry.append(d)
        objectCount += 1
        return d
    }
    private func memoGet(_ i: UInt64) throws -> PickleValue {
        guard let v = memo[i] else { throw fail("memo index \(i) is not defined") }
        return v
    }
    private func memoPut(_ i: UInt64) throws { memo[i] = try top() }

    // MARK: - Main loop

    private func run() throws -> PickleValue {
        while true {
            guard pos < data.count else { throw fail("pickle ended without a STOP opcode") }
            let op = try byte()
            switch op {
            case 0x80:
                let p = try byte()
                guard p <= 5 else { throw fail("unsupported protocol \(p)") }  // PROTO
            case 0x95: _ = try le(8)                                               // FRAME (length only)
            case 0x2E:                                                             // STOP
                guard marks.isEmpty else { throw fail("STOP with an open MARK") }
                return try pop()
            case 0x28: marks.append(stack.count)                                   // MARK
            case 0x30: _ = try pop()                                               // POP
            case 0x31: _ = try popMark()                                           // POP_MARK
            case 0x32: push(try top())                                             // DUP
            case 0x4E: push(.none)                                                 // NONE
            case 0x88: push(.bool(true))                                           // NEWTRUE
            case 0x89: push(.bool(false))                                          // NEWFALSE
            case 0x4B: push(.int(Int(try le(1))))                                  // BININT1
            case 0x4D: push(.int(Int(try le(2))))                                  // BININT2
            case 0x4A: push(.int(Int(Int32(truncatingIfNeeded: try le(4)))))       // BININT
            case 0x8A: push(try long(Int(try le(1))))                              // LONG1
            case 0x8B:                                                             // LONG4
                let n = Int32(truncatingIfNeeded: try le(4))
                guard n >= 0 else { throw fail("negative LONG4 length") }
                push(try long(Int(n)))
            case 0x47: push(.float(Double(bitPattern: UInt64(bigEndian: (try bytes(8)).loadUnaligned(as: UInt64.self)))))  // BINFLOAT
            case 0x49:                                                             // INT (text)
                let s = try line()
                if s == "00" { push(.bool(false)) } else if s == "01" { push(.bool(true)) }
                else if let i = Int(s) { push(.int(i)) } else { throw fail("bad INT \(s.prefix(30))") }
            case 0x4C:                                                             // LONG (text)
                let s = try line()
                guard let i = Int(s.hasSuffix("L") ? String(s.dropLast()) : s) else { throw fail("unsupported LONG \(s.prefix(30))") }
                push(.int(i))
            case 0x46:                                                             // FLOAT (text)
                let s = try line()
                guard let d = Double(s) else { throw fail("bad FLOAT") }
                push(.float(d))
            case 0x58: push(.string(try utf8(try le(4))))                          // BINUNICODE
            case 0x8C: push(.string(try utf8(try le(1))))                          // SHORT_BINUNICODE
            case 0x8D: push(.string(try utf8(try le(8))))                          // BINUNICODE8
            case 0x54: push(try py2String(try bytes(try le(4))))                   // BINSTRING (py2 str)
            case 0x55: push(try py2String(try bytes(try le(1))))                   // SHORT_BINSTRING
            case 0x42: push(.bytes(Data(try bytes(try le(4)))))                    // BINBYTES
            case 0x43: push(.bytes(Data(try bytes(try le(1)))))                    // SHORT_BINBYTES
            case 0x8E, 0x96: push(.bytes(Data(try bytes(try le(8)))))              // BINBYTES8, BYTEARRAY8
            case 0x29: push(.tuple(newList(.tuple, [])))                           // EMPTY_TUPLE
            case 0x85:
                let a = try pop()
                push(.tuple(newList(.tuple, [a])))      // TUPLE1
            case 0x86:
                let b = try pop(), a = try pop()
                push(.tuple(newList(.tuple, [a, b])))
            case 0x87:
                let c = try pop(), b = try pop(), a = try pop()
                push(.tuple(newList(.tuple, [a, b, c])))
            case 0x74: push(.tuple(newList(.tuple, try popMark())))                // TUPLE
            case 0x5D: push(.list(newList(.list, [])))                             // EMPTY_LIST
            case 0x6C: push(.list(newList(.list, try popMark())))                  // LIST
            case 0x7D: push(.dict(newDict()))                                      // EMPTY_DICT
            case 0x64:                                                             // DICT
                let items = try popMark()
                guard items.count % 2 == 0 else { throw fail("DICT with an odd number of items") }
                let d = newDict()
                for i in stride(from: 0, to: items.count, by: 2) { d.set(items[i], items[i + 1]) }
                push(.dict(d))
            case 0x8F: push(.set(newList(.set, [])))                               // EMPTY_SET
            case 0x91: push(.set(newList(.set, try popMark())))                    // FROZENSET
            case 0x61:                                                             // APPEND
                let v = try pop()
                try appendItems([v])
            case 0x65:
                let items = try popMark()
                try appendItems(items)           // APPENDS
            case 0x90:                                                             // ADDITEMS
                let items = try popMark()
                guard case .set(let s) = try top() else { throw fail("ADDITEMS on a non-set") }
                s.items.append(contentsOf: items)
            case 0x73:                                                             // SETITEM
                let v = try pop(), k = try pop()
                guard case .dict(let d) = try top() else { throw fail("SETITEM on \(try top().typeName)") }
                d.set(k, v)
            case 0x75:                                                             // SETITEMS
                let items = try popMark()
                guard items.count % 2 == 0 else { throw fail("SETITEMS with an odd number of items") }
                guard case .dict(let d) = try top() else { throw fail("SETITEMS on \(try top().typeName)") }
                for i in stride(from: 0, to: items.count, by: 2) { d.set(items[i], items[i + 1]) }
            case 0x71: try memoPut(try le(1))                                      // BINPUT
            case 0x72: try memoPut(try le(4))                                      // LONG_BINPUT
            case 0x70:                                                             // PUT (text)
                guard let i = UInt64(try line()) else { throw fail("bad PUT index") }
                try memoPut(i)
            case 0x94: try memoPut(UInt64(memo.count))                             // MEMOIZE
            case 0x68: push(try memoGet(try le(1)))                                // BINGET
            case 0x6A: push(try memoGet(try le(4)))                                // LONG_BINGET
            case 0x67:                                                             // GET (text)
                guard let i = UInt64(try line()) else { throw fail("bad GET index") }
                push(try memoGet(i))
            case 0x63:                                                             // GLOBAL
                let m = try line(), n = try line()
                push(Unpickler.global(m, n))
            case 0x93:                                                             // STACK_GLOBAL
                let n = try pop(), m = try pop()
                guard let ms = m.stringValue, let ns = n.stringValue else { throw fail("STACK_GLOBAL needs two strings") }
                push(Unpickler.global(ms, ns))
            case 0x52:                                                             // REDUCE
                let args = try pop(), f = try pop()
                guard case .tuple(let a) = args else { throw fail("REDUCE arguments are not a tuple") }
                push(try call(f, a.items))
            case 0x81:                                                             // NEWOBJ
                let args = try pop(), cls = try pop()
                guard case .tuple(let a) = args else { throw fail("NEWOBJ arguments are not a tuple") }
                push(try call(cls, a.items))
            case 0x92:                                                             // NEWOBJ_EX
                _ = try pop()
                let args = try pop(), cls = try pop()
                push(try call(cls, args.sequenceItems ?? []))
            case 0x62: try build(try pop())                                        // BUILD
            case 0x51: push(try persistentLoad(try pop()))                         // BINPERSID
            case 0x50: push(try persistentLoad(.string(try line())))               // PERSID
            case 0x69:                                                             // INST
                let m = try line(), n = try line()
                push(try call(Unpickler.global(m, n), try popMark()))
            case 0x6F:                                                             // OBJ
                let items = try popMark()
                guard let cls = items.first else { throw fail("OBJ without a class") }
                push(try call(cls, Array(items.dropFirst())))
            case 0x82, 0x83, 0x84: throw fail("extension registry opcodes (EXT1/2/4) are refused")
            case 0x97, 0x98: throw fail("out-of-band buffers (NEXT_BUFFER/READONLY_BUFFER) are not supported")
            default: throw fail(String(format: "unknown opcode 0x%02x", op))
            }
        }
    }

    /// A Python 2 `str` (legacy torch files saved by Python 2, e.g. the lpips package's weights): torch.load unpickles
    /// with encoding="utf-8", so it becomes a str, and invalid UTF-8 fails as it does there.
    private func py2String(_ b: UnsafeRawBufferPointer) throws -> PickleValue {
        guard let s = String(validating: b, as: UTF8.self) else { throw fail("Python 2 str is not valid UTF-8 (torch.load decodes it as utf-8)") }
        return .string(s)
    }

    private func long(_ n: Int) throws -> PickleValue {
        let b = try bytes(UInt64(n))
        if n == 0 { return .int(0) }
        if n <= 8 {
            var v: UInt64 = 0
            for i in 0..<n { v |= UInt64(b[i]) << (8 * UInt64(i)) }
            if n < 8, b[n - 1] & 0x80 != 0 { v |= ~0 << (8 * UInt64(n)) }   // sign-extend
            return .int(Int(Int64(bitPattern: v)))
        }
        return .bigInt(Data(b))
    }

    private func appendItems(_ items: [PickleValue]) throws {
        switch try top() {
        case .list(let l): l.items.append(contentsOf: items)
        case .set(let s): s.items.append(contentsOf: items)
        default: throw fail("APPEND on \(try top().typeName)")
        }
    }

    static func global(_ module: String, _ name: String) -> PickleValue {
        let m: String
        switch module {
        case "__builtin__": m = "builtins"
        case "copy_reg": m = "copyreg"
        default: m = module
        }
        return .global(module: m, name: name)
    }

    // MARK: - Calls (allow-list)

    private func call(_ f: PickleValue, _ args: [PickleValue]) throws -> PickleValue {
        guard case .global(let m, let n) = f else { throw fail("call of a non-global \(f.typeName) is refused") }
        let full = "\(m).\(n)"
        switch full {
        case "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v3":
            guard args.count >= 4, case .storage(let s) = args[0], let off = args[1].intValue,
                  let size = args[2].sequenceItems, let strd = args[3].sequenceItems else {
                throw fail("\(full): unexpected arguments")
            }
            var dtype = s.dtype
            if n == "_rebuild_tensor_v3" {
                guard args.count >= 7, case .global("torch", let dn) = args[6], let dt = Unpickler.torchDType(dn) else {
                    throw fail("\(full): missing or unsupported dtype argument")
                }
                dtype = dt
            }
            let shape = try size.map { v -> Int in
                guard let i = v.intValue else { throw fail("\(full): non-integer size") }
                return i
            }
            let stride = try strd.map { v -> Int in
                guard let i = v.intValue else { throw fail("\(full): non-integer stride") }
                return i
            }
            guard shape.count == stride.count, shape.count <= 64 else { throw fail("\(full): size/stride rank mismatch") }
            guard off >= 0, !shape.contains(where: { $0 < 0 }), !stride.contains(where: { $0 < 0 }) else {
                throw fail("\(full): negative size, stride or offset")
            }
            objectCount += 1
            let t = TorchTensorRef(storage: s, dtype: dtype, storageOffset: off, shape: shape, stride: stride)
            registry.append(t)
            return .tensor(t)
        case "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state":
            guard let first = args.first, case .tensor(let t) = first else { throw fail("\(full): first argument is not a tensor") }
            t.isParameter = true
            return .tensor(t)
        case "collections.OrderedDict", "builtins.dict":
            let d = newDict()
            if let src = args.first {
                switch src {
                case .dict(let o): for i in 0..<o.count { d.set(o.keys[i], o.values[i]) }
                default:
                    guard let pairs = src.sequenceItems else { throw fail("\(full): argument is not a list of pairs") }
                    for p in pairs {
                        guard let kv = p.sequenceItems, kv.count == 2 else { throw fail("\(full): item is not a pair") }
                        d.set(kv[0], kv[1])
                    }
                }
            }
            return .dict(d)
        case "torch.Size", "builtins.tuple":
            return .tuple(newList(.tuple, args.first?.sequenceItems ?? []))
        case "builtins.list":
            return .list(newList(.list, args.first?.sequenceItems ?? []))
        case "builtins.set", "builtins.frozenset":
            return .set(newList(.set, args.first?.sequenceItems ?? []))
        case "_codecs.encode":
            guard let s = args.first?.stringValue else { throw fail("_codecs.encode: first argument is not a str") }
            let enc = args.count > 1 ? (args[1].stringValue ?? "") : "utf-8"
            if enc == "latin1" || enc == "latin-1" {
                var d = Data()
                for u in s.unicodeScalars {
                    guard u.value < 256 else { throw fail("_codecs.encode: non-latin1 character") }
                    d.append(UInt8(u.value))
                }
                return .bytes(d)
            }
            return .bytes(Data(s.utf8))
        case "builtins.bytearray", "builtins.bytes":
            if case .bytes(let b)? = args.first { return .bytes(b) }
            return .bytes(Data())
        case "torch.device":
            let o = PickleObject(module: m, name: n, args: args)
            registry.append(o)
            objectCount += 1
            return .object(o)
        default:
            if policy == .recordInert {
                let o = PickleObject(module: m, name: n, args: args)
                registry.append(o)
                objectCount += 1
                return .object(o)
            }
            throw CheckpointError("pickle: refused to call \(full) (not an allowed torch.load global)")
        }
    }

    private func build(_ state: PickleValue) throws {
        switch try top() {
        case .dict(let d): d.state = state
        case .tensor: break   // parameter/tensor python attributes: ignored
        case .object(let o): o.state = state
        case .global(let m, let n):
            throw CheckpointError("pickle: refused to BUILD (call __setstate__ on) \(m).\(n)")
        default: throw fail("BUILD on \(try top().typeName)")
        }
    }

    static func torchDType(_ name: String) -> StorageDType? {
        switch name {
        case "float32", "float": return .F32
        case "float64", "double": return .F64
        case "float16", "half": return .F16
        case "bfloat16": return .BF16
        case "int64", "long": return .I64
        case "int32", "int": return .I32
        case "int16", "short": return .I16
        case "int8": return .I8
        case "uint8": return .U8
        case "uint16": return .U16
        case "uint32": return .U32
        case "uint64": return .U64
        case "bool": return .BOOL
        case "float8_e4m3fn": return .F8_E4M3
        case "float8_e5m2": return .F8_E5M2
        case "float8_e8m0fnu": return .F8_E8M0
        case "complex64", "cfloat": return .C64
        default: return nil
        }
    }

    // MARK: - Result validation and teardown

    /// Refuses cycles and nesting deeper than `limits.maxDepth` (iterative, memoized: linear in the DAG),
    /// then empties every container the result does not reach.
    private func validate(_ root: PickleValue) throws {
        var height: [ObjectIdentifier: Int] = [:]
        var onPath = Set<ObjectIdentifier>()
        func node(_ v: PickleValue) -> (AnyObject, [PickleValue])? {
            switch v {
            case .tuple(let l), .list(let l), .set(let l): return (l, l.items)
            case .dict(let d): return (d, d.keys + d.values + (d.state.map { [$0] } ?? []))
            case .object(let o): return (o, o.args + (o.state.map { [$0] } ?? []))
            default: return nil
            }
        }
        guard let r = node(root) else {
            teardown(keep: [])
            return
        }
        var work: [(AnyObject, [PickleValue], Int, Int)] = [(r.0, r.1, 0, 0)]   // object, children, next child, max child height
        onPath.insert(ObjectIdentifier(r.0))
        while let frame = work.popLast() {
            let (obj, kids) = (frame.0, frame.1)
            var (i, h) = (frame.2, frame.3)
            var descended = false
            while i < kids.count {
                let kid = kids[i]
                i += 1
                guard let k = node(kid) else { continue }
                let id = ObjectIdentifier(k.0)
                if let kh = height[id] {
                    h = max(h, kh)
                    continue
                }
                if onPath.contains(id) { throw CheckpointError("pickle: cyclic structure (an object contains itself)") }
                guard work.count + 2 <= limits.maxDepth else {
                    throw CheckpointError("pickle: structure nested too deep (more than \(limits.maxDepth) levels)")
                }
                work.append((obj, kids, i, h))
                work.append((k.0, k.1, 0, 0))
                onPath.insert(id)
                descended = true
                break
            }
            if descended { continue }
            let id = ObjectIdentifier(obj)
            onPath.remove(id)
            height[id] = h + 1
            if var parent = work.popLast() {
                parent.3 = max(parent.3, h + 1)
                work.append(parent)
            }
        }
        teardown(keep: Set(height.keys))
    }

    private func teardown(keep: Set<ObjectIdentifier>) {
        for o in registry where !keep.contains(ObjectIdentifier(o)) {
            if let l = o as? PickleList { l.items = [] }
            else if let d = o as? PickleDict { d.clear() }
            else if let p = o as? PickleObject {
                p.args = []
                p.state = nil
            }
        }
        stack = []
        memo = [:]
        registry = []
    }
}
