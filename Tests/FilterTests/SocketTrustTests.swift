import Filter
import Foundation
import Testing
import TestSupport
import TrackerControl
#if canImport(Glibc)
import Glibc
#endif

/// Items 12 and 13 end to end: the servers never take over a live socket, their socket
/// files are owner-only under any umask, other users are refused on both sockets, and TCP
/// stays on loopback unless remote clients are allowed.
@Suite(.serialized)
struct SocketTrustTests {
    static let ready = "control endpoint"

    /// A `tessera` server (`filter serve` or `serve`) whose start can fail: a test waits for
    /// the line saying it serves, or for its exit.
    /// - Parameter umask: runs the binary under this umask (through `sh -c 'umask …; exec …'`).
    static func server(_ arguments: [String], umask: String? = nil) throws -> ChildProcess {
        guard let umask else { return try ChildProcess(tessera: arguments) }
        return try ChildProcess("/bin/sh", ["-c", "umask \(umask) && exec \"$0\" \"$@\"", Tessera.binary] + arguments)
    }

    /// The first `nbd://HOST:PORT/...` URI a server printed.
    static func tcpURI(_ server: ChildProcess) -> String? {
        for line in server.lines {
            if let r = line.range(of: "nbd://") { return String(line[r.lowerBound...]).components(separatedBy: " ")[0] }
        }
        return nil
    }

    /// `filter serve` arguments for one disk `name` (a fresh 1 MiB file) in `dir`.
    static func filterArguments(_ dir: TemporaryDirectory, name: String, socket: String? = nil, control: String? = nil,
                                extra: [String] = []) throws -> [String] {
        let disk = dir.file("\(name).raw")
        if !FileManager.default.fileExists(atPath: disk) { try DiskModel.create(at: disk, size: 1 << 20) }
        return ["filter", "serve", "--disk", "\(name)=\(disk)", "--socket", socket ?? dir.file("\(name).sock"),
                "--control", control ?? dir.file("\(name).ctl"), "--state-dir", dir.file("\(name).state")] + extra
    }

    /// A repository in `dir` with one snapshot of a 1 MiB disk; returns (repo, snapshot ID).
    static func snapshot(in dir: TemporaryDirectory) throws -> (String, String) {
        let repo = dir.file("repo"), source = dir.file("source.raw")
        try Tessera.ok(["init", "--repo", repo])
        try DiskModel.create(at: source, size: 1 << 20, seed: 5)
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
        let first = try Self.server(try Self.filterArguments(dir, name: "first"))
        #expect(first.waitForLine(containing: Self.ready), "the first filter did not start: \(first.stderr)")

        // Same NBD socket, own control socket.
        let second = try Self.server(try Self.filterArguments(dir, name: "second", socket: dir.file("first.sock")))
        if second.waitForLine(containing: Self.ready) {
            Issue.record("a second filter started on the live NBD socket of the first")
            second.terminate()
        } else {
            #expect(second.wait().result.status != 0)
            #expect(second.stderr.contains("in use"), "\(second.stderr)")
        }
        // Same control socket, own NBD socket.
        let third = try Self.server(try Self.filterArguments(dir, name: "third", control: dir.file("first.ctl")))
        if third.waitForLine(containing: Self.ready) {
            Issue.record("a third filter started on the live control socket of the first")
            third.terminate()
        } else {
            #expect(third.wait().result.status != 0)
            #expect(third.stderr.contains("in use"), "\(third.stderr)")
        }
        // The first still answers on both.
        let list = try run("nbdinfo", ["--list", "nbd+unix:///?socket=\(dir.file("first.sock"))"])
        #expect(list.contains("first") && !list.contains("second"), "\(list)")
        #expect(try ControlClient(path: dir.file("first.ctl")).status(disk: "first").count == 1)
        #expect(first.terminate() == 0)
    }

    @Test(.enabled(if: ExternalTool.available("nbdinfo")))
    func serveRefusesTheSocketOfALiveServer() throws {
        let dir = try TemporaryDirectory("trust-serve-theft")
        let (repo, snapshot) = try Self.snapshot(in: dir)
        let socket = dir.file("serve.sock")
        let first = try Self.server(["serve", "--repo", repo, snapshot, "--socket", socket, "--name", "first"])
        #expect(first.waitForLine(containing: "serving snapshot"), "\(first.stderr)")
        let second = try Self.server(["serve", "--repo", repo, snapshot, "--socket", socket, "--name", "second"])
        if second.waitForLine(containing: "serving snapshot") {
            Issue.record("a second `tessera serve` started on the live socket of the first")
            second.terminate()
        } else {
            #expect(second.wait().result.status != 0)
            #expect(second.stderr.contains("in use"), "\(second.stderr)")
        }
        let list = try run("nbdinfo", ["--list", "nbd+unix:///?socket=\(socket)"])
        #expect(list.contains("first") && !list.contains("second"), "\(list)")
        #expect(first.terminate() == 0)
    }

    @Test(.enabled(if: ExternalTool.available("nbdinfo")))
    func staleSocketsOfKilledServersAreReplaced() throws {
        let dir = try TemporaryDirectory("trust-stale")
        try makeStaleSocket(dir.file("d0.sock"))
        try makeStaleSocket(dir.file("d0.ctl"))
        let filter = try Self.server(try Self.filterArguments(dir, name: "d0"))
        #expect(filter.waitForLine(containing: Self.ready), "\(filter.stderr)")
        #expect(try run("nbdinfo", ["--size", "nbd+unix:///d0?socket=\(dir.file("d0.sock"))"]).contains("1048576"))
        #expect(filter.terminate() == 0)

        let (repo, snapshot) = try Self.snapshot(in: dir)
        try makeStaleSocket(dir.file("serve.sock"))
        let serve = try Self.server(["serve", "--repo", repo, snapshot, "--socket", dir.file("serve.sock"), "--name", "s"])
        #expect(serve.waitForLine(containing: "serving snapshot"), "\(serve.stderr)")
        #expect(try run("nbdinfo", ["--size", "nbd+unix:///s?socket=\(dir.file("serve.sock"))"]).contains("1048576"))
        #expect(serve.terminate() == 0)
    }

    @Test func aFileThatIsNotASocketIsKept() throws {
        let dir = try TemporaryDirectory("trust-notsock")
        try Data("keep me".utf8).write(to: URL(fileURLWithPath: dir.file("d0.sock")))
        let filter = try Self.server(try Self.filterArguments(dir, name: "d0"))
        #expect(!filter.waitForLine(containing: Self.ready))
        #expect(filter.wait().result.status != 0)
        #expect(filter.stderr.contains("not a socket"), "\(filter.stderr)")
        #expect(try String(contentsOfFile: dir.file("d0.sock"), encoding: .utf8) == "keep me")
    }

    // MARK: - Item 13: permissions

    @Test func socketFilesAreOwnerOnlyUnderUmask000() throws {
        let dir = try TemporaryDirectory("trust-umask")
        let filter = try Self.server(try Self.filterArguments(dir, name: "d0"), umask: "000")
        #expect(filter.waitForLine(containing: Self.ready), "\(filter.stderr)")
        #expect(Self.mode(dir.file("d0.sock")) == 0o600, "NBD socket mode \(String(Self.mode(dir.file("d0.sock")) ?? 0, radix: 8))")
        #expect(Self.mode(dir.file("d0.ctl")) == 0o600, "control socket mode \(String(Self.mode(dir.file("d0.ctl")) ?? 0, radix: 8))")
        #expect(filter.terminate() == 0)

        let (repo, snapshot) = try Self.snapshot(in: dir)
        let serve = try Self.server(["serve", "--repo", repo, snapshot, "--socket", dir.file("serve.sock")], umask: "000")
        #expect(serve.waitForLine(containing: "serving snapshot"), "\(serve.stderr)")
        #expect(Self.mode(dir.file("serve.sock")) == 0o600,
                "serve socket mode \(String(Self.mode(dir.file("serve.sock")) ?? 0, radix: 8))")
        #expect(serve.terminate() == 0)
    }

    /// Both sockets opened up to everyone (as an admin's chmod would): uid 65534 is still
    /// refused on each, with a line in the filter's log; root is served.
    @Test(.enabled(if: ExternalTool.available("nbdinfo", "setpriv") && getuid() == 0))
    func anotherUserIsRefusedOnBothSockets() throws {
        let dir = try TemporaryDirectory("trust-peercred")
        let filter = try Self.server(try Self.filterArguments(dir, name: "d0"))
        #expect(filter.waitForLine(containing: Self.ready), "\(filter.stderr)")
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
        #expect(filter.terminate() == 0)
        let refusals = filter.stderr.components(separatedBy: "\n").filter { $0.contains("refused") && $0.contains("65534") }
        #expect(refusals.count >= 2, "one refusal per socket in the log: \(filter.stderr)")
    }

    @Test(.enabled(if: ExternalTool.available("nbdinfo")))
    func tcpStaysOnLoopbackUnlessRemoteClientsAreAllowed() throws {
        let dir = try TemporaryDirectory("trust-tcp")
        // Refused, with the way out in the message.
        let open = try Self.server(try Self.filterArguments(dir, name: "d0", extra: ["--tcp", "0.0.0.0:0"]))
        if open.waitForLine(containing: Self.ready) {
            Issue.record("filter serve listened on 0.0.0.0 without --tcp-allow-remote")
            open.terminate()
        } else {
            #expect(open.wait().result.status != 0)
            #expect(open.stderr.contains("--tcp-allow-remote"), "\(open.stderr)")
        }
        // Allowed explicitly; loopback (v4 and v6) without asking. Each is reachable on the port it printed.
        for (name, extra) in [("d1", ["--tcp", "0.0.0.0:0", "--tcp-allow-remote"]), ("d2", ["--tcp", "127.0.0.1:0"]),
                              ("d3", ["--tcp", "[::1]:0"])] {
            let filter = try Self.server(try Self.filterArguments(dir, name: name, extra: extra))
            #expect(filter.waitForLine(containing: Self.ready), "\(extra): \(filter.stderr)")
            let uri = try #require(Self.tcpURI(filter), "\(extra): no nbd:// URI printed: \(filter.lines)")
            #expect(try run("nbdinfo", ["--size", uri.replacingOccurrences(of: "0.0.0.0", with: "127.0.0.1")]).contains("1048576"))
            #expect(filter.terminate() == 0)
        }

        let (repo, snapshot) = try Self.snapshot(in: dir)
        let serveArgs = ["serve", "--repo", repo, snapshot, "--socket", dir.file("serve.sock"), "--name", "s"]
        let serveOpen = try Self.server(serveArgs + ["--tcp", "0.0.0.0:0"])
        if serveOpen.waitForLine(containing: "serving snapshot") {
            Issue.record("serve listened on 0.0.0.0 without --tcp-allow-remote")
            serveOpen.terminate()
        } else {
            #expect(serveOpen.wait().result.status != 0)
            #expect(serveOpen.stderr.contains("--tcp-allow-remote"), "\(serveOpen.stderr)")
        }
        let serve = try Self.server(serveArgs + ["--tcp", "0.0.0.0:0", "--tcp-allow-remote"])
        #expect(serve.waitForLine(containing: "serving snapshot"), "\(serve.stderr)")
        _ = serve.waitForLine(containing: "nbd://")
        let uri = try #require(Self.tcpURI(serve), "no nbd:// URI printed: \(serve.lines)")
        #expect(try run("nbdinfo", ["--size", uri.replacingOccurrences(of: "0.0.0.0", with: "127.0.0.1")]).contains("1048576"))
        #expect(serve.terminate() == 0)
    }
}
