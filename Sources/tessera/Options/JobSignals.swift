import Foundation
import Synchronization
import Workers

/// The signal that arrived, for the watcher below: a signal handler may only do
/// async-signal-safe things, and a lock-free store is one (a lock, or a dispatch call, is not).
private let arrivedSignal = Atomic<Int32>(0)

/// Ctrl-C (SIGINT) and SIGTERM during a job (backup, restore, check, prune): the job is
/// cancelled, stops at its next clean point and undoes what it must (a checkpoint aborted,
/// temp packs and the lock removed, a staged restore thrown away); the command then says
/// what happened and exits 130 (143 for SIGTERM). A second signal ends the process at once.
final class JobSignals: Sendable {
    let cancellation = Cancellation()
    private let watcher: Ticker

    init() {
        // A parent may have started us with these signals blocked (test runners and some
        // supervisors do): blocked, Ctrl-C would do nothing at all.
        unblock([SIGINT, SIGTERM])
        for number in [SIGINT, SIGTERM] {
            signal(number) { number in
                if arrivedSignal.exchange(number, ordering: .relaxed) != 0 {
                    // Asked twice: the person at the keyboard wants out now.
                    signal(number, SIG_DFL)
                    raise(number)
                }
            }
        }
        let cancellation = self.cancellation
        watcher = Ticker(every: 0.05, name: "tessera-signals") {
            switch arrivedSignal.load(ordering: .relaxed) {
            case SIGINT: cancellation.cancel(reason: "SIGINT")
            case SIGTERM: cancellation.cancel(reason: "SIGTERM")
            default: break
            }
        }
    }

    deinit { watcher.stop() }
}

/// Unblocks `signals` on the calling thread (call it on the main thread before starting
/// others: threads inherit the mask of their creator).
func unblock(_ signals: [Int32]) {
    var set = sigset_t()
    sigemptyset(&set)
    for s in signals { sigaddset(&set, s) }
    pthread_sigmask(SIG_UNBLOCK, &set, nil)
}
