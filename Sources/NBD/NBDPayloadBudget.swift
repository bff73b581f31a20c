import NIOCore
import Synchronization

/// The bookkeeping of a payload budget, without I/O or threads: reservations and a FIFO queue
/// of waiters (NIO's state-machine pattern, so it can be tested with plain calls).
package struct NBDPayloadLedger {
    package let capacity: Int
    package private(set) var used = 0
    private var waiters: [(id: UInt64, bytes: Int)] = []

    package init(capacity: Int) {
        self.capacity = capacity
    }

    package var hasWaiters: Bool { !waiters.isEmpty }
    package var waiting: [UInt64] { waiters.map(\.id) }

    /// Reserves `bytes` for `id` if they fit and nobody waits (first come, first served, so a
    /// large request cannot be starved by a stream of small ones).
    /// - Returns: true when reserved; false when `id` was queued (a later `release` or
    ///   `cancel` grants it).
    package mutating func reserve(_ bytes: Int, for id: UInt64) -> Bool {
        precondition(bytes <= capacity, "a reservation larger than the whole budget can never be granted")
        if waiters.isEmpty, used + bytes <= capacity {
            used += bytes
            return true
        }
        waiters.append((id, bytes))
        return false
    }

    /// Returns `bytes` to the budget.
    /// - Returns: the waiters granted as a result, in queue order (their bytes are reserved).
    package mutating func release(_ bytes: Int) -> [UInt64] {
        precondition(bytes <= used, "released more than was reserved")
        used -= bytes
        return grant()
    }

    /// Takes `id` out of the queue (its connection closed while waiting).
    /// - Returns: whether it was waiting, and the waiters granted because it left the head.
    package mutating func cancel(_ id: UInt64) -> (wasWaiting: Bool, granted: [UInt64]) {
        guard let i = waiters.firstIndex(where: { $0.id == id }) else { return (false, []) }
        waiters.remove(at: i)
        return (true, grant())
    }

    private mutating func grant() -> [UInt64] {
        var granted: [UInt64] = []
        while let head = waiters.first, used + head.bytes <= capacity {
            used += head.bytes
            waiters.removeFirst()
            granted.append(head.id)
        }
        return granted
    }
}

/// The memory one server spends on WRITE payloads, shared by all its connections.
///
/// A connection reserves a WRITE's whole length when its header arrives, before it takes a
/// byte of the payload, and gives it back when the write's export call has returned (or the
/// request was refused, or the connection closed). A connection that must wait stops reading
/// its socket (back-pressure: the client's bytes stay in the kernel) and is served in arrival
/// order. So the payload bytes a server holds, complete or not, never exceed `capacity`.
package final class NBDPayloadBudget: Sendable {
    private struct State {
        var ledger: NBDPayloadLedger
        var nextID: UInt64 = 1
        var onGrant: [UInt64: @Sendable () -> Void] = [:]
    }

    private let state: Mutex<State>
    package let capacity: Int

    /// - Parameter capacity: at least `NBDProtocol.maximumPayload` (one largest WRITE must fit).
    package init(capacity: Int) {
        self.capacity = max(capacity, Int(NBDProtocol.maximumPayload))
        state = Mutex(State(ledger: NBDPayloadLedger(capacity: self.capacity)))
    }

    /// A fresh identity for one connection's reservations.
    package func makeID() -> UInt64 {
        state.withLock { s in
            defer { s.nextID += 1 }
            return s.nextID
        }
    }

    package var used: Int { state.withLock { $0.ledger.used } }
    package var hasWaiters: Bool { state.withLock { $0.ledger.hasWaiters } }

    /// Reserves `bytes` now (true), or queues `id` and calls `onGrant` once they are reserved
    /// for it later (false). `onGrant` runs on whichever thread released; hop to your event loop.
    package func reserve(_ bytes: Int, for id: UInt64, onGrant: @escaping @Sendable () -> Void) -> Bool {
        state.withLock { s in
            if s.ledger.reserve(bytes, for: id) { return true }
            s.onGrant[id] = onGrant
            return false
        }
    }

    package func release(_ bytes: Int) {
        guard bytes > 0 else { return }
        let granted = state.withLock { s in s.ledger.release(bytes).compactMap { s.onGrant.removeValue(forKey: $0) } }
        for g in granted { g() }
    }

    /// Leaves the queue. Returns false when `id` was not waiting: its grant was already made and
    /// its `onGrant` is on the way, so the caller must release the bytes when it arrives.
    package func cancel(_ id: UInt64) -> Bool {
        let (wasWaiting, granted) = state.withLock { s -> (Bool, [@Sendable () -> Void]) in
            let (wasWaiting, ids) = s.ledger.cancel(id)
            s.onGrant.removeValue(forKey: id)
            return (wasWaiting, ids.compactMap { s.onGrant.removeValue(forKey: $0) })
        }
        for g in granted { g() }
        return wasWaiting
    }
}
