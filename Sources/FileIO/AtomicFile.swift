// Atomic file output, the one writer of every file the project saves (PNG images, safetensors checkpoints): the
// bytes go to a temporary file in the destination folder, are fsynced, and only then take the destination's name
// (rename(2) to replace, link(2) when an existing file must be kept), then the folder is fsynced. A reader sees
// the old file or the whole new one, never a part (as POSIX rename guarantees; torch.save / PIL Image.save write in
// place, which this replaces).
import Foundation
#if canImport(Glibc)
import Glibc
private let sysWrite = Glibc.write
#elseif canImport(Darwin)
import Darwin
private let sysWrite = Darwin.write
#endif

public enum AtomicFile {
    /// Appends bytes to the temporary file.
    public typealias Put = (UnsafeRawBufferPointer) throws -> Void

    /// Writes what `body` puts to `path`. Without `overwrite`, an existing file is never replaced.
    public static func write(to path: String, overwrite: Bool, _ body: (Put) throws -> Void) throws {
        let url = URL(fileURLWithPath: path)
        let dir = url.deletingLastPathComponent().path
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
            throw AtomicFileError.noFolder(path, folder: dir)
        }
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDir) {
            if isDir.boolValue {
                throw AtomicFileError.isFolder(path)
            }
            if !overwrite {
                throw AtomicFileError.exists(path)
            }
        }
        var template = Array((dir + "/." + url.lastPathComponent + ".tmp-XXXXXX").utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else {
            throw AtomicFileError.failed(path, "cannot create a temporary file: \(errnoText())")
        }
        let tmp = String(cString: template)
        var isOpen = true
        var done = false
        defer {
            if isOpen {
                close(fd)
            }
            if !done {
                unlink(tmp)
            }
        }
        try body { raw in
            var offset = 0
            while offset < raw.count {
                let n = sysWrite(fd, raw.baseAddress! + offset, raw.count - offset)
                if n < 0 {
                    if errno == EINTR {
                        continue
                    }
                    throw AtomicFileError.failed(path, errnoText())
                }
                offset += n
            }
        }
        let synced = fsync(fd) == 0
        let syncError = errnoText()
        isOpen = false
        guard close(fd) == 0, synced else {
            throw AtomicFileError.failed(path, syncError)
        }
        chmod(tmp, 0o644 & ~currentUmask())
        if overwrite {
            guard rename(tmp, path) == 0 else {
                throw AtomicFileError.failed(path, errnoText())
            }
        } else if link(tmp, path) == 0 {
            unlink(tmp)
        } else {
            if errno == EEXIST {
                throw AtomicFileError.exists(path)
            }
            // File systems without hard links: check, then rename.
            if FileManager.default.fileExists(atPath: path) {
                throw AtomicFileError.exists(path)
            }
            guard rename(tmp, path) == 0 else {
                throw AtomicFileError.failed(path, errnoText())
            }
        }
        done = true
        let dfd = open(dir, O_RDONLY)
        if dfd >= 0 {
            _ = fsync(dfd)
            close(dfd)
        }
    }

    /// Writes `bytes` to `path` atomically.
    public static func write(_ bytes: [UInt8], to path: String, overwrite: Bool) throws {
        try write(to: path, overwrite: overwrite) { put in
            try bytes.withUnsafeBytes { try put($0) }
        }
    }

    /// Writes `chunks` one after the other to `path` atomically (no copy of them joined).
    public static func write(chunks: [Data], to path: String, overwrite: Bool) throws {
        try write(to: path, overwrite: overwrite) { put in
            for chunk in chunks {
                try chunk.withUnsafeBytes { try put($0) }
            }
        }
    }

    private static func errnoText() -> String {
        String(cString: strerror(errno))
    }

    private static func currentUmask() -> mode_t {
        let m = umask(0)
        umask(m)
        return m
    }
}
