import Foundation

/// A command running in the background: a test waits for a line it prints (a progress line,
/// "serving ..."), signals it, and collects its result. A command that does not end in time
/// is SIGKILLed, so a hang fails the test instead of hanging the suite.
public final class BackgroundCommand: @unchecked Sendable {
    public let process = Process()
    private let lock = NSLock()
    private var out = Data()
    private var err = Data()
    private let readers = DispatchGroup()

    public init(_ program: String, _ arguments: [String]) throws {
        process.executableURL = URL(fileURLWithPath: program)
        process.arguments = arguments
        let o = Pipe(), e = Pipe()
        process.standardOutput = o
        process.standardError = e
        process.standardInput = FileHandle.nullDevice
        try process.run()
        for (pipe, isOut) in [(o, true), (e, false)] {
            readers.enter()
            Thread { [self] in
                defer { readers.leave() }
                while true {
                    let data = pipe.fileHandleForReading.availableData
                    if data.isEmpty { return }
                    lock.withLock { if isOut { out.append(data) } else { err.append(data) } }
                }
            }.start()
        }
    }

    /// `tessera ARGS` in the background.
    public convenience init(tessera arguments: [String]) throws {
        try self.init(Tessera.binary, arguments)
    }

    public var pid: Int32 { process.processIdentifier }
    public var stdout: String { lock.withLock { String(decoding: out, as: UTF8.self) } }
    public var stderr: String { lock.withLock { String(decoding: err, as: UTF8.self) } }

    /// Waits until a whole stdout line satisfies `predicate`.
    /// - Returns: false when the process ended or `timeout` seconds passed first.
    public func waitForLine(timeout: Double, _ predicate: (String) -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let text = stdout
            let complete = text.hasSuffix("\n") ? text : String(text[..<(text.lastIndex(of: "\n") ?? text.startIndex)])
            if complete.split(separator: "\n").contains(where: { predicate(String($0)) }) { return true }
            if !process.isRunning { return false }
            usleep(2_000)
        }
        return false
    }

    public func signal(_ signal: Int32) {
        if process.isRunning { kill(process.processIdentifier, signal) }
    }

    /// Waits for the command to end; after `timeout` seconds it is SIGKILLed.
    /// - Returns: its result, and whether it had to be killed.
    public func wait(timeout: Double = 300) -> (result: CommandResult, timedOut: Bool) {
        let deadline = Date().addingTimeInterval(timeout)
        var timedOut = false
        while process.isRunning {
            if Date() >= deadline {
                timedOut = true
                kill(process.processIdentifier, SIGKILL)
                break
            }
            usleep(5_000)
        }
        process.waitUntilExit()
        readers.wait()
        return (CommandResult(status: process.terminationStatus, stdout: stdout, stderr: stderr), timedOut)
    }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }
}

extension Tessera {
    /// Runs a command that must end within `timeout` seconds (it is SIGKILLed otherwise).
    public static func run(_ arguments: [String], timeout: Double) throws -> (result: CommandResult, timedOut: Bool) {
        try BackgroundCommand(tessera: arguments).wait(timeout: timeout)
    }
}
