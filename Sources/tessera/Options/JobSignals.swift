import Dispatch
import Foundation
import Workers

/// Ctrl-C (SIGINT) and SIGTERM during a job (backup, restore, check, prune): the job is
/// cancelled, stops at its next clean point and undoes what it must (a checkpoint aborted,
/// temp packs and the lock removed, a staged restore thrown away); the command then says
/// what happened and exits 130 (143 for SIGTERM). A second signal ends the process at once.
final class JobSignals: @unchecked Sendable {
    let cancellation = Cancellation()
    private var sources: [any DispatchSourceSignal] = []

    init() {
        let queue = DispatchQueue(label: "tessera.job-signals")
        for (number, name) in [(SIGINT, "SIGINT"), (SIGTERM, "SIGTERM")] {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: queue)
            source.setEventHandler { [cancellation] in
                if cancellation.isCancelled {
                    // Asked twice: the person at the keyboard wants out now.
                    signal(number, SIG_DFL)
                    kill(getpid(), number)
                }
                cancellation.cancel(reason: name)
            }
            source.resume()
            sources.append(source)
        }
    }
}
