import Foundation

/// Real peers used by interop tests (qemu-io, qemu-img, nbdinfo, nbdcopy, nbdsh, qemu-nbd, nbdkit).
///
/// The rule: under `Tools/test` (which sets `TESSERA_REQUIRE_TOOLS=1`) a missing tool is a
/// failure, never a silent skip. Outside it, a developer without the tools gets a skip
/// that names the Debian package to install.
public enum ExternalTool {
    public static var toolsRequired: Bool {
        ProcessInfo.processInfo.environment["TESSERA_REQUIRE_TOOLS"] == "1"
    }

    /// The absolute path of `name` on PATH, or nil.
    public static func path(_ name: String) -> String? {
        let dirs = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":")
        for dir in dirs + ["/usr/sbin", "/sbin"] {
            let candidate = "\(dir)/\(name)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    /// True when the test may run: the tool exists, or tools are required (then the test runs
    /// and fails at its first use of the tool, with the install hint).
    public static func available(_ names: String...) -> Bool {
        toolsRequired || names.allSatisfy { path($0) != nil }
    }

    /// The Debian package that provides a tool, for error messages.
    public static func package(for name: String) -> String {
        switch name {
        case "qemu-io", "qemu-img", "qemu-nbd": return "qemu-utils"
        case "nbdinfo", "nbdcopy": return "libnbd-bin"
        case "nbdsh": return "python3-libnbd"
        case "nbdkit": return "nbdkit"
        case "xxhsum": return "xxhash"
        case "zstd": return "zstd"
        case "systemd-analyze": return "systemd"
        default: return name
        }
    }
}

/// The result of running a command to completion.
public struct CommandResult: Sendable {
    /// As a shell reports it: the exit code, or 128 + the signal that ended it.
    public var status: Int32
    public var stdout: String
    public var stderr: String
    public var succeeded: Bool { status == 0 }
}

public struct CommandError: Error, CustomStringConvertible {
    public var description: String
    public init(description: String) { self.description = description }
}

/// Runs a program to completion and captures its output.
/// - Parameter timeout: seconds it may run; then it is SIGKILLed and this throws.
/// - Throws: `CommandError` when the program is missing (naming the Debian package) or hung.
@discardableResult
public func runCommand(_ program: String, _ arguments: [String], environment: [String: String]? = nil,
                       input: Data? = nil, timeout: Double = 900) throws -> CommandResult {
    let child = try ChildProcess(program, arguments, environment: environment, input: input.map { .data($0) } ?? .none)
    let (result, timedOut) = child.wait(timeout: timeout)
    if timedOut {
        throw CommandError(description: "\(child.commandLine) did not end within \(Int(timeout)) s and was killed: \(result.stderr)")
    }
    return result
}

/// Runs a tool that must succeed and returns its stdout.
/// - Throws: `CommandError` with its exit status and output when it fails.
@discardableResult
public func run(_ program: String, _ arguments: [String], input: Data? = nil, environment: [String: String]? = nil) throws -> String {
    let r = try runCommand(program, arguments, environment: environment, input: input)
    guard r.succeeded else {
        throw CommandError(description: "\(program) \(arguments.joined(separator: " ")) exited \(r.status): \(r.stderr)\(r.stdout)")
    }
    return r.stdout
}

extension ChildProcess {
    /// `qemu-nbd ARGS` serving on the Unix socket `socket`, returned once it accepts
    /// connections: qemu-nbd writes its pid file after it listens, and inotify says when the
    /// file appears. Stop it with `kill()` (a read-only export; `-t` may linger after SIGTERM).
    public static func qemuNBD(_ arguments: [String], socket: String) throws -> ChildProcess {
        let pidFile = socket + ".pid"
        unlink(pidFile) // one a killed qemu-nbd left would say "ready" too soon
        let server = try ChildProcess("qemu-nbd", ["--pid-file", pidFile, "-k", socket] + arguments)
        guard server.waitForPath(pidFile) else {
            throw CommandError(description: "qemu-nbd \(arguments.joined(separator: " ")) did not start: \(server.kill().stderr)")
        }
        return server
    }
}
