import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Makes sure a frozen guest is thawed even if the run dies while the guest is frozen.
///
/// QEMU's guest agent has no freeze timeout of its own (`guest-fsfreeze-freeze` takes no
/// deadline), so the bound comes from a second process: before freezing, the run starts a
/// guard (`tessera internal-thaw-guard`) with a pipe on its standard input. The guard thaws
/// the guest when the deadline passes, or at once when the pipe reaches its end without a
/// `disarm` line: the run was killed (even SIGKILL closes the pipe). A run that thawed the
/// guest itself disarms the guard. The guard ignores SIGINT and SIGTERM, so the Ctrl-C or the
/// service stop that ends the run does not take the guard with it; only a SIGKILL of both
/// (a whole control group) leaves the guest frozen, and then qemu-ga's own state is the last
/// resort (`guest-fsfreeze-thaw` from any client).
public final class ThawGuard: @unchecked Sendable {
    /// When the guard was started: it thaws no earlier than `started + seconds`, so a
    /// checkpoint completed before that instant was taken while the guest was frozen.
    public let started: Date
    public let seconds: Double
    private let process: Process
    private let input: FileHandle

    /// Starts the guard and waits until it is watching.
    /// - Parameter command: the program and its first arguments (`tessera internal-thaw-guard`).
    public init(command: [String], socket: String, seconds: Double) throws {
        self.started = Date()
        self.seconds = seconds
        // A guard that already thawed and exited closes its end: telling it "disarm" then must
        // be an EPIPE to ignore, not a SIGPIPE that ends the run.
        signal(SIGPIPE, SIG_IGN)
        process = Process()
        process.executableURL = URL(fileURLWithPath: command[0])
        process.arguments = Array(command.dropFirst()) + ["--socket", socket, "--seconds", String(seconds)]
        let stdin = Pipe(), stdout = Pipe()
        process.standardInput = stdin
        process.standardOutput = stdout
        input = stdin.fileHandleForWriting
        do {
            try process.run()
        } catch {
            throw GuestAgent.Failure(message: "cannot start the thaw guard \(command[0]): \(error.localizedDescription)")
        }
        // The guard says "armed" once its timer runs; without it there is no bound on the freeze.
        let line = stdout.fileHandleForReading.readLine()
        guard line == "armed" else {
            process.terminate()
            throw GuestAgent.Failure(message: "the thaw guard did not start (it said \(line.map { "\"\($0)\"" } ?? "nothing")); not freezing the guest")
        }
    }

    /// Whether an instant lies before the earliest moment the guard could thaw the guest.
    public func isBeforeDeadline(_ instant: Date) -> Bool {
        instant.timeIntervalSince(started) < seconds
    }

    /// The run thawed the guest: the guard ends without doing anything.
    public func disarm() {
        try? input.write(contentsOf: Array("disarm\n".utf8))
        try? input.close()
        process.waitUntilExit()
    }

    /// The run could not thaw the guest: the guard does, now, retrying until it gets through.
    public func thawNow() {
        try? input.close()
        process.waitUntilExit()
    }

    // MARK: - The guard process

    /// The guard's whole life (`tessera internal-thaw-guard`): says "armed", then waits for
    /// "disarm" on standard input; thaws when the deadline passes or the input ends first.
    /// Returns the exit status.
    public static func watch(socket: String, seconds: Double, log: (String) -> Void) -> Int32 {
        signal(SIGINT, SIG_IGN)
        signal(SIGTERM, SIG_IGN)
        signal(SIGPIPE, SIG_IGN)
        let deadline = Date().addingTimeInterval(seconds)
        // Unbuffered: the run waits for this line before it freezes the guest.
        _ = "armed\n".withCString { write(1, $0, 6) }
        var received: [UInt8] = []
        while true {
            let left = deadline.timeIntervalSinceNow
            if left <= 0 {
                log("the guest was frozen for \(Int(seconds)) s (the freeze timeout); thawing it")
                return thawWithRetries(socket: socket, log: log)
            }
            var pfd = pollfd(fd: 0, events: Int16(POLLIN), revents: 0)
            let rc = poll(&pfd, 1, Int32(min(left, 3600) * 1000) + 1)
            if rc < 0 && errno == EINTR { continue }
            if rc == 0 { continue }
            var buffer = [UInt8](repeating: 0, count: 64)
            let n = read(0, &buffer, buffer.count)
            if n > 0 {
                received += buffer[..<n]
                if String(decoding: received, as: UTF8.self).contains("disarm\n") { return 0 }
                continue
            }
            if n < 0 && errno == EINTR { continue }
            log("the run ended while the guest was frozen; thawing it")
            return thawWithRetries(socket: socket, log: log)
        }
    }

    /// QEMU's chardev serves one client at a time: while a dying run's connection lingers,
    /// the guard's attempt waits or fails; it keeps trying for ten minutes.
    static func thawWithRetries(socket: String, log: (String) -> Void) -> Int32 {
        let agent = GuestAgent(socket: socket, timeout: 10)
        let giveUp = Date().addingTimeInterval(600)
        var last = ""
        while Date() < giveUp {
            do {
                let count = try agent.thaw()
                log("thawed \(count) file system\(count == 1 ? "" : "s")")
                return 0
            } catch {
                if "\(error)" != last { log("thaw failed, retrying: \(error)") }
                last = "\(error)"
                sleep(1)
            }
        }
        log("could not thaw the guest through \(socket) for 10 minutes: \(last); thaw it by hand (guest-fsfreeze-thaw)")
        return 1
    }
}

extension FileHandle {
    /// One line (without its newline), or nil at the end of the input.
    func readLine() -> String? {
        var bytes: [UInt8] = []
        while true {
            guard let data = try? read(upToCount: 1), let byte = data.first else {
                return bytes.isEmpty ? nil : String(decoding: bytes, as: UTF8.self)
            }
            if byte == UInt8(ascii: "\n") { return String(decoding: bytes, as: UTF8.self) }
            bytes.append(byte)
        }
    }
}
