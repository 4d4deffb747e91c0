import CDNNL
import Foundation

// The oneDNN backend (Debian's libdnnl 2.6, v2 C API): one engine and stream, primitives cached per problem shape,
// plain user layouts (NCHW / OIHW) reordered to whatever layout the chosen kernel prefers (nChw8c on AVX2,
// nChw16c on AVX-512), weights reordered once and cached on the weight tensor until it changes.

typealias Dims = dnnl_dims_t

@inline(__always) func dnnlCheck(_ status: dnnl_status_t, _ what: @autoclosure () -> String) {
    precondition(status == dnnl_success, "oneDNN: \(what()) failed with status \(status.rawValue)")
}

func dims(_ v: [Int]) -> Dims {
    var d: Dims = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    withUnsafeMutableBytes(of: &d) { raw in
        let p = raw.bindMemory(to: Int64.self)
        for (i, x) in v.enumerated() { p[i] = Int64(x) }
    }
    return d
}

/// A memory descriptor for a plain (row-major) layout, or `any` for "let the primitive choose".
func memoryDesc(_ shape: [Int], _ type: dnnl_data_type_t = dnnl_f32, tag: dnnl_format_tag_t? = nil) -> dnnl_memory_desc_t {
    var md = dnnl_memory_desc_t()
    var d = dims(shape)
    let plain: dnnl_format_tag_t = [dnnl_a, dnnl_ab, dnnl_abc, dnnl_abcd, dnnl_abcde][shape.count - 1]
    dnnlCheck(dnnl_memory_desc_init_by_tag(&md, Int32(shape.count), &d.0, type, tag ?? plain), "memory_desc_init \(shape)")
    return md
}

enum DNNL {
    nonisolated(unsafe) static let engine: dnnl_engine_t = {
        var e: dnnl_engine_t?
        dnnlCheck(dnnl_engine_create(&e, dnnl_cpu, 0), "engine_create")
        return e!
    }()
    nonisolated(unsafe) static let stream: dnnl_stream_t = {
        var s: dnnl_stream_t?
        dnnlCheck(dnnl_stream_create(&s, engine, dnnl_stream_default_flags.rawValue), "stream_create")
        return s!
    }()
    /// Attributes of every primitive: a user-managed scratchpad, passed at each execution (`Primitive.run`). oneDNN's
    /// default (library) scratchpad is thread-local memory sized on the thread that creates a primitive, so a cached
    /// primitive executed on another thread (the server's jobs) used that thread's scratchpad, unsized: a segfault in
    /// the first kernel that needs scratch (oneDNN's SSE41 level takes the im2col GEMM convolution, whose column
    /// buffer lives there: the `LDM_ISA=baseline` crash).
    nonisolated(unsafe) static let attr: dnnl_primitive_attr_t = {
        var a: dnnl_primitive_attr_t?
        dnnlCheck(dnnl_primitive_attr_create(&a), "primitive_attr_create")
        dnnlCheck(dnnl_primitive_attr_set_scratchpad_mode(a, dnnl_scratchpad_mode_user), "set_scratchpad_mode")
        return a!
    }()
    /// Runs `body` with `attr`, plus a binary-add post-op when `addend` (the descriptor of a float32 tensor of the
    /// destination's shape, passed at execution as `Primitive.Arg.postOpAddend`) is given: dst = op(...) + addend,
    /// added to the float32 accumulator before the store. The primitive descriptor keeps its own copy of the attributes.
    static func withAttr<T>(adding addend: dnnl_memory_desc_t?, _ body: (dnnl_primitive_attr_t) -> T) -> T {
        guard var md = addend else { return body(attr) }
        var a: dnnl_primitive_attr_t?, po: dnnl_post_ops_t?
        dnnlCheck(dnnl_primitive_attr_clone(&a, attr), "primitive_attr_clone")
        dnnlCheck(dnnl_post_ops_create(&po), "post_ops_create")
        dnnlCheck(dnnl_post_ops_append_binary(po, dnnl_binary_add, &md), "post_ops_append_binary")
        dnnlCheck(dnnl_primitive_attr_set_post_ops(a, po), "set_post_ops")
        defer {
            dnnl_post_ops_destroy(po)
            dnnl_primitive_attr_destroy(a)
        }
        return body(a!)
    }
    private static let lock = NSRecursiveLock()
    nonisolated(unsafe) private static var cache: [String: Primitive] = [:]

    /// Returns the cached primitive for `key`, creating it with `make` on first use.
    static func primitive(_ key: String, _ make: () -> Primitive) -> Primitive {
        lock.lock()
        defer { lock.unlock() }
        if let p = cache[key] { return p }
        let p = make()
        cache[key] = p
        return p
    }

    /// Wraps a user pointer in a memory object of descriptor `md`.
    static func memory(_ md: UnsafePointer<dnnl_memory_desc_t>, _ ptr: UnsafeMutableRawPointer?) -> dnnl_memory_t {
        var m: dnnl_memory_t?
        dnnlCheck(dnnl_memory_create(&m, md, engine, ptr ?? UnsafeMutableRawPointer(bitPattern: 0)), "memory_create")
        return m!
    }

    /// Reorder primitives keyed by the raw bytes of both descriptors (the hex string key this replaces, rebuilt on
    /// every call, cost 6.5% of a digits training step).
    private struct ReorderKey: Hashable { let from: Data, to: Data }
    nonisolated(unsafe) private static var reorders: [ReorderKey: Primitive] = [:]

    static func reorder(from: dnnl_memory_desc_t, _ src: UnsafeMutableRawPointer, to: dnnl_memory_desc_t, _ dst: UnsafeMutableRawPointer) {
        var f = from, t = to
        let key = ReorderKey(from: withUnsafeBytes(of: &f) { Data(bytes: $0.baseAddress!, count: $0.count) },
                             to: withUnsafeBytes(of: &t) { Data(bytes: $0.baseAddress!, count: $0.count) })
        lock.lock()
        let p: Primitive
        if let cached = reorders[key] { p = cached } else {
            var pd: dnnl_primitive_desc_t?
            dnnlCheck(dnnl_reorder_primitive_desc_create(&pd, &f, engine, &t, engine, attr), "reorder pd")
            p = Primitive(pd: pd!)
            reorders[key] = p
        }
        lock.unlock()
        let ms = memory(&f, src), md = memory(&t, dst)
        defer {
            dnnl_memory_destroy(ms)
            dnnl_memory_destroy(md)
        }
        var args = [dnnl_exec_arg_t(arg: DNNL_ARG_FROM, memory: ms), dnnl_exec_arg_t(arg: DNNL_ARG_TO, memory: md)]
        let scratch = p.scratchpad()
        defer { if let m = scratch?.memory { dnnl_memory_destroy(m) } }
        if let m = scratch?.memory { args.append(dnnl_exec_arg_t(arg: DNNL_ARG_SCRATCHPAD, memory: m)) }
        dnnlCheck(dnnl_primitive_execute(p.prim, stream, Int32(args.count), &args), "reorder")
        withExtendedLifetime(scratch?.buffer) {}
        dnnlCheck(dnnl_stream_wait(stream), "stream_wait")
    }

    /// Row-major sgemm (C = alpha * op(A) op(B) + beta * C) through oneDNN's JIT GEMM. Inside a parallel region it
    /// runs on the calling thread only.
    @inline(__always)
    static func sgemm(_ transA: Bool, _ transB: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Float,
                      _ a: UnsafePointer<Float>, _ lda: Int, _ b: UnsafePointer<Float>, _ ldb: Int,
                      _ beta: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int) {
        let st = dnnl_sgemm(transA ? 84 : 78, transB ? 84 : 78, Int64(m), Int64(n), Int64(k), alpha, a, Int64(lda), b, Int64(ldb), beta, c, Int64(ldc))
        precondition(st == dnnl_success, "oneDNN sgemm \(m)x\(n)x\(k) failed: \(st.rawValue)")
    }
}

/// A created primitive with its descriptor; executed through `run`, which reorders plain user buffers in and out.
final class Primitive: @unchecked Sendable {
    let pd: dnnl_primitive_desc_t
    let prim: dnnl_primitive_t
    init(pd: dnnl_primitive_desc_t) {
        self.pd = pd
        var p: dnnl_primitive_t?
        dnnlCheck(dnnl_primitive_create(&p, pd), "primitive_create")
        prim = p!
        if let m = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0) {
            var md = m.pointee
            scratchpadBytes = dnnl_memory_desc_get_size(&md)
        } else { scratchpadBytes = 0 }
    }
    var implementation: String {
        var s: UnsafePointer<CChar>?
        _ = withUnsafeMutablePointer(to: &s) { dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, $0) }
        return s.map { String(cString: $0) } ?? "?"
    }
    func md(_ what: dnnl_query_t, _ index: Int32 = 0) -> dnnl_memory_desc_t { dnnl_primitive_desc_query_md(pd, what, index).pointee }
    /// Bytes of scratch one execution needs (user-managed scratchpad, see `DNNL.attr`).
    let scratchpadBytes: Int
    /// A fresh scratchpad for one execution (nil when none is needed): the memory object and the buffer it wraps.
    func scratchpad() -> (memory: dnnl_memory_t, buffer: Storage)? {
        guard scratchpadBytes > 0, let p = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0) else { return nil }
        let buf = Storage(byteCount: scratchpadBytes)
        return (DNNL.memory(p, buf.base), buf)
    }

    /// One argument: its DNNL_ARG, the query for the layout the primitive wants, the user's plain layout and buffer,
    /// and whether the primitive writes it. `cached` (weights) is a reordered copy to use as is.
    struct Arg {
        var arg: Int32
        var query: dnnl_query_t
        var plain: dnnl_memory_desc_t
        var ptr: UnsafeMutableRawPointer
        var isOutput = false
        var cached: UnsafeMutableRawPointer? = nil
        var index: Int32 = 0

        /// The addend of the binary-add post-op of `DNNL.withAttr(adding:)` (the first post-op's second source).
        static func postOpAddend(_ plain: dnnl_memory_desc_t, _ ptr: UnsafeMutableRawPointer) -> Arg {
            let arg = Int32(DNNL_ARG_ATTR_MULTIPLE_POST_OP_BASE) | Int32(DNNL_ARG_SRC_1)
            return Arg(arg: arg, query: dnnl_query_exec_arg_md, plain: plain, ptr: ptr, index: arg)
        }
    }

    func run(_ args: [Arg]) {
        var mems: [dnnl_memory_t] = [], exec: [dnnl_exec_arg_t] = []
        var post: [(dnnl_memory_desc_t, UnsafeMutableRawPointer, dnnl_memory_desc_t, UnsafeMutableRawPointer)] = []
        var scratch: [Storage] = []
        for a in args {
            var want = md(a.query, a.index), plain = a.plain
            var ptr = a.ptr
            if let c = a.cached { ptr = c }
            else if dnnl_memory_desc_equal(&want, &plain) == 0 {
                let buf = Storage(byteCount: dnnl_memory_desc_get_size(&want))
                scratch.append(buf)
                if a.isOutput { post.append((want, buf.base, plain, a.ptr)) }
                else { DNNL.reorder(from: plain, a.ptr, to: want, buf.base) }
                ptr = buf.base
            }
            let m = DNNL.memory(&want, ptr)
            mems.append(m)
            exec.append(dnnl_exec_arg_t(arg: a.arg, memory: m))
        }
        let pad = scratchpad()
        if let m = pad?.memory {
            mems.append(m)
            exec.append(dnnl_exec_arg_t(arg: DNNL_ARG_SCRATCHPAD, memory: m))
        }
        dnnlCheck(dnnl_primitive_execute(prim, DNNL.stream, Int32(exec.count), &exec), "execute \(implementation)")
        dnnlCheck(dnnl_stream_wait(DNNL.stream), "stream_wait")
        for (from, src, to, dst) in post { DNNL.reorder(from: from, src, to: to, dst) }
        mems.forEach { dnnl_memory_destroy($0) }
        _ = scratch
        withExtendedLifetime(pad?.buffer) {}
    }
}
