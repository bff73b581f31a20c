internal import CLinuxShims
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A child process that every test starts the same way: its output is read as it comes, a test
/// waits for a line (or a file) that says it is ready, signals it, and waits for its exit with
/// a timeout that SIGKILLs it, so a hang fails the test instead of hanging the suite.
///
/// Built on posix_spawn and waitpid rather than Foundation's `Process` (whose
/// `waitUntilExit` can miss a child's exit on Linux). Nothing here sleeps: waits are on a
/// condition that the readers and the reaper signal, or on inotify and the exit pipe.
/// A child still running when its `ChildProcess` goes away is SIGKILLed and reaped.
public final class ChildProcess: @unchecked Sendable {
    public enum Input: Sendable {
        /// /dev/null.
        case none
        /// A pipe the test writes to (`write`, `closeInput`).
        case pipe
        /// These bytes, then end of file.
        case data(Data)
    }

    public let pid: Glibc.pid_t
    /// The program and its arguments, for failure messages.
    public let commandLine: String
    private let state: State
    private var inputFD: Int32 = -1

    /// Starts `program` (a path, or a name looked up on PATH) with `arguments`.
    /// - Parameters:
    ///   - environment: variables added to (or replacing) this process's environment.
    ///   - mergeOutput: stderr goes to the stdout pipe, in the order written (a server's log).
    /// - Throws: `CommandError` when the program is missing (naming the Debian package) or
    ///   cannot be started.
    public init(_ program: String, _ arguments: [String], environment: [String: String]? = nil,
                input: Input = .none, mergeOutput: Bool = false) throws {
        _ = ChildProcess.ignoreSIGPIPE
        let path = try ChildProcess.resolve(program)
        commandLine = ([program] + arguments).joined(separator: " ")
        let out = try ChildProcess.makePipe(), err = try ChildProcess.makePipe()
        let stdinPipe: (read: Int32, write: Int32)? = if case .none = input { nil } else { try ChildProcess.makePipe() }
        let exitPipe = try ChildProcess.makePipe()

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let stdinPipe {
            posix_spawn_file_actions_adddup2(&actions, stdinPipe.read, 0)
        } else {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        }
        posix_spawn_file_actions_adddup2(&actions, out.write, 1)
        posix_spawn_file_actions_adddup2(&actions, mergeOutput ? out.write : err.write, 2)
        // Every other descriptor of the test process stays out of the child: a pipe of a
        // concurrent test inherited by a long-lived server would never report end of file.
        tessera_spawn_add_closefrom(&actions, 3)

        // Default dispositions and an empty mask: nothing the test runner ignores or blocks
        // (SIGPIPE, say) carries over into the child.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var all = sigset_t(), none = sigset_t()
        sigfillset(&all)
        sigemptyset(&none)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))

        var variables = ProcessInfo.processInfo.environment
        for (key, value) in environment ?? [:] { variables[key] = value }
        let argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
        let envp: [UnsafeMutablePointer<CChar>?] = variables.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for p in argv + envp { free(p) } }
        var child: pid_t = 0
        let rc = posix_spawn(&child, path, &actions, &attributes, argv, envp)

        for fd in [out.write, err.write] + (stdinPipe.map { [$0.read] } ?? []) { close(fd) }
        guard rc == 0 else {
            for fd in [out.read, err.read, exitPipe.read, exitPipe.write] + (stdinPipe.map { [$0.write] } ?? []) { close(fd) }
            throw CommandError(description: "cannot start \(commandLine): \(String(cString: strerror(rc)))")
        }
        pid = child
        state = State(exitRead: exitPipe.read)
        state.start(pid: child, stdout: out.read, stderr: err.read, exitWrite: exitPipe.write)
        switch input {
        case .none: break
        case .pipe: inputFD = stdinPipe!.write
        case .data(let data):
            // On its own thread: a child that reads its input late must not block the test.
            let fd = stdinPipe!.write
            Thread {
                data.withUnsafeBytes { ChildProcess.writeAll(fd, $0) }
                close(fd)
            }.start()
        }
    }

    /// `tessera ARGS`.
    public convenience init(tessera arguments: [String], mergeOutput: Bool = false) throws {
        try self.init(Tessera.binary, arguments, mergeOutput: mergeOutput)
    }

    deinit {
        if inputFD >= 0 { close(inputFD) }
        state.killAndReap(pid: pid)
    }

    // MARK: - Output

    /// Everything the child wrote to stdout so far (and stderr, with `mergeOutput`).
    public var stdout: String { state.locked { String(decoding: $0.out, as: UTF8.self) } }
    public var stderr: String { state.locked { String(decoding: $0.err, as: UTF8.self) } }
    /// The complete stdout lines so far.
    public var lines: [String] { state.locked { $0.lines } }

    /// Waits until the complete stdout lines satisfy `done` (called with the lock held: it
    /// must not call back into this object).
    /// - Returns: false when stdout ended (the child exited) or `timeout` seconds passed first.
    public func waitForLines(timeout: Double = 60, _ done: ([String]) -> Bool) -> Bool {
        state.wait(timeout: timeout) { s in done(s.lines) ? true : s.stdoutClosed ? false : nil } ?? false
    }

    /// Waits until a complete stdout line satisfies `predicate`; false when stdout ended or
    /// `timeout` passed first.
    public func waitForLine(timeout: Double = 60, _ predicate: (String) -> Bool) -> Bool {
        waitForLines(timeout: timeout) { $0.contains(where: predicate) }
    }

    /// Waits for a stdout line that contains `text`.
    public func waitForLine(containing text: String, timeout: Double = 60) -> Bool {
        waitForLine(timeout: timeout) { $0.contains(text) }
    }

    /// Waits until `path` exists (a pid file, a socket); false when the child exits or
    /// `timeout` passes first. inotify tells when the directory changes: no polling.
    public func waitForPath(_ path: String, timeout: Double = 60) -> Bool {
        FileWatch.wait(for: path, toExist: true, timeout: timeout, unlessReadable: state.exitRead)
    }

    // MARK: - Input

    /// Writes to the child's stdin (`input: .pipe`).
    public func write(_ data: Data) {
        precondition(inputFD >= 0, "write(_:) needs input: .pipe (and an input not closed yet)")
        data.withUnsafeBytes { ChildProcess.writeAll(inputFD, $0) }
    }

    /// Closes the child's stdin: it reads end of file.
    public func closeInput() {
        if inputFD >= 0 { close(inputFD) }
        inputFD = -1
    }

    // MARK: - Signals and exit

    public var isRunning: Bool { state.locked { $0.status == nil } }

    /// Sends `signal` unless the child has exited (and been reaped: its pid may be reused).
    public func signal(_ signal: Int32) {
        state.locked { s in if s.status == nil { _ = Glibc.kill(pid, signal) } }
    }

    /// Waits for the child to exit and its output to end.
    /// - Returns: its result, or nil when it still runs after `timeout` seconds (it is left
    ///   running).
    public func waitForExit(timeout: Double) -> CommandResult? {
        guard state.wait(timeout: timeout, { $0.status != nil ? true : nil }) == true else { return nil }
        // The output ends with the exit, unless a grandchild still holds it open: that one
        // gets a little while, the exit is what counts.
        _ = state.wait(timeout: 10) { $0.stdoutClosed && $0.stderrClosed ? true : nil }
        return state.locked { s in
            CommandResult(status: s.status ?? -1, stdout: String(decoding: s.out, as: UTF8.self),
                          stderr: String(decoding: s.err, as: UTF8.self))
        }
    }

    /// Waits for the child to exit; after `timeout` seconds it is SIGKILLed.
    /// - Returns: its result, and whether it had to be killed.
    public func wait(timeout: Double = 300) -> (result: CommandResult, timedOut: Bool) {
        if let r = waitForExit(timeout: timeout) { return (r, false) }
        signal(SIGKILL)
        return (waitForExit(timeout: .infinity)!, true)
    }

    /// SIGTERM, then waits (SIGKILL after `timeout` seconds): how a server is stopped.
    /// - Returns: the exit status (a clean stop of a tessera server is 0).
    @discardableResult
    public func terminate(timeout: Double = 60) -> Int32 {
        signal(SIGTERM)
        return wait(timeout: timeout).result.status
    }

    /// SIGKILL, and waits for the exit.
    @discardableResult
    public func kill() -> CommandResult {
        signal(SIGKILL)
        return waitForExit(timeout: .infinity)!
    }

    // MARK: - Internals

    /// What the reader threads and the reaper share with the waiters, behind one condition.
    private final class State: @unchecked Sendable {
        let condition = NSCondition()
        var out: [UInt8] = []
        var err: [UInt8] = []
        var lines: [String] = []
        private var lineStart = 0
        var stdoutClosed = false
        var stderrClosed = false
        /// The exit status as a shell reports it: the exit code, or 128 + the signal.
        var status: Int32?
        /// Readable (end of file) once the child has exited: for waits that poll() descriptors.
        let exitRead: Int32

        init(exitRead: Int32) { self.exitRead = exitRead }
        deinit { close(exitRead) }

        func locked<T>(_ body: (State) -> T) -> T {
            condition.lock()
            defer { condition.unlock() }
            return body(self)
        }

        /// Waits until `check` says true or false (nil: keep waiting), or the timeout.
        func wait(timeout: Double, _ check: (State) -> Bool?) -> Bool? {
            // No deadline for an infinite timeout: NSCondition.wait(until: .distantFuture)
            // traps on Linux (the date overflows its timespec).
            let deadline = timeout.isFinite ? Date(timeIntervalSinceNow: timeout) : nil
            condition.lock()
            defer { condition.unlock() }
            while true {
                if let answer = check(self) { return answer }
                if let deadline {
                    if !condition.wait(until: deadline) { return check(self) }
                } else {
                    condition.wait()
                }
            }
        }

        func start(pid: pid_t, stdout: Int32, stderr: Int32, exitWrite: Int32) {
            for (fd, isOut) in [(stdout, true), (stderr, false)] {
                Thread { [self] in read(fd, isOut: isOut) }.start()
            }
            Thread { [self] in reap(pid, exitWrite: exitWrite) }.start()
        }

        private func read(_ fd: Int32, isOut: Bool) {
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                condition.lock()
                if isOut {
                    out.append(contentsOf: buffer[0..<n])
                    while let newline = out[lineStart...].firstIndex(of: UInt8(ascii: "\n")) {
                        lines.append(String(decoding: out[lineStart..<newline], as: UTF8.self))
                        lineStart = newline + 1
                    }
                } else {
                    err.append(contentsOf: buffer[0..<n])
                }
                condition.broadcast()
                condition.unlock()
            }
            close(fd)
            condition.lock()
            if isOut { stdoutClosed = true } else { stderrClosed = true }
            condition.broadcast()
            condition.unlock()
        }

        /// Waits for the exit without reaping, then reaps under the lock: `signal` never
        /// sends to a pid that was reaped (and may be reused).
        private func reap(_ pid: pid_t, exitWrite: Int32) {
            var info = siginfo_t()
            while waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT) < 0 && errno == EINTR {}
            condition.lock()
            var raw: Int32 = 0
            while waitpid(pid, &raw, 0) < 0 && errno == EINTR {}
            // WIFEXITED / WTERMSIG by hand: the C macros are not imported.
            status = raw & 0x7f == 0 ? (raw >> 8) & 0xff : 128 + (raw & 0x7f)
            condition.broadcast()
            condition.unlock()
            close(exitWrite)
        }

        func killAndReap(pid: pid_t) {
            condition.lock()
            if status == nil { _ = Glibc.kill(pid, SIGKILL) }
            while status == nil { condition.wait() }
            condition.unlock()
        }
    }

    /// A pipe whose ends are closed on exec (the child gets its ends through dup2 only).
    private static func makePipe() throws -> (read: Int32, write: Int32) {
        var fds: [Int32] = [-1, -1]
        guard tessera_pipe_cloexec(&fds) == 0 else { throw CommandError(description: "pipe2 failed: errno \(errno)") }
        return (fds[0], fds[1])
    }

    private static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) {
        var done = 0
        while done < bytes.count {
            let n = Glibc.write(fd, bytes.baseAddress! + done, bytes.count - done)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return } // the child closed its input: what it did not read is its business
            done += n
        }
    }

    /// The absolute path of `program`: as given when it holds a slash, else found on PATH.
    static func resolve(_ program: String) throws -> String {
        if program.contains("/") { return program }
        guard let found = ExternalTool.path(program) else {
            throw CommandError(description: "\(program) is not installed: apt-get install \(ExternalTool.package(for: program)) (Tools/test installs it)")
        }
        return found
    }

    /// Writing to the pipe of a child that exited must be an error (EPIPE), not the end of the
    /// test process.
    private static let ignoreSIGPIPE: Void = { _ = Glibc.signal(SIGPIPE, SIG_IGN) }()
}
