// Why an atomic write did not happen (AtomicFile.swift); the destination is untouched in every case.
public enum AtomicFileError: Error, CustomStringConvertible, Equatable {
    /// The destination exists and overwriting was not asked for.
    case exists(String)
    /// The destination's folder does not exist.
    case noFolder(String, folder: String)
    /// A folder has the destination's name.
    case isFolder(String)
    /// A system call failed (the reason is strerror's text).
    case failed(String, String)

    public var description: String {
        switch self {
        case .exists(let path):
            return "\(path) already exists"
        case let .noFolder(path, folder):
            return "cannot write \(path): directory \(folder) does not exist"
        case .isFolder(let path):
            return "cannot write \(path): a directory exists at that path"
        case let .failed(path, why):
            return "cannot write \(path): \(why)"
        }
    }
}
