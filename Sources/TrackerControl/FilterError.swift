/// An error from the filter: what went wrong and what the operator can do about it.
///
/// On the control wire it travels as a status number and `{"error": message, "code": code}`
/// (docs/CONTROL.md); `cause` stays on this side of the wire (logs), so wrapping an error
/// never loses why it happened.
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
        /// Client side only: the control endpoint could not be reached.
        case unreachable = "unreachable"
        /// A file the request names (the disk of an ATTACH, an extent it lists) does not exist.
        case notFound = "not-found"
        /// The filter's user may not open a file the request names.
        case permission = "permission"
    }

    public var code: Code
    public var message: String
    /// The error this one wraps, if any (a `BlockIOError`, a `TrackerError`...).
    public var cause: (any Error)?

    public init(_ code: Code, _ message: String, cause: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    public var description: String { message }
}
