import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// `tessera filter serve` for one disk that a test can SIGKILL and start again on the same
/// sockets and state directory, under a running guest. Its output goes to `filter.log` in
/// `directory` (every run appended).
public final class RestartableFilter: @unchecked Sendable {
    public let directory: String
    public let disk: String
    public let path: String
    public var nbdSocket: String { "\(directory)/nbd.sock" }
    public var control: String { "\(directory)/control.sock" }
    public var stateDirectory: String { "\(directory)/state" }
    public var logPath: String { "\(directory)/filter.log" }
    public private(set) var command: ChildProcess?
    public private(set) var starts = 0
    private var earlierOutput = ""

    public init(directory: String, disk: String, path: String) {
        self.directory = directory
        self.disk = disk
        self.path = path
    }

    deinit { kill() }

    public var uri: String { "nbd+unix:///\(disk)?socket=\(nbdSocket)" }

    /// Starts the filter and waits until it says its control endpoint is up.
    public func start(timeout: Double = 60) throws {
        if let command, command.isRunning { throw GuestError("the filter is already running") }
        let c = try ChildProcess(tessera: ["filter", "serve", "--disk", "\(disk)=\(path)", "--socket", nbdSocket,
                                                "--control", control, "--state-dir", stateDirectory])
        command = c
        starts += 1
        guard c.waitForLine(timeout: timeout, { $0.hasPrefix("control endpoint") }) else {
            c.signal(SIGKILL)
            let r = c.wait(timeout: 10).result
            throw GuestError("the filter did not start within \(Int(timeout)) s (exit \(r.status)): \(r.stderr)")
        }
    }

    /// SIGKILL, as a crash: no flush, no state written.
    public func kill() {
        guard let c = command else { return }
        c.signal(SIGKILL)
        collect(c.wait(timeout: 30).result)
        command = nil
    }

    /// SIGTERM: the filter finishes in-flight requests and persists its state.
    /// - Throws: when it does not exit 0.
    public func stop() throws {
        guard let c = command else { return }
        c.signal(SIGTERM)
        let r = c.wait(timeout: 60).result
        collect(r)
        command = nil
        guard r.status == 0 else { throw GuestError("the filter exited \(r.status) on SIGTERM: \(r.stderr)") }
    }

    /// Everything the filter printed, over all its runs.
    public var log: String { earlierOutput + (command.map { $0.stdout + $0.stderr } ?? "") }

    private func collect(_ r: CommandResult) {
        earlierOutput += "--- run \(starts) (exit \(r.status))\n" + r.stdout + r.stderr
        try? earlierOutput.write(toFile: logPath, atomically: false, encoding: .utf8)
    }
}
