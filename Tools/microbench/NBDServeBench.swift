import Foundation
import Logging
import NBD
import Synchronization

/// The NBD server of `tessera filter serve` (same `NBDServer`, same thread count) serving
/// plain flat files through `FileExport`: no change tracking, no overlay. It is the
/// "tracking off" side of Tools/bench-filter; the filter has no such switch on purpose.
///   tessera-microbench nbd-serve --disk NAME=PATH [--disk NAME=PATH ...] --socket PATH
/// Runs until SIGTERM or SIGINT.
enum NBDServeBench {
    static func run(_ arguments: [String]) async {
        var disks: [(String, String)] = []
        var socket: String?
        var i = 0
        while i < arguments.count {
            let value = i + 1 < arguments.count ? arguments[i + 1] : nil
            switch arguments[i] {
            case "--disk":
                let parts = value?.split(separator: "=", maxSplits: 1).map(String.init) ?? []
                guard parts.count == 2 else { fail("--disk takes NAME=PATH") }
                disks.append((parts[0], parts[1]))
            case "--socket":
                socket = value
            default:
                fail("unknown argument \(arguments[i]); usage: tessera-microbench nbd-serve --disk NAME=PATH --socket PATH")
            }
            i += 2
        }
        guard let socket, !disks.isEmpty else { fail("usage: tessera-microbench nbd-serve --disk NAME=PATH --socket PATH") }
        var logger = Logger(label: "tessera.microbench.nbd")
        logger.logLevel = .warning
        let server: NBDServer
        do {
            // The filter's live export advertises multi-conn too (a FLUSH syncs the file).
            let exports = try disks.map { try FileExport(path: $0.1, name: $0.0, canMultiConn: true) }
            server = NBDServer(provider: NBDExportSet(exports), logger: logger)
            try await server.start(unixSocket: socket)
        } catch {
            fail("\(error)")
        }
        for (name, _) in disks { print("serving \(name) on nbd+unix:///\(name)?socket=\(socket) (no tracking)") }
        fflush(nil)
        await waitForTermination()
        try? await server.shutdown()
    }

    private static func fail(_ message: String) -> Never {
        FileHandle.standardError.write(Data("error: \(message)\n".utf8))
        exit(2)
    }

    /// Suspends until SIGTERM or SIGINT.
    private static func waitForTermination() async {
        signal(SIGTERM, SIG_IGN)
        signal(SIGINT, SIG_IGN)
        let queue = DispatchQueue(label: "tessera.microbench.signals")
        var sources: [any DispatchSourceSignal] = []
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let resumed = Mutex(false)
            for sig in [SIGTERM, SIGINT] {
                let source = DispatchSource.makeSignalSource(signal: sig, queue: queue)
                source.setEventHandler {
                    if resumed.withLock({ r in defer { r = true }; return !r }) { continuation.resume() }
                }
                source.resume()
                sources.append(source)
            }
        }
        for source in sources { source.cancel() }
    }
}
