/// The one error type of the change tracking core. `code` is for matching; `message` says
/// what went wrong and what to do about it.
public struct TrackerError: Error, CustomStringConvertible, Sendable {
    public enum Code: Sendable, Equatable {
        /// The tracker cannot answer exactly: the caller must read the whole disk.
        case fullReadRequired
        /// A bad argument (granularity, range, change ID, size).
        case invalidArgument
        /// `checkpoint()` while a checkpoint is open: release it first.
        case checkpointOpen
        /// `release` or the `.checkpoint` view without an open checkpoint.
        case noCheckpoint
        /// The tracker was closed.
        case closed
        /// Reading or writing the state directory failed.
        case io
    }

    public var code: Code
    public var message: String
    /// The underlying error (a `BlockIOError`), if any.
    public var cause: (any Error)?

    public init(_ code: Code, _ message: String, cause: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    public var description: String { message }
}
