/// An error from a backup or a restore: what failed and what to do.
public struct AgentError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        case invalidArgument = "invalid-argument"
        case source = "source"
        /// The NBD server does not offer the dirty bitmap the backup was told to use.
        case noBitmap = "no-bitmap"
        case repository = "repository"
        case noRepository = "no-repository"
        case locked = "locked"
        case filter = "filter"
        case damaged = "damaged"
        case target = "target"
        /// The restore target exists and holds data; it is replaced or updated only when asked.
        case targetExists = "target-exists"
    }

    public var code: Code
    public var message: String
    /// The error this one explains, kept for logs and for callers that match on it.
    public var cause: (any Error & Sendable)?

    public init(_ code: Code, _ message: String, cause: (any Error & Sendable)? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    public var description: String { message }
}
