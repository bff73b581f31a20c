import Foundation
import Testing
import TrackerControl
#if canImport(Glibc)
import Glibc
#endif

/// `tessera filter serve` for one disk as a child process, in a test's temporary directory:
/// the filter harness every test target uses.
///
/// `start()` returns once the filter printed that its control endpoint listens (after its NBD
/// socket) and a control client connected. The process always ends: `stop()` (SIGTERM, a
/// clean stop must exit 0), `kill()` (SIGKILL: a crash), or SIGKILL when the harness goes
/// away. `start()` again restarts it on the same state directory.
public final class FilterProcess: @unchecked Sendable {
    public let directory: TemporaryDirectory
    public let diskName: String
    public let diskPath: String
    public let extraArguments: [String]
    /// A command the filter runs under, e.g. `setpriv` with its options (empty: run it directly).
    public let launcher: [String]
    public var socketPath: String { directory.file("nbd.sock") }
    public var controlPath: String { directory.file("ctl.sock") }
    public var stateDirectory: String { directory.file("state") }
    /// The running (or last) filter process.
    public private(set) var process: ChildProcess?
    /// The output of the runs before the current one.
    private var earlierLog = ""

    public init(directory: TemporaryDirectory, diskName: String = "d0", diskPath: String, extraArguments: [String] = [],
                launcher: [String] = []) {
        self.directory = directory
        self.diskName = diskName
        self.diskPath = diskPath
        self.extraArguments = extraArguments
        self.launcher = launcher
    }

    /// A filter that is already started.
    public static func started(directory: TemporaryDirectory, diskName: String = "d0", diskPath: String,
                               extraArguments: [String] = []) throws -> FilterProcess {
        let filter = FilterProcess(directory: directory, diskName: diskName, diskPath: diskPath, extraArguments: extraArguments)
        try filter.start()
        return filter
    }

    public var uri: String { uri(diskName) }
    public func uri(_ export: String) -> String { "nbd+unix:///\(export)?socket=\(socketPath)" }
    public var checkpointURI: String { uri(diskName + "@checkpoint") }

    /// Starts the filter and waits until its control endpoint answers.
    public func start() throws {
        if isRunning { throw CommandError(description: "start(): the filter is already running") }
        if let process { earlierLog += process.stdout }
        let arguments = ["filter", "serve", "--disk", "\(diskName)=\(diskPath)", "--socket", socketPath,
                         "--control", controlPath, "--state-dir", stateDirectory] + extraArguments
        let p = if let program = launcher.first {
            try ChildProcess(program, Array(launcher.dropFirst()) + [Tessera.binary] + arguments, mergeOutput: true)
        } else {
            try ChildProcess(tessera: arguments, mergeOutput: true)
        }
        process = p
        // Printed once both the NBD socket and the control endpoint listen.
        guard p.waitForLine(timeout: 60, { $0.hasPrefix("control endpoint ") }) else {
            if let r = p.waitForExit(timeout: 0) {
                throw CommandError(description: "the filter exited with \(r.status) before serving: \(log)")
            }
            kill()
            throw CommandError(description: "the filter did not open its control endpoint within 60 s: \(log)")
        }
        _ = try client()
    }

    /// Everything every run of the filter printed (stdout and stderr, in order).
    public var log: String { earlierLog + (process?.stdout ?? "") }

    /// The complete lines the current run printed so far.
    public var logLines: [String] { process?.lines ?? [] }

    /// Waits for a line of the current run's output (a log line) that satisfies `predicate`:
    /// how a test learns that the filter did something (`disk d0: checkpoint ...`).
    public func waitForLogLines(timeout: Double = 60, _ done: ([String]) -> Bool) -> Bool {
        process?.waitForLines(timeout: timeout, done) ?? false
    }

    /// SIGTERM, then waits (SIGKILL after `timeout` seconds). A clean stop exits 0: any other
    /// status is recorded as an issue, with the filter's log.
    /// - Returns: the exit status (128 + N for a signal).
    @discardableResult
    public func stop(timeout: Double = 60, sourceLocation: SourceLocation = #_sourceLocation) -> Int32 {
        guard let p = process, p.isRunning else {
            Issue.record("stop(): the filter is not running", sourceLocation: sourceLocation)
            return -1
        }
        p.signal(SIGTERM)
        let (r, timedOut) = p.wait(timeout: timeout)
        if timedOut {
            Issue.record("the filter did not stop within \(Int(timeout)) s of SIGTERM: \(log)", sourceLocation: sourceLocation)
        } else if r.status != 0 {
            Issue.record("SIGTERM must stop the filter with exit 0, not \(r.status): \(log)", sourceLocation: sourceLocation)
        }
        return r.status
    }

    /// SIGKILL: a hard crash.
    public func kill() {
        process?.kill()
    }

    public var isRunning: Bool { process?.isRunning ?? false }

    /// The filter's pid (0 before `start()`).
    public var pid: Int32 { process?.pid ?? 0 }

    public func client() throws -> ControlClient { try ControlClient(path: controlPath) }

    public func status() throws -> DiskStatus {
        guard let s = try client().status(disk: diskName).first else {
            throw CommandError(description: "STATUS returned no disk \(diskName)")
        }
        return s
    }

    /// Runs `tessera filter ARGS --control C`.
    public func cli(_ arguments: [String]) throws -> CommandResult {
        try Tessera.run(["filter"] + arguments + ["--control", controlPath])
    }

    /// Every changed extent since `since`, from `tessera filter changes --json`.
    public func changes(since: String) throws -> [ControlProtocol.Extent] {
        let r = try cli(["changes", "--disk", diskName, "--since", since, "--json"])
        guard r.succeeded else { throw CommandError(description: "filter changes --since \(since) failed (\(r.status)): \(r.stderr)") }
        return try JSONDecoder().decode([ControlProtocol.Extent].self, from: Data(r.stdout.utf8))
    }

    /// Writes through the filter with qemu-io (the VM), one process for many writes of one
    /// byte value each.
    public func write(_ writes: [(offset: Int, length: Int, value: UInt8)]) throws {
        var args = ["-f", "raw"]
        for w in writes { args += ["-c", "write -P \(w.value) \(w.offset) \(w.length)"] }
        let r = try runCommand("qemu-io", args + [uri])
        guard r.succeeded, !r.stderr.contains("error") else { throw CommandError(description: "qemu-io failed: \(r.stderr)") }
    }
}

/// Runs `body` with a started filter; kills the filter when `body` throws.
public func withFilter<T>(_ filter: FilterProcess, _ body: (FilterProcess) throws -> T) throws -> T {
    try filter.start()
    do {
        return try body(filter)
    } catch {
        filter.kill()
        throw error
    }
}
