import Foundation
import Synchronization

/// Calls `tick` every `interval` seconds on its own thread until `stop()`: progress reports,
/// refreshing a lock during a long job. `stop()` returns at once; no new tick starts after it
/// (one already running finishes).
public final class Ticker: Sendable {
    private let condition = Condition()

    public init(every interval: Double, name: String, _ tick: @escaping @Sendable () -> Void) {
        let condition = self.condition
        let thread = Thread {
            while condition.wait(seconds: interval) { tick() }
        }
        thread.name = name
        thread.start()
    }

    deinit { stop() }

    public func stop() { condition.signalStop() }

    /// A stop flag a thread can sleep on: `wait` returns false as soon as it is set.
    private final class Condition: @unchecked Sendable {
        private let lock = NSCondition()
        private var stopped = false

        func wait(seconds: Double) -> Bool {
            lock.lock()
            defer { lock.unlock() }
            let deadline = Date().addingTimeInterval(seconds)
            while !stopped && lock.wait(until: deadline) {}
            return !stopped
        }

        func signalStop() {
            lock.lock()
            stopped = true
            lock.broadcast()
            lock.unlock()
        }
    }
}
