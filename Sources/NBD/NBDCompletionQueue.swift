import NIOCore
import Synchronization

/// Replies finished on the thread pool, on their way back to their connection's event loop.
///
/// Handing each reply over with its own event loop task costs a wake-up (an eventfd write)
/// and a flush per reply. Here a pool thread only appends; the first append after a drain
/// tells its caller to schedule one drain task, which takes everything queued by then, so a
/// burst of completions costs one wake-up and one flush.
final class NBDCompletionQueue: Sendable {
    /// One finished request: its whole reply, the READ/WRITE bytes it held in flight, and the
    /// payload budget it reserved (a WRITE's length), to be returned.
    struct Completion: Sendable {
        var reply: ByteBuffer
        var bytes: Int
        var reserved: Int
    }

    private struct State {
        var completions: [Completion] = []
        var drainScheduled = false
    }

    private let state = Mutex(State())

    /// Adds a completion.
    /// - Returns: true when the caller must schedule a drain (none is pending).
    func push(_ completion: Completion) -> Bool {
        state.withLock { s in
            s.completions.append(completion)
            if s.drainScheduled { return false }
            s.drainScheduled = true
            return true
        }
    }

    /// Takes every queued completion; the next `push` schedules a new drain.
    func takeAll() -> [Completion] {
        state.withLock { s in
            s.drainScheduled = false
            let taken = s.completions
            s.completions = []
            return taken
        }
    }
}
