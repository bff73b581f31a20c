import Foundation
import Synchronization

/// The one way Tessera runs blocking work in parallel (reading, hashing, compressing,
/// decompressing, writing): `workers` threads pull item indexes from a shared counter.
///
/// The first error wins: it is rethrown once every worker has finished its current item,
/// and no worker starts a new item after it. A cancellation is checked before every item and
/// ends the run with `Cancelled`. Threads, not tasks: every item blocks on I/O, and a blocked
/// thread of Swift's cooperative pool would starve the rest of the process.
public enum WorkerGroup {
    /// Calls `body(item)` for every item in `0..<count` on up to `workers` threads.
    /// - Throws: the first error a body threw, or `Cancelled`.
    public static func forEach(_ count: Int, workers: Int, cancellation: Cancellation? = nil,
                               _ body: @escaping @Sendable (Int) throws -> Void) throws {
        let next = Atomic<Int>(0)
        try run(workers: min(max(1, workers), max(1, count)), cancellation: cancellation) { _, stop in
            while !stop.isSet {
                let item = next.add(1, ordering: .relaxed).oldValue
                guard item < count else { return }
                try body(item)
            }
        }
    }

    /// Runs `body(worker, stop)` on `workers` threads and waits for all of them. A body that
    /// loops checks `stop.isSet` between items (set by the first error and by a cancellation).
    /// - Throws: the first error a body threw, or `Cancelled`.
    public static func run(workers: Int, cancellation: Cancellation? = nil,
                           _ body: @escaping @Sendable (_ worker: Int, _ stop: StopSignal) throws -> Void) throws {
        let stop = StopSignal(cancellation: cancellation)
        let firstError = Mutex<(any Error)?>(nil)
        let group = DispatchGroup()
        for worker in 0..<max(1, workers) {
            group.enter()
            let thread = Thread {
                defer { group.leave() }
                do {
                    try body(worker, stop)
                } catch {
                    firstError.withLock { if $0 == nil { $0 = error } }
                    stop.set()
                }
            }
            thread.name = "tessera-worker-\(worker)"
            thread.start()
        }
        group.wait()
        if let error = firstError.withLock({ $0 }) { throw error }
        try cancellation?.check()
    }
}

/// Tells the workers of one run to stop starting new items.
public final class StopSignal: Sendable {
    private let flag = Atomic<Bool>(false)
    private let cancellation: Cancellation?

    init(cancellation: Cancellation?) { self.cancellation = cancellation }

    /// True after an error in any worker or a cancellation of the job.
    public var isSet: Bool { flag.load(ordering: .relaxed) || cancellation?.isCancelled == true }

    func set() { flag.store(true, ordering: .relaxed) }
}
