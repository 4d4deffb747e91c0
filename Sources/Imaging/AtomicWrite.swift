// Atomic PNG output (FileIO.AtomicFile: temp file in the destination directory, then rename / link), used for PNGs the
// `ldm` CLI writes (CompVis scripts/txt2img.py saves samples with PIL Image.save).
import FileIO
import Foundation

extension ImageError {
    /// The image layer's wording of an atomic write that did not happen.
    init(_ e: AtomicFileError) {
        switch e {
        case .exists(let path):
            self = .fileExists(path)
        case let .noFolder(path, folder):
            self = .writeFailed(path, "directory \(folder) does not exist")
        case .isFolder(let path):
            self = .writeFailed(path, "a directory exists at that path")
        case let .failed(path, why):
            self = .writeFailed(path, why)
        }
    }
}

/// Writes PNG bytes atomically (FileIO.AtomicFile), its errors as ImageError.
func writeAtomically(_ bytes: [UInt8], to path: String, overwrite: Bool) throws {
    do {
        try AtomicFile.write(bytes, to: path, overwrite: overwrite)
    } catch let e as AtomicFileError {
        throw ImageError(e)
    }
}

extension RGBImage {
    /// Writes this image as an 8-bit RGB PNG with optional text chunks, atomically.
    public func writePNG(to path: String, text: [PNGTextChunk] = [], overwrite: Bool = false) throws {
        try writeAtomically(try PNGCodec.encode(self, text: text), to: path, overwrite: overwrite)
    }

    /// Writes this image with the AUTOMATIC1111 "parameters" chunk.
    public func writePNG(to path: String, parameters: GenerationParameters, overwrite: Bool = false) throws {
        try writePNG(to: path, text: [parameters.pngTextChunk], overwrite: overwrite)
    }
}

extension GrayImage {
    public func writePNG(to path: String, text: [PNGTextChunk] = [], overwrite: Bool = false) throws {
        try writeAtomically(try PNGCodec.encode(self, text: text), to: path, overwrite: overwrite)
    }
}
