// The error of the checkpoint layer (torch zip, pickle, safetensors, diffusers folders).
import Foundation

/// Errors of the checkpoint layer. Every message names the file part that is wrong.
public struct CheckpointError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
