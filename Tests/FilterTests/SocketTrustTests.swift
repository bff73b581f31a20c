import Filter
import Foundation
import Testing
import TestSupport
import TrackerControl
#if canImport(Glibc)
import Glibc
#endif

/// A `tessera` server child (`filter serve` or `serve`) whose start can fail: its stdout is
/// read until the line saying it serves (ready) or until it ends (the process exited).
final class ServerChild: @unchecked Sendable {
    let process = Process()
    let logPath: String
    private let stdout = Pipe()
    private let reader: LineReader
    var lines: [String] { reader.lines }

    /// - Parameter umask: runs the binary under this umask (through `sh -c 'umask …; exec …'`).
    init(_ arguments: [String], log: String, umask: String? = nil) throws {
        logPath = log
        if let umask {
            process.executableURL = URL(fileURLWithPath: "/bin/sh")
            process.arguments = ["-c", "umask \(umask) && exec \"$0\" \"$@\"", Tessera.binary] + arguments
        } else {
            process.executableURL = URL(fileURLWithPath: Tessera.binary)
            process.arguments = arguments
        }
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        let logHandle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        process.standardOutput = stdout
        reader = LineReader(stdout.fileHandleForReading)
        process.standardError = logHandle
        process.standardInput = FileHandle.nullDevice
        try process.run()
        try? logHandle.close()
    }

    /// Reads stdout until a line containing `marker`: true then; false when stdout ended
    /// first (the server exited).
    func wait(for marker: String) -> Bool {
        reader.wait { lines in lines.contains { $0.contains(marker) } }
    }

    /// The first `nbd://HOST:PORT/...` URI the server printed.
    var tcpURI: String? {
        for line in lines {
            if let r = line.range(of: "nbd://") { return String(line[r.lowerBound...]).components(separatedBy: " ")[0] }
        }
        return nil
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Waits for the exit of a server that is expected to refuse to start.
    func exitStatus() -> Int32 {
        process.waitUntilExit()
        return process.terminationStatus
    }

    /// SIGTERM and wait; returns the exit status.
    @discardableResult
    func stop() -> Int32 {
        if process.isRunning { Glibc.kill(process.processIdentifier, SIGTERM) }
        process.waitUntilExit()
        return process.terminationStatus
    }

    deinit {
        if process.isRunning {
            Glibc.kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }
}

/// Items 12 and 13 end to end: the servers never take over a live socket, their socket
/// files are owner-only under any umask, other users are refused on both sockets, and TCP
/// stays on loopback unless remote clients are allowed.
@Suite(.serialized)
struct SocketTrustTests {
    static let ready = "control endpoint"

    /// `filter serve` arguments for one disk `name` (a fresh 1 MiB file) in `dir`.
    static func filterArguments(_ dir: TemporaryDirectory, name: String, socket: String? = nil, control: String? = nil,
                                extra: [String] = []) throws -> [String] {
        let disk = dir.file("\(name).raw")
        if !FileManager.default.fileExists(atPath: disk) { _ = try makeDisk(disk, size: 1 << 20) }
        return ["filter", "serve", "--disk", "\(name)=\(disk)", "--socket", socket ?? dir.file("\(name).sock"),
                "--control", control ?? dir.file("\(name).ctl"), "--state-dir", dir.file("\(name).state")] + extra
    }

    /// A repository in `dir` with one snapshot of a 1 MiB disk; returns (repo, snapshot ID).
    static func snapshot(in dir: TemporaryDirectory) throws -> (String, String) {
        let repo = dir.file("repo"), source = dir.file("source.raw")
        try Tessera.ok(["init", "--repo", repo])
        _ = try makeDisk(source, size: 1 << 20, seed: 5)
        return (repo, try Tessera.backup(repo: repo, source: source))
    }

    static func mode(_ path: String) -> mode_t? {
        var st = stat()
        guard lstat(path, &st) == 0 else { return nil }
        return st.st_mode & 0o7777
    }

    // MARK: - Item 12: socket theft

    @Test(.enabled(if: ExternalTool.available("nbdinfo")))
    func filterServeRefusesTheSocketsOfALiveFilter() throws {
        let dir = try TemporaryDirectory("trust-theft")
        let first = try ServerChild(try Self.filterArguments(dir, name: "first"), log: dir.file("first.log"))
        #expect(first.wait(for: Self.ready), "the first filter did not start: \(first.log)")

        // Same NBD socket, own control socket.
        let second = try ServerChild(try Self.filterArguments(dir, name: "second", socket: dir.file("first.sock")),
                                     log: dir.file("second.log"))
        if second.wait(for: Self.ready) {
            Issue.record("a second filter started on the live NBD socket of the first")
            second.stop()
        } else {
            #expect(second.exitStatus() != 0)
            #expect(second.log.contains("in use"), "\(second.log)")
        }
        // Same control socket, own NBD socket.
        let third = try ServerChild(try Self.filterArguments(dir, name: "third", control: dir.file("first.ctl")),
                                    log: dir.file("third.log"))
        if third.wait(for: Self.ready) {
            Issue.record("a third filter started on the live control socket of the first")
            third.stop()
        } else {
            #expect(third.exitStatus() != 0)
            #expect(third.log.contains("in use"), "\(third.log)")
        }
        // The first still answers on both.
        let list = try run("nbdinfo", ["--list", "nbd+unix:///?socket=\(dir.file("first.sock"))"])
        #expect(list.contains("first") && !list.contains("second"), "\(list)")
        #expect(try ControlClient(path: dir.file("first.ctl")).status(disk: "first").count == 1)
        #expect(first.stop() == 0)
    }

    @Test(.enabled(if: ExternalTool.available("nbdinfo")))
    func serveRefusesTheSocketOfALiveServer() throws {
        let dir = try TemporaryDirectory("trust-serve-theft")
        let (repo, snapshot) = try Self.snapshot(in: dir)
        let socket = dir.file("serve.sock")
        let first = try ServerChild(["serve", "--repo", repo, snapshot, "--socket", socket, "--name", "first"],
                                    log: dir.file("first.log"))
        #expect(first.wait(for: "serving snapshot"), "\(first.log)")
        let second = try ServerChild(["serve", "--repo", repo, snapshot, "--socket", socket, "--name", "second"],
                                     log: dir.file("second.log"))
        if second.wait(for: "serving snapshot") {
            Issue.record("a second `tessera serve` started on the live socket of the first")
            second.stop()
        } else {
            #expect(second.exitStatus() != 0)
            #expect(second.log.contains("in use"), "\(second.log)")
        }
        let list = try run("nbdinfo", ["--list", "nbd+unix:///?socket=\(socket)"])
        #expect(list.contains("first") && !list.contains("second"), "\(list)")
        #expect(first.stop() == 0)
    }

    @Test(.enabled(if: ExternalTool.available("nbdinfo")))
    func staleSocketsOfKilledServersAreReplaced() throws {
        let dir = try TemporaryDirectory("trust-stale")
        try makeStaleSocket(dir.file("d0.sock"))
        try makeStaleSocket(dir.file("d0.ctl"))
        let filter = try ServerChild(try Self.filterArguments(dir, name: "d0"), log: dir.file("d0.log"))
        #expect(filter.wait(for: Self.ready), "\(filter.log)")
        #expect(try run("nbdinfo", ["--size", "nbd+unix:///d0?socket=\(dir.file("d0.sock"))"]).contains("1048576"))
        #expect(filter.stop() == 0)

        let (repo, snapshot) = try Self.snapshot(in: dir)
        try makeStaleSocket(dir.file("serve.sock"))
        let serve = try ServerChild(["serve", "--repo", repo, snapshot, "--socket", dir.file("serve.sock"), "--name", "s"],
                                    log: dir.file("serve.log"))
        #expect(serve.wait(for: "serving snapshot"), "\(serve.log)")
        #expect(try run("nbdinfo", ["--size", "nbd+unix:///s?socket=\(dir.file("serve.sock"))"]).contains("1048576"))
        #expect(serve.stop() == 0)
    }

    @Test func aFileThatIsNotASocketIsKept() throws {
        let dir = try TemporaryDirectory("trust-notsock")
        try Data("keep me".utf8).write(to: URL(fileURLWithPath: dir.file("d0.sock")))
        let filter = try ServerChild(try Self.filterArguments(dir, name: "d0"), log: dir.file("d0.log"))
        #expect(!filter.wait(for: Self.ready))
        #expect(filter.exitStatus() != 0)
        #expect(filter.log.contains("not a socket"), "\(filter.log)")
        #expect(try String(contentsOfFile: dir.file("d0.sock"), encoding: .utf8) == "keep me")
    }

    // MARK: - Item 13: permissions

    @Test func socketFilesAreOwnerOnlyUnderUmask000() throws {
        let dir = try TemporaryDirectory("trust-umask")
        let filter = try ServerChild(try Self.filterArguments(dir, name: "d0"), log: dir.file("d0.log"), umask: "000")
        #expect(filter.wait(for: Self.ready), "\(filter.log)")
        #expect(Self.mode(dir.file("d0.sock")) == 0o600, "NBD socket mode \(String(Self.mode(dir.file("d0.sock")) ?? 0, radix: 8))")
        #expect(Self.mode(dir.file("d0.ctl")) == 0o600, "control socket mode \(String(Self.mode(dir.file("d0.ctl")) ?? 0, radix: 8))")
        #expect(filter.stop() == 0)

        let (repo, snapshot) = try Self.snapshot(in: dir)
        let serve = try ServerChild(["serve", "--repo", repo, snapshot, "--socket", dir.file("serve.sock")],
                                    log: dir.file("serve.log"), umask: "000")
        #expect(serve.wait(for: "serving snapshot"), "\(serve.log)")
        #expect(Self.mode(dir.file("serve.sock")) == 0o600,
                "serve socket mode \(String(Self.mode(dir.file("serve.sock")) ?? 0, radix: 8))")
        #expect(serve.stop() == 0)
    }

    /// Both sockets opened up to everyone (as an admin's chmod would): uid 65534 is still
    /// refused on each, with a line in the filter's log; root is served.
    @Test(.enabled(if: ExternalTool.available("nbdinfo", "setpriv") && getuid() == 0))
    func anotherUserIsRefusedOnBothSockets() throws {
        let dir = try TemporaryDirectory("trust-peercred")
        let filter = try ServerChild(try Self.filterArguments(dir, name: "d0"), log: dir.file("d0.log"))
        #expect(filter.wait(for: Self.ready), "\(filter.log)")
        #expect(chmod(dir.path, 0o711) == 0)
        #expect(chmod(dir.file("d0.sock"), 0o666) == 0)
        #expect(chmod(dir.file("d0.ctl"), 0o666) == 0)
        let asNobody = ["--reuid=65534", "--regid=65534", "--clear-groups"]
        let uri = "nbd+unix:///d0?socket=\(dir.file("d0.sock"))"

        let nbd = try runCommand("setpriv", asNobody + ["nbdinfo", "--size", uri])
        #expect(!nbd.succeeded, "uid 65534 was served over NBD: \(nbd.stdout)")
        // A control client as nobody: any bytes back mean the filter talked to it.
        let probe = """
            import socket, sys
            s = socket.socket(socket.AF_UNIX)
            s.connect(sys.argv[1])
            try:
                s.sendall(b"TSCQ" + bytes(12))
                print(len(s.recv(4096)))
            except OSError:
                print(0)
            """
        let control = try runCommand("setpriv", asNobody + ["/usr/bin/python3", "-c", probe, dir.file("d0.ctl")])
        #expect(control.succeeded, "\(control.stderr)")
        #expect(control.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "0",
                "uid 65534 got a reply from the control endpoint: \(control.stdout)")

        #expect(try run("nbdinfo", ["--size", uri]).contains("1048576"))
        #expect(try ControlClient(path: dir.file("d0.ctl")).status(disk: "d0").count == 1)
        #expect(filter.stop() == 0)
        let refusals = filter.log.components(separatedBy: "\n").filter { $0.contains("refused") && $0.contains("65534") }
        #expect(refusals.count >= 2, "one refusal per socket in the log: \(filter.log)")
    }

    @Test(.enabled(if: ExternalTool.available("nbdinfo")))
    func tcpStaysOnLoopbackUnlessRemoteClientsAreAllowed() throws {
        let dir = try TemporaryDirectory("trust-tcp")
        // Refused, with the way out in the message.
        let open = try ServerChild(try Self.filterArguments(dir, name: "d0", extra: ["--tcp", "0.0.0.0:0"]), log: dir.file("open.log"))
        if open.wait(for: Self.ready) {
            Issue.record("filter serve listened on 0.0.0.0 without --tcp-allow-remote")
            open.stop()
        } else {
            #expect(open.exitStatus() != 0)
            #expect(open.log.contains("--tcp-allow-remote"), "\(open.log)")
        }
        // Allowed explicitly; loopback (v4 and v6) without asking. Each is reachable on the port it printed.
        for (name, extra) in [("d1", ["--tcp", "0.0.0.0:0", "--tcp-allow-remote"]), ("d2", ["--tcp", "127.0.0.1:0"]),
                              ("d3", ["--tcp", "[::1]:0"])] {
            let filter = try ServerChild(try Self.filterArguments(dir, name: name, extra: extra), log: dir.file("\(name).log"))
            #expect(filter.wait(for: Self.ready), "\(extra): \(filter.log)")
            let uri = try #require(filter.tcpURI, "\(extra): no nbd:// URI printed: \(filter.lines)")
            #expect(try run("nbdinfo", ["--size", uri.replacingOccurrences(of: "0.0.0.0", with: "127.0.0.1")]).contains("1048576"))
            #expect(filter.stop() == 0)
        }

        let (repo, snapshot) = try Self.snapshot(in: dir)
        let serveArgs = ["serve", "--repo", repo, snapshot, "--socket", dir.file("serve.sock"), "--name", "s"]
        let serveOpen = try ServerChild(serveArgs + ["--tcp", "0.0.0.0:0"], log: dir.file("serve-open.log"))
        if serveOpen.wait(for: "serving snapshot") {
            Issue.record("serve listened on 0.0.0.0 without --tcp-allow-remote")
            serveOpen.stop()
        } else {
            #expect(serveOpen.exitStatus() != 0)
            #expect(serveOpen.log.contains("--tcp-allow-remote"), "\(serveOpen.log)")
        }
        let serve = try ServerChild(serveArgs + ["--tcp", "0.0.0.0:0", "--tcp-allow-remote"], log: dir.file("serve.log"))
        #expect(serve.wait(for: "serving snapshot"), "\(serve.log)")
        _ = serve.wait(for: "nbd://")
        let uri = try #require(serve.tcpURI, "no nbd:// URI printed: \(serve.lines)")
        #expect(try run("nbdinfo", ["--size", uri.replacingOccurrences(of: "0.0.0.0", with: "127.0.0.1")]).contains("1048576"))
        #expect(serve.stop() == 0)
    }
}

/// Leaves a socket file nobody listens on: a process binds and listens, then is SIGKILLed.
func makeStaleSocket(_ path: String) throws {
    let script = "import os, socket, sys\ns = socket.socket(socket.AF_UNIX)\ns.bind(sys.argv[1])\ns.listen(1)\nos.kill(os.getpid(), 9)\n"
    let r = try runCommand("/usr/bin/python3", ["-c", script, path])
    var st = stat()
    guard r.status != 0, lstat(path, &st) == 0, st.st_mode & S_IFMT == S_IFSOCK else {
        throw HarnessFailure(description: "could not leave a stale socket at \(path): \(r.status) \(r.stderr)")
    }
}
