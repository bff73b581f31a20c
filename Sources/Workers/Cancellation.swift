import Synchronization

/// Asks a running job to stop: set by SIGINT/SIGTERM (see the CLI) or by a caller, and
/// checked by the job's workers between items, so a job stops at a clean point (a chunk
/// stored or not, never half) and its caller can undo what it must (abort a checkpoint,
/// remove temp files, release a lock).
public final class Cancellation: Sendable {
    private let state = Mutex<String?>(nil)

    public init() {}

    /// Cancels the job; the first reason wins ("SIGINT", "SIGTERM", "the backup window ended").
    public func cancel(reason: String) {
        state.withLock { if $0 == nil { $0 = reason } }
    }

    /// Why the job was cancelled, or nil while it may go on.
    public var reason: String? { state.withLock { $0 } }
    public var isCancelled: Bool { reason != nil }

    /// Throws `Cancelled` once the job has been cancelled.
    public func check() throws(Cancelled) {
        if let reason { throw Cancelled(reason: reason) }
    }
}

/// A job stopped because it was cancelled, not because something failed.
public struct Cancelled: Error, CustomStringConvertible, Sendable {
    public var reason: String
    public init(reason: String) { self.reason = reason }
    public var description: String { "cancelled (\(reason))" }
}
