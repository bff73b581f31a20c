import Filter
import Foundation
import TestSupport
import TrackerControl
#if canImport(Glibc)
import Glibc
#endif

struct HarnessFailure: Error, CustomStringConvertible { var description: String }

/// A `tessera filter serve` subprocess on one disk, in its own temporary directory.
///
/// The process is always ended: `stop()` (SIGTERM, expects exit 0), `kill()` (SIGKILL), or
/// `deinit` as the last resort when a test fails before either.
final class FilterProcess: @unchecked Sendable {
    let directory: TemporaryDirectory
    let diskName: String
    let diskPath: String
    let extraArguments: [String]
    /// A command the filter runs under, e.g. `setpriv` with its options (empty: run it directly).
    let launcher: [String]
    var socketPath: String { directory.file("nbd.sock") }
    var controlPath: String { directory.file("ctl.sock") }
    var stateDirectory: String { directory.file("state") }
    var logPath: String { directory.file("filter.log") }
    private(set) var process: Process?

    init(directory: TemporaryDirectory, diskName: String = "d0", diskPath: String, extraArguments: [String] = [],
         launcher: [String] = []) {
        self.directory = directory
        self.diskName = diskName
        self.diskPath = diskPath
        self.extraArguments = extraArguments
        self.launcher = launcher
    }

    deinit { if let process, process.isRunning { Glibc.kill(process.processIdentifier, SIGKILL); process.waitUntilExit() } }

    var uri: String { uri(diskName) }
    func uri(_ export: String) -> String { "nbd+unix:///\(export)?socket=\(socketPath)" }
    var checkpointURI: String { uri(diskName + "@checkpoint") }

    /// Starts the filter and waits until its control endpoint answers.
    func start() throws {
        if let process, process.isRunning { throw HarnessFailure(description: "start(): the filter is already running") }
        let p = Process()
        let arguments = ["filter", "serve", "--disk", "\(diskName)=\(diskPath)", "--socket", socketPath,
                         "--control", controlPath, "--state-dir", stateDirectory] + extraArguments
        if let program = launcher.first {
            p.executableURL = URL(fileURLWithPath: program)
            p.arguments = Array(launcher.dropFirst()) + [BuiltProducts.executable("tessera")] + arguments
        } else {
            p.executableURL = URL(fileURLWithPath: BuiltProducts.executable("tessera"))
            p.arguments = arguments
        }
        if !FileManager.default.fileExists(atPath: logPath) {
            _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        }
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        log.seekToEndOfFile()
        p.standardOutput = log
        p.standardError = log
        p.standardInput = FileHandle.nullDevice
        try p.run()
        try? log.close()
        process = p
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            if !p.isRunning {
                throw HarnessFailure(description: "the filter exited with \(p.terminationStatus) before serving: \(self.log)")
            }
            if FileManager.default.fileExists(atPath: controlPath), FileManager.default.fileExists(atPath: socketPath),
               (try? ControlClient(path: controlPath)) != nil {
                return
            }
            usleep(20_000)
        }
        kill()
        throw HarnessFailure(description: "the filter did not open its control endpoint within 60 s: \(self.log)")
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "(no log)" }

    /// SIGTERM, then waits; returns the exit status (a clean stop is 0; a signal is 128+N).
    @discardableResult
    func stop() throws -> Int32 {
        guard let p = process, p.isRunning else { throw HarnessFailure(description: "stop(): the filter is not running") }
        Glibc.kill(p.processIdentifier, SIGTERM)
        let deadline = Date().addingTimeInterval(60)
        while p.isRunning && Date() < deadline { usleep(20_000) }
        if p.isRunning {
            kill()
            throw HarnessFailure(description: "the filter did not stop within 60 s of SIGTERM: \(log)")
        }
        p.waitUntilExit()
        return p.terminationReason == .exit ? p.terminationStatus : 128 + p.terminationStatus
    }

    /// SIGKILL: a hard crash.
    func kill() {
        guard let p = process, p.isRunning else { return }
        Glibc.kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
    }

    var isRunning: Bool { process?.isRunning ?? false }

    /// The filter's pid (0 before `start()`).
    var pid: Int32 { process?.processIdentifier ?? 0 }

    func client() throws -> ControlClient { try ControlClient(path: controlPath) }

    func status() throws -> DiskStatus {
        guard let s = try client().status(disk: diskName).first else {
            throw HarnessFailure(description: "STATUS returned no disk \(diskName)")
        }
        return s
    }

    /// Runs `tessera filter ARGS --control C`.
    func cli(_ arguments: [String]) throws -> CommandResult {
        try runCommand(BuiltProducts.executable("tessera"), ["filter"] + arguments + ["--control", controlPath])
    }

    /// Every changed extent since `since`, from `tessera filter changes --json`.
    func cliChanges(since: String) throws -> [ControlProtocol.Extent] {
        let r = try cli(["changes", "--disk", diskName, "--since", since, "--json"])
        guard r.succeeded else { throw HarnessFailure(description: "filter changes --since \(since) failed (\(r.status)): \(r.stderr)") }
        return try JSONDecoder().decode([ControlProtocol.Extent].self, from: Data(r.stdout.utf8))
    }
}

/// Runs `body` with a started filter; kills the filter when `body` throws.
func withFilter<T>(_ filter: FilterProcess, _ body: (FilterProcess) throws -> T) throws -> T {
    try filter.start()
    do {
        return try body(filter)
    } catch {
        filter.kill()
        throw error
    }
}

/// Runs a tool and fails with its output when it exits non-zero.
@discardableResult
func run(_ program: String, _ arguments: [String], input: Data? = nil, environment: [String: String]? = nil) throws -> String {
    let r = try runCommand(program, arguments, environment: environment, input: input)
    guard r.succeeded else {
        throw HarnessFailure(description: "\(program) \(arguments.joined(separator: " ")) exited \(r.status): \(r.stderr)\(r.stdout)")
    }
    return r.stdout
}
