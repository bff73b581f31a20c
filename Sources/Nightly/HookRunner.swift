import Foundation
import Logging
import Workers
#if canImport(Glibc)
import Glibc
#endif

/// Runs the hooks of one phase: each program directly (argv, no shell, so a VM or disk name
/// can never become shell syntax), with the phase, the VM and its disks in the environment,
/// one after the other, each within the time limit.
///
/// A hook's output goes to a temporary file rather than a pipe: a hook that leaves a child
/// behind holding the pipe would otherwise keep the run waiting for an end of file.
public struct HookRunner: Sendable {
    public var timeout: Double
    public var logger: Logger
    /// Ends a running hook (SIGTERM, then SIGKILL) when the run is cancelled.
    public var cancellation: Cancellation?

    public init(timeout: Double, logger: Logger, cancellation: Cancellation? = nil) {
        self.timeout = timeout
        self.logger = logger
        self.cancellation = cancellation
    }

    /// What the hook sees besides the run's own environment.
    public struct Context: Sendable {
        public var phase: RunConfig.Hooks.Phase
        public var vm: String?
        public var disks: [String] = []
        /// Set for backup-end: the snapshots just saved, as `DISK=ID`.
        public var snapshots: [String] = []
        /// Set for backup-abort and job-end when something failed.
        public var error: String?

        public init(phase: RunConfig.Hooks.Phase, vm: String? = nil, disks: [String] = []) {
            self.phase = phase
            self.vm = vm
            self.disks = disks
        }

        var environment: [String: String] {
            var env = ["TESSERA_PHASE": phase.rawValue, "TESSERA_DISKS": disks.joined(separator: " ")]
            if let vm { env["TESSERA_VM"] = vm }
            if !snapshots.isEmpty { env["TESSERA_SNAPSHOTS"] = snapshots.joined(separator: " ") }
            if let error { env["TESSERA_ERROR"] = error }
            return env
        }
    }

    public struct Failure: Error, CustomStringConvertible, Sendable {
        public var message: String
        public var description: String { message }
    }

    /// Runs every command of the phase; the first that fails stops the rest.
    /// - Throws: `Failure` naming the hook, its exit status or the time limit, and the end
    ///   of what it printed.
    public func run(_ commands: [[String]], _ context: Context) throws {
        for argv in commands where !argv.isEmpty {
            try runOne(argv, context)
        }
    }

    private func runOne(_ argv: [String], _ context: Context) throws {
        let name = "\(context.phase.rawValue) hook \(argv[0])"
        let outputPath = NSTemporaryDirectory() + "tessera-hook-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).log"
        guard FileManager.default.createFile(atPath: outputPath, contents: nil),
              let output = FileHandle(forWritingAtPath: outputPath) else {
            throw Failure(message: "\(name): cannot create a file for its output in \(NSTemporaryDirectory())")
        }
        defer {
            try? output.close()
            unlink(outputPath)
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: argv[0])
        process.arguments = Array(argv.dropFirst())
        process.environment = ProcessInfo.processInfo.environment.merging(context.environment) { $1 }
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = output
        process.standardError = output
        let exited = DispatchSemaphore(value: 0)
        process.terminationHandler = { _ in exited.signal() }
        let started = Date()
        do {
            try process.run()
        } catch {
            throw Failure(message: "\(name) could not be started: \(error.localizedDescription)")
        }
        logger.debug("hook started", metadata: ["event": "hook-start", "phase": "\(context.phase.rawValue)",
                                                "hook": "\(argv[0])", "vm": "\(context.vm ?? "")"])
        let deadline = Date().addingTimeInterval(timeout)
        // Woken every tenth of a second to see a cancellation: Ctrl-C must not wait for a hook.
        while exited.wait(timeout: .now() + 0.1) == .timedOut {
            let cancelled = cancellation?.reason
            guard cancelled != nil || Date() >= deadline else { continue }
            // SIGTERM first (a hook may clean up), SIGKILL if it does not go.
            kill(process.processIdentifier, SIGTERM)
            if exited.wait(timeout: .now() + 5) == .timedOut {
                kill(process.processIdentifier, SIGKILL)
                exited.wait()
            }
            if let cancelled { throw Cancelled(reason: cancelled) }
            throw Failure(message: "\(name) did not finish within \(Self.duration(timeout)) and was stopped\(Self.tail(outputPath))")
        }
        let seconds = Date().timeIntervalSince(started)
        switch (process.terminationReason, process.terminationStatus) {
        case (.exit, 0):
            logger.info("hook done", metadata: ["event": "hook-done", "phase": "\(context.phase.rawValue)", "hook": "\(argv[0])",
                                                "vm": "\(context.vm ?? "")", "seconds": "\(String(format: "%.2f", seconds))"])
        case (.exit, let status):
            throw Failure(message: "\(name) failed with exit status \(status)\(Self.tail(outputPath))")
        case (_, let signal):
            throw Failure(message: "\(name) was killed by signal \(signal)\(Self.tail(outputPath))")
        }
    }

    /// The last lines the hook printed, for the error message.
    static func tail(_ path: String) -> String {
        guard let data = FileManager.default.contents(atPath: path), !data.isEmpty else { return "" }
        let lines = String(decoding: data.suffix(2000), as: UTF8.self).split(separator: "\n").suffix(5)
        return "; it printed: " + lines.joined(separator: " | ")
    }

    static func duration(_ seconds: Double) -> String {
        seconds >= 60 && seconds.truncatingRemainder(dividingBy: 60) == 0 ? "\(Int(seconds / 60)) min" : "\(Int(seconds)) s"
    }
}
