// Atomic file output (temp file in the destination directory, then rename / link), used for PNGs the
// `ldm` CLI writes (CompVis scripts/txt2img.py saves samples with PIL Image.save).
import Foundation
#if canImport(Glibc)
import Glibc
private let sysWrite = Glibc.write
#elseif canImport(Darwin)
import Darwin
private let sysWrite = Darwin.write
#endif

public enum AtomicFile {
    /// Writes `bytes` to `path` through a temporary file in the same directory. Without `overwrite`,
    /// an existing file is never replaced (the final step is link(2), which fails if `path` exists).
    public static func write(_ bytes: [UInt8], to path: String, overwrite: Bool) throws {
        let url = URL(fileURLWithPath: path)
        let dir = url.deletingLastPathComponent().path
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
            throw ImageError.writeFailed(path, "directory \(dir) does not exist")
        }
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDir) {
            if isDir.boolValue { throw ImageError.writeFailed(path, "a directory exists at that path") }
            if !overwrite { throw ImageError.fileExists(path) }
        }
        var template = Array((dir + "/." + url.lastPathComponent + ".tmp-XXXXXX").utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else { throw ImageError.writeFailed(path, "cannot create a temporary file: \(errnoText())") }
        let tmp = String(cString: template)
        var done = false
        defer { if !done { unlink(tmp) } }
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { sysWrite(fd, $0.baseAddress! + off, $0.count - off) }
            if n < 0 {
                if errno == EINTR { continue }
                let e = errnoText(); close(fd)
                throw ImageError.writeFailed(path, e)
            }
            off += n
        }
        let synced = fsync(fd) == 0
        let syncErr = errnoText()
        guard close(fd) == 0, synced else { throw ImageError.writeFailed(path, syncErr) }
        chmod(tmp, 0o644 & ~currentUmask())
        if overwrite {
            guard rename(tmp, path) == 0 else { throw ImageError.writeFailed(path, errnoText()) }
        } else {
            if link(tmp, path) != 0 {
                if errno == EEXIST { throw ImageError.fileExists(path) }
                // File systems without hard links: fall back to check-then-rename.
                if FileManager.default.fileExists(atPath: path) { throw ImageError.fileExists(path) }
                guard rename(tmp, path) == 0 else { throw ImageError.writeFailed(path, errnoText()) }
                done = true
                return
            }
            unlink(tmp)
        }
        done = true
    }

    private static func errnoText() -> String { String(cString: strerror(errno)) }

    private static func currentUmask() -> mode_t {
        let m = umask(0); umask(m); return m
    }
}

extension RGBImage {
    /// Writes this image as an 8-bit RGB PNG with optional text chunks, atomically.
    public func writePNG(to path: String, text: [PNGTextChunk] = [], overwrite: Bool = false) throws {
        try AtomicFile.write(try PNGCodec.encode(self, text: text), to: path, overwrite: overwrite)
    }

    /// Writes this image with the AUTOMATIC1111 "parameters" chunk.
    public func writePNG(to path: String, parameters: GenerationParameters, overwrite: Bool = false) throws {
        try writePNG(to: path, text: [parameters.pngTextChunk], overwrite: overwrite)
    }
}

extension GrayImage {
    public func writePNG(to path: String, text: [PNGTextChunk] = [], overwrite: Bool = false) throws {
        try AtomicFile.write(try PNGCodec.encode(self, text: text), to: path, overwrite: overwrite)
    }
}
