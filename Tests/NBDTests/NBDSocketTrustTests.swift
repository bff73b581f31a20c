import BlockIO
import Foundation
import Logging
@testable import NBD
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// Who may reach the server: a live server's socket is never taken over, the socket file is
/// for its owner (and root) only, other users are refused even when the file is opened up,
/// and TCP stays on loopback unless remote clients are allowed explicitly.
@Suite(.serialized)
struct NBDSocketTrustTests {
    private static func quietServer(_ exports: [any NBDExport]) -> NBDServer {
        var logger = Logger(label: "nbd-trust-test")
        logger.logLevel = ProcessInfo.processInfo.environment["TESSERA_NBD_LOG"] == nil ? .critical : .debug
        return NBDServer(provider: NBDExportSet(exports), logger: logger, threads: 2)
    }

    @Test(.enabled(if: ExternalTool.available("nbdinfo")))
    func aSecondServerOnALiveSocketIsRefusedAndTheFirstKeepsServing() async throws {
        let dir = try TemporaryDirectory("nbd-theft")
        try DiskModel.create(at: dir.file("a.raw"), size: 1 << 20)
        try DiskModel.create(at: dir.file("b.raw"), size: 2 << 20)
        try await withServer([try FileExport(path: dir.file("a.raw"), name: "first")], in: dir) { first in
            let second = Self.quietServer([try FileExport(path: dir.file("b.raw"), name: "second")])
            let error = await #expect(throws: NBDError.self) { try await second.start(unixSocket: first.socketPath) }
            #expect(error?.code == .addressInUse, "\(String(describing: error))")
            #expect(error?.message.contains("in use") == true, "\(String(describing: error))")
            try await second.shutdown()
            // The first server still owns the path: a client reaches it, not the second one.
            let list = try run("nbdinfo", ["--list", first.uri()])
            #expect(list.contains("first") && !list.contains("second"), "\(list)")
        }
    }

    @Test(.enabled(if: ExternalTool.available("nbdinfo")))
    func aStaleSocketOfAKilledProcessIsReplaced() async throws {
        let dir = try TemporaryDirectory("nbd-stale")
        try DiskModel.create(at: dir.file("a.raw"), size: 1 << 20)
        try makeStaleSocket(dir.file("nbd.sock"))
        try await withServer([try FileExport(path: dir.file("a.raw"), name: "disk")], in: dir) { server in
            let size = try run("nbdinfo", ["--size", server.uri("disk")])
            #expect(size.contains("1048576"), "\(size)")
        }
    }

    @Test func aFileThatIsNotASocketIsNeverRemoved() async throws {
        let dir = try TemporaryDirectory("nbd-notsock")
        try DiskModel.create(at: dir.file("a.raw"), size: 1 << 20)
        let path = dir.file("nbd.sock")
        try Data("precious".utf8).write(to: URL(fileURLWithPath: path))
        let server = Self.quietServer([try FileExport(path: dir.file("a.raw"), name: "disk")])
        let error = await #expect(throws: NBDError.self) { try await server.start(unixSocket: path) }
        #expect(error?.message.contains("not a socket") == true, "\(String(describing: error))")
        try await server.shutdown()
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "precious")
    }

    @Test func theSocketFileIsForItsOwnerOnly() async throws {
        let dir = try TemporaryDirectory("nbd-mode")
        try DiskModel.create(at: dir.file("a.raw"), size: 1 << 20)
        try await withServer([try FileExport(path: dir.file("a.raw"), name: "disk")], in: dir) { server in
            var st = stat()
            #expect(lstat(server.socketPath, &st) == 0)
            #expect(st.st_mode & S_IFMT == S_IFSOCK)
            #expect(st.st_mode & 0o7777 == 0o600, "mode \(String(st.st_mode & 0o7777, radix: 8))")
        }
    }

    /// SO_PEERCRED: even with the file opened to everyone (an admin's chmod, a bind mount), a
    /// client running as another user is refused, while root gets through.
    @Test(.enabled(if: ExternalTool.available("nbdinfo", "setpriv") && getuid() == 0))
    func anotherUserIsRefusedEvenWhenTheFileIsOpen() async throws {
        let dir = try TemporaryDirectory("nbd-peercred")
        try DiskModel.create(at: dir.file("a.raw"), size: 1 << 20)
        try await withServer([try FileExport(path: dir.file("a.raw"), name: "disk")], in: dir) { server in
            #expect(chmod(dir.path, 0o711) == 0)
            #expect(chmod(server.socketPath, 0o666) == 0)
            let nobody = try runCommand("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups",
                                                    "nbdinfo", "--size", server.uri("disk")])
            #expect(!nobody.succeeded, "uid 65534 was served: \(nobody.stdout)")
            #expect(try run("nbdinfo", ["--size", server.uri("disk")]).contains("1048576"))
        }
    }

    @Test func tcpRefusesAnAddressOtherUsersOrHostsCouldReach() async throws {
        let dir = try TemporaryDirectory("nbd-tcp-any")
        try DiskModel.create(at: dir.file("a.raw"), size: 1 << 20)
        let server = Self.quietServer([try FileExport(path: dir.file("a.raw"), name: "disk")])
        for host in ["0.0.0.0", "::"] {
            let error = await #expect(throws: NBDError.self, "\(host)") { try await server.start(host: host, port: 0) }
            #expect(error?.message.contains("loopback") == true, "\(String(describing: error))")
        }
        try await server.shutdown()
    }

    @Test func tcpOnLoopbackIsAccepted() async throws {
        let dir = try TemporaryDirectory("nbd-tcp-lo")
        var disk = DiskModel(size: 1 << 20)
        disk.write([1, 2, 3], at: 4096)
        try disk.write(to: dir.file("a.raw"))
        let server = Self.quietServer([try FileExport(path: dir.file("a.raw"), name: "disk")])
        for host in ["127.0.0.1", "127.0.0.2", "::1", "localhost"] {
            let port = try await server.start(host: host, port: 0)
            let connectHost = host == "::1" ? "[::1]" : host
            let client = try NBDClient.connect(NBDURI(parsing: "nbd://\(connectHost):\(port)/disk"))
            #expect(try client.read(offset: 4096, length: 3) == [1, 2, 3], "\(host)")
            client.close()
        }
        try await server.shutdown()
    }
}
