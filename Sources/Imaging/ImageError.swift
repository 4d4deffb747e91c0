// The errors of the image layer: files that cannot be read, decoded or written, and invalid image arguments.

public enum ImageError: Error, CustomStringConvertible, Equatable {
    case fileNotFound(String)
    case unreadable(String, String)
    case emptyFile(String)
    case notAnImage(String)
    case unsupportedFormat(String, String)
    case decodeFailed(String, String)
    case encodeFailed(String)
    case invalidDimensions(String, Int, Int)
    case pixelCountMismatch(expected: Int, got: Int)
    case fileExists(String)
    case writeFailed(String, String)
    case invalidArgument(String)

    public var description: String {
        switch self {
        case .fileNotFound(let p): return "image file not found: \(p)"
        case .unreadable(let p, let why): return "cannot read image file \(p): \(why)"
        case .emptyFile(let p): return "image file is empty: \(p)"
        case .notAnImage(let p): return "not a PNG or JPEG image (unrecognised file signature): \(p)"
        case .unsupportedFormat(let p, let f): return "unsupported image format \(f) (only PNG and JPEG are read): \(p)"
        case .decodeFailed(let p, let why): return "cannot decode image \(p): \(why)"
        case .encodeFailed(let why): return "cannot encode PNG: \(why)"
        case .invalidDimensions(let p, let w, let h):
            return "invalid image size \(w)x\(h) in \(p) (each side must be 1...\(maxImageDimension))"
        case .pixelCountMismatch(let e, let g): return "pixel buffer has \(g) bytes, expected \(e)"
        case .fileExists(let p): return "refusing to overwrite existing file \(p) (pass overwrite: true to replace it)"
        case .writeFailed(let p, let why): return "cannot write \(p): \(why)"
        case .invalidArgument(let why): return why
        }
    }
}
