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
/// - Throws: `CommandError` when the program is missing (naming the Debian package).
@discardableResult
public func runCommand(_ program: String, _ arguments: [String], environment: [String: String]? = nil,
                       input: Data? = nil) throws -> CommandResult {
    let executable: String
    if program.hasPrefix("/") {
        executable = program
    } else if let found = ExternalTool.path(program) {
        executable = found
    } else {
        throw CommandError(description: "\(program) is not installed: apt-get install \(ExternalTool.package(for: program)) (Tools/test installs it)")
    }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    if let environment {
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    }
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    let inPipe = Pipe()
    process.standardInput = input == nil ? FileHandle.nullDevice : inPipe
    try process.run()
    if let input {
        inPipe.fileHandleForWriting.write(input)
        try? inPipe.fileHandleForWriting.close()
    }
    // Read both pipes concurrently so a chatty child cannot block on a full pipe.
    nonisolated(unsafe) var errData = Data()
    let group = DispatchGroup()
    group.enter()
    DispatchQueue.global().async {
        errData = err.fileHandleForReading.readDataToEndOfFile()
        group.leave()
    }
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    group.wait()
    process.waitUntilExit()
    return CommandResult(status: process.terminationStatus,
                         stdout: String(decoding: outData, as: UTF8.self),
                         stderr: String(decoding: errData, as: UTF8.self))
}
