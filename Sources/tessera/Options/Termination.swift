import Dispatch
import Foundation

/// SIGTERM and SIGINT, the servers' way to stop cleanly.
///
/// The signals are caught from the moment this value is created, and one that arrives before
/// `wait()` is kept. Create it before the server says it is ready: a supervisor (or a test)
/// that sends SIGTERM right after the ready line must not find the signal ignored and lost.
final class TerminationSignals: @unchecked Sendable {
    private var sources: [any DispatchSourceSignal] = []
    private var fired = false
    private var continuation: CheckedContinuation<Void, Never>?
    private let lock = NSLock()

    init() {
        unblock([SIGTERM, SIGINT])
        // The default action would end the process at once; the sources below still see them.
        signal(SIGTERM, SIG_IGN)
        signal(SIGINT, SIG_IGN)
        let queue = DispatchQueue(label: "tessera.signals")
        for sig in [SIGTERM, SIGINT] {
            let source = DispatchSource.makeSignalSource(signal: sig, queue: queue)
            source.setEventHandler { [weak self] in self?.fire() }
            source.resume()
            sources.append(source)
        }
    }

    /// Suspends until SIGTERM or SIGINT arrived (returns at once if one already did).
    func wait() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let resumeNow = lock.withLock { () -> Bool in
                if fired { return true }
                continuation = c
                return false
            }
            if resumeNow { c.resume() }
        }
    }

    private func fire() {
        let c = lock.withLock { () -> CheckedContinuation<Void, Never>? in
            fired = true
            defer { continuation = nil }
            return continuation
        }
        c?.resume()
    }
}
