/// An error from the filter: what went wrong and what the operator can do about it.
public struct FilterError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable, Codable {
        case badRequest = "bad-request"
        case unknownRequest = "unknown-request"
        case unsupportedVersion = "unsupported-version"
        case unknownDisk = "unknown-disk"
        case diskExists = "disk-exists"
        case checkpointOpen = "checkpoint-open"
        case noCheckpoint = "no-checkpoint"
        case fullReadRequired = "full-read-required"
        case invalidArgument = "invalid-argument"
        case damaged = "damaged"
        case io = "io"
        case busy = "busy"
        case unreachable = "unreachable"
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}
