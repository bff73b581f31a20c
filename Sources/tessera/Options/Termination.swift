import Dispatch
import Foundation

/// Suspends until SIGTERM or SIGINT (the servers' way to stop cleanly).
func waitForTermination() async {
    signal(SIGTERM, SIG_IGN)
    signal(SIGINT, SIG_IGN)
    let queue = DispatchQueue(label: "tessera.signals")
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
        let once = SignalOnce(continuation)
        for sig in [SIGTERM, SIGINT] {
            let source = DispatchSource.makeSignalSource(signal: sig, queue: queue)
            source.setEventHandler { once.fire() }
            source.resume()
            once.keep(source)
        }
    }
}

/// Resumes a continuation once, whichever signal comes first; keeps the sources alive.
private final class SignalOnce: @unchecked Sendable {
    private var continuation: CheckedContinuation<Void, Never>?
    private var sources: [any DispatchSourceSignal] = []
    private let lock = NSLock()

    init(_ continuation: CheckedContinuation<Void, Never>) { self.continuation = continuation }

    func keep(_ source: any DispatchSourceSignal) {
        lock.withLock { sources.append(source) }
    }

    func fire() {
        let c = lock.withLock { () -> CheckedContinuation<Void, Never>? in
            defer { continuation = nil }
            return continuation
        }
        c?.resume()
    }
}
