// Read-only byte source for checkpoint files: a private read-only mmap (Glibc) like
// safetensors' `safe_open` (memmap2) and torch's `mmap=True` load, or an owned copy of Data.
// Tensors keep a reference to the buffer, so a multi-GB file is mapped once and never copied.
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public final class ByteBuffer {
    public let count: Int
    public let url: URL?
    let base: UnsafeRawPointer
    private let isMapped: Bool

    /// Maps `url` read-only. An empty file gives an empty buffer.
    public init(mapping url: URL) throws {
        let fd = open(url.path, O_RDONLY)
        guard fd >= 0 else { throw CheckpointError("cannot open \(url.path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw CheckpointError("cannot stat \(url.path)") }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw CheckpointError("\(url.path) is not a regular file") }
        let size = Int(st.st_size)
        self.url = url
        self.count = size
        if size == 0 {
            base = UnsafeRawPointer(UnsafeMutableRawPointer.allocate(byteCount: 1, alignment: 16))
            isMapped = false
            return
        }
        guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), p != MAP_FAILED else {
            throw CheckpointError("cannot mmap \(url.path): \(String(cString: strerror(errno)))")
        }
        base = UnsafeRawPointer(p)
        isMapped = true
    }

    /// Owns a copy of `data` (used for in-memory inputs, inflated zip entries and fuzzing).
    public init(copying data: Data) {
        let n = data.count
        count = n
        url = nil
        let p = UnsafeMutableRawPointer.allocate(byteCount: max(n, 1), alignment: 16)
        data.withUnsafeBytes { if let b = $0.baseAddress, n > 0 { p.copyMemory(from: b, byteCount: n) } }
        base = UnsafeRawPointer(p)
        isMapped = false
    }

    /// Takes ownership of `pointer` (allocated with UnsafeMutableRawPointer.allocate).
    init(owning pointer: UnsafeMutableRawPointer, count: Int) {
        self.count = count
        url = nil
        base = UnsafeRawPointer(pointer)
        isMapped = false
    }

    deinit {
        if isMapped { munmap(UnsafeMutableRawPointer(mutating: base), count) }
        else { UnsafeMutableRawPointer(mutating: base).deallocate() }
    }

    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: count) }

    /// Whether the bytes are a read-only private mapping of a file (pages that can be dropped and read again).
    public var isFileMapping: Bool { isMapped }

    /// Drops the resident pages of `length` bytes at `offset` from this process (madvise MADV_DONTNEED) when the
    /// buffer is a file mapping; the next read of them comes from the page cache or the file. Nothing changes for an
    /// owned copy.
    func dropPages(_ offset: Int, _ length: Int) {
        guard isMapped, length > 0, offset >= 0, offset + length <= count else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let a = Int(bitPattern: base) + offset
        let start = a / page * page, end = (a + length + page - 1) / page * page
        madvise(UnsafeMutableRawPointer(bitPattern: start), end - start, MADV_DONTNEED)
    }

    /// Bounds-checked sub-range.
    func slice(_ offset: Int, _ length: Int, what: @autoclosure () -> String) throws -> UnsafeRawBufferPointer {
        guard offset >= 0, length >= 0, offset <= count, length <= count - offset else {
            throw CheckpointError("\(what()): range \(offset)+\(length) outside the \(count)-byte file")
        }
        return UnsafeRawBufferPointer(start: base + offset, count: length)
    }

    func u8(_ o: Int) -> UInt8 { base.load(fromByteOffset: o, as: UInt8.self) }
    func u16(_ o: Int) -> UInt16 { UInt16(littleEndian: base.loadUnaligned(fromByteOffset: o, as: UInt16.self)) }
    func u32(_ o: Int) -> UInt32 { UInt32(littleEndian: base.loadUnaligned(fromByteOffset: o, as: UInt32.self)) }
    func u64(_ o: Int) -> UInt64 { UInt64(littleEndian: base.loadUnaligned(fromByteOffset: o, as: UInt64.self)) }

    /// Zero-copy Data view that keeps this buffer alive.
    func data(_ offset: Int, _ length: Int) -> Data {
        if length == 0 { return Data() }
        return Data(bytesNoCopy: UnsafeMutableRawPointer(mutating: base + offset), count: length,
                    deallocator: .custom { [self] _, _ in withExtendedLifetime(self) {} })
    }
}

/// Checked arithmetic helpers for sizes read from files.
enum Checked {
    static func product(_ xs: [Int], what: @autoclosure () -> String) throws -> Int {
        var p = 1
        for x in xs {
            guard x >= 0 else { throw CheckpointError("\(what()): negative dimension \(x)") }
            let (r, o) = p.multipliedReportingOverflow(by: x)
            guard !o else { throw CheckpointError("\(what()): shape \(xs) overflows") }
            p = r
        }
        return p
    }
    static func mul(_ a: Int, _ b: Int, what: @autoclosure () -> String) throws -> Int {
        let (r, o) = a.multipliedReportingOverflow(by: b)
        guard !o else { throw CheckpointError("\(what()): size overflows") }
        return r
    }
    static func add(_ a: Int, _ b: Int, what: @autoclosure () -> String) throws -> Int {
        let (r, o) = a.addingReportingOverflow(b)
        guard !o else { throw CheckpointError("\(what()): size overflows") }
        return r
    }
}
