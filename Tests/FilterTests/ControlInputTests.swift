import BlockIO
@testable import Filter
import Foundation
import NBD
import Testing
import TestSupport
import TrackerControl
#if canImport(Glibc)
import Glibc
#endif

/// Promise 6: bad input on the control socket and on the command line gets a clear error;
/// the filter keeps serving other control clients and NBD clients.
@Suite(.serialized)
struct ControlInputTests {
    static let size: UInt64 = 4 << 20
    static var long: Bool { ProcessInfo.processInfo.environment["TESSERA_LONG"] == "1" }

    /// A reply read from a raw connection: nil when the filter closed without replying.
    struct RawReply { var header: ControlProtocol.Header; var body: [UInt8] }

    /// Sends `bytes` on a fresh connection, closes the sending side, and reads every reply
    /// until the filter closes the connection.
    func exchange(_ path: String, _ bytes: [UInt8]) throws -> [RawReply] {
        let fd = try ControlSocket.connect(path: path)
        defer { close(fd) }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        if !bytes.isEmpty { try ControlSocket.writeAll(fd, bytes) }
        shutdown(fd, Int32(SHUT_WR))
        var replies: [RawReply] = []
        while true {
            // A close with our unread bytes still queued on the filter's side shows up here as
            // ECONNRESET instead of an end of stream: both are "the filter closed".
            guard let h = try? ControlSocket.readExactly(fd, ControlProtocol.headerSize) else { return replies }
            let header = try ControlProtocol.Header(parsing: h)
            guard header.magic == ControlProtocol.responseMagic, header.length <= ControlProtocol.maxResponsePayload else {
                throw CommandError(description: "a reply without the response magic: \(header)")
            }
            let body = try ControlSocket.readExactly(fd, Int(header.length)) ?? []
            replies.append(RawReply(header: header, body: body))
        }
    }

    func message(_ request: UInt16, _ payload: [UInt8], magic: UInt32 = ControlProtocol.requestMagic,
                        version: UInt16 = ControlProtocol.version, length: UInt32? = nil, id: UInt32 = 7) -> [UInt8] {
        ControlProtocol.Header(magic: magic, version: version, number: request, id: id,
                               length: length ?? UInt32(payload.count)).bytes + payload
    }

    /// The error code of an error reply, checking it carries a message.
    func errorCode(_ reply: RawReply) throws -> String {
        let e = try JSONDecoder().decode(ControlProtocol.ErrorReply.self, from: Data(reply.body))
        #expect(!e.error.isEmpty)
        #expect(ControlProtocol.statusNumber(FilterError.Code(rawValue: e.code)) == reply.header.number)
        return e.code
    }

    /// The filter still serves: a new control client gets STATUS, an NBD client reads.
    func stillServing(_ f: FilterProcess, _ nbd: NBDClient) throws {
        #expect(f.isRunning, "the filter died: \(f.log)")
        #expect(try f.status().name == "d0")
        let bytes = try nbd.read(offset: 65536, length: 4096)
        #expect(bytes == [UInt8](repeating: 0x5a, count: 4096))
    }

    @Test
    func malformedMessagesGetClearErrors() throws {
        let dir = try TemporaryDirectory("filter-ctl")
        let diskPath = dir.file("disk.raw")
        try DiskModel.create(at: diskPath, size: Self.size)
        try BlockFile(path: diskPath, mode: .readWrite).write([UInt8](repeating: 0x5a, count: 65536), at: 65536)
        let filter = FilterProcess(directory: dir, diskPath: diskPath)
        try withFilter(filter) { f in
            let nbd = try NBDClient.connect(try NBDURI(parsing: f.uri))
            defer { nbd.close() }
            let path = f.controlPath
            let status = Array(#"{"disk":"d0"}"#.utf8)
            let P = ControlProtocol.self

            // Wrong magic, wrong version, oversized length: an error reply, then close.
            for (bytes, code) in [
                (message(3, status, magic: 0xDEAD_BEEF), "bad-request"),
                (message(3, status, version: 2), "unsupported-version"),
                (message(3, [], length: UInt32(P.maxRequestPayload + 1)), "bad-request"),
                (message(3, [], length: UInt32.max), "bad-request"),
                (Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8), "bad-request"),
            ] {
                let replies = try exchange(path, bytes + message(3, status))
                #expect(replies.count == 1, "one error reply, then the connection closes: \(replies.map(\.header))")
                if let r = replies.first { #expect(try errorCode(r) == code) }
                try stillServing(f, nbd)
            }

            // Truncated header / truncated payload / nothing: closed without harm.
            for bytes in [[], Array(message(3, status).prefix(9)), Array(message(3, status).dropLast(3))] {
                let replies = try exchange(path, bytes)
                if let r = replies.first { #expect(try errorCode(r) == "bad-request") }
                #expect(replies.count <= 1)
                try stillServing(f, nbd)
            }

            // Unknown request numbers and invalid JSON: an error reply, and the connection
            // stays in step (the STATUS sent after it is answered).
            for (bytes, code) in [
                (message(0, status), "unknown-request"),
                (message(99, status), "unknown-request"),
                (message(0xFFFF, []), "unknown-request"),
                (message(3, Array("{not json".utf8)), "bad-request"),
                (message(4, Array(#"{"disk": 5}"#.utf8)), "bad-request"),
                (message(5, Array(#"{"disk":"d0"}"#.utf8)), "bad-request"),
                (message(4, Array(#"{"disk":"nosuch"}"#.utf8)), "unknown-disk"),
                (message(1, Array(#"{"disk":"../x","path":"/etc/passwd"}"#.utf8)), "invalid-argument"),
            ] {
                let replies = try exchange(path, bytes + message(3, status, id: 8))
                #expect(replies.count == 2, "an error reply, then the STATUS reply: \(replies.map(\.header))")
                if replies.count == 2 {
                    #expect(try errorCode(replies[0]) == code)
                    #expect(replies[1].header.number == 0 && replies[1].header.id == 8)
                }
                try stillServing(f, nbd)
            }
            f.stop()
        }
    }

    @Test
    func fuzzedMessagesNeverHurtTheFilter() throws {
        let count = Self.long ? 5000 : 300
        let dir = try TemporaryDirectory("filter-fuzz")
        let diskPath = dir.file("disk.raw")
        try DiskModel.create(at: diskPath, size: Self.size)
        try BlockFile(path: diskPath, mode: .readWrite).write([UInt8](repeating: 0x5a, count: 65536), at: 65536)
        let filter = FilterProcess(directory: dir, diskPath: diskPath)
        try withFilter(filter) { f in
            let nbd = try NBDClient.connect(try NBDURI(parsing: f.uri))
            defer { nbd.close() }
            let before = try f.status()
            // Valid messages to mutate; "nosuch" keeps even a surviving mutation harmless
            // (a flipped request number could otherwise detach or reset the disk).
            let seeds: [[UInt8]] = [
                message(3, Array(#"{"disk":"nosuch"}"#.utf8)),
                message(3, Array("{}".utf8)),
                message(5, Array(#"{"disk":"nosuch","since":"00000000-0000-0000-0000-000000000000/1","offset":0}"#.utf8)),
                message(4, Array(#"{"disk":"nosuch"}"#.utf8)),
            ]
            for i in 0..<count {
                var rng = SeededGenerator(seed: UInt64(9000 + i))
                var bytes: [UInt8]
                switch i % 3 {
                case 0:
                    bytes = rng.bytes(Int.random(in: 0...80, using: &rng))
                default:
                    bytes = seeds[Int.random(in: 0..<seeds.count, using: &rng)]
                    for _ in 0..<Int.random(in: 1...3, using: &rng) where !bytes.isEmpty {
                        let at = Int.random(in: 0..<bytes.count, using: &rng)
                        switch Int.random(in: 0..<3, using: &rng) {
                        case 0: bytes[at] ^= UInt8(1 << Int.random(in: 0..<8, using: &rng))
                        case 1: bytes[at] = UInt8.random(in: 0...255, using: &rng)
                        default: bytes = Array(bytes.prefix(at))
                        }
                    }
                }
                let replies: [RawReply]
                do { replies = try exchange(f.controlPath, bytes) } catch {
                    Issue.record("fuzz case \(i) (seed \(9000 + i)): \(error)")
                    continue
                }
                for r in replies where r.header.number != 0 {
                    _ = try errorCode(r)
                }
                if i % 50 == 0 { try stillServing(f, nbd) }
            }
            try stillServing(f, nbd)
            let after = try f.status()
            #expect(after.generation == before.generation && after.changeID == before.changeID && after.checkpoint == nil,
                    "fuzzing changed the disk's state: \(after)")
            f.stop()
        }
    }

    @Test
    func badCommandLineInputGetsClearErrors() throws {
        let dir = try TemporaryDirectory("filter-cli")
        let diskPath = dir.file("disk.raw")
        try DiskModel.create(at: diskPath, size: Self.size)
        let common = ["--socket", dir.file("n.sock"), "--control", dir.file("c.sock"), "--state-dir", dir.file("s")]

        let noEquals = try Tessera.run(["filter", "serve", "--disk", "d0"] + common)
        #expect(noEquals.status != 0)
        #expect(noEquals.stderr.contains("NAME=PATH"), "\(noEquals.stderr)")

        let missing = try Tessera.run(["filter", "serve", "--disk", "d0=\(dir.file("nope.raw"))"] + common)
        #expect(missing.status != 0)
        #expect(missing.stderr.contains("nope.raw"), "the error names the missing file: \(missing.stderr)")
        #expect(!FileManager.default.fileExists(atPath: dir.file("c.sock")), "a failed start leaves no control socket")

        let filter = FilterProcess(directory: dir, diskPath: diskPath)
        try withFilter(filter) { f in
            let client = try f.client()
            #expect(try f.cli(["checkpoint", "--disk", "d0"]).succeeded)
            let second = try f.cli(["checkpoint", "--disk", "d0"])
            #expect(second.status == 1 && second.stderr.contains("release"), "\(second.stderr)")
            #expect(throws: FilterError.self) { try client.checkpoint(disk: "d0") }
            do { _ = try client.checkpoint(disk: "d0") } catch let e as FilterError { #expect(e.code == .checkpointOpen) }
            #expect(try f.cli(["release", "--disk", "d0"]).succeeded)

            let noCheckpoint = try f.cli(["release", "--disk", "d0"])
            #expect(noCheckpoint.status == 1 && !noCheckpoint.stderr.isEmpty)
            do { _ = try client.release(disk: "d0", commit: true); Issue.record("release without a checkpoint succeeded") }
            catch let e as FilterError { #expect(e.code == .noCheckpoint) }

            let garbage = try f.cli(["changes", "--disk", "d0", "--since", "yesterday"])
            #expect(garbage.status == 1 && garbage.stderr.contains("change ID"), "\(garbage.stderr)")
            do { _ = try client.queryChanges(disk: "d0", since: "yesterday"); Issue.record("a garbage change ID was answered") }
            catch let e as FilterError { #expect(e.code == .invalidArgument) }

            let foreign = "\(UUID().uuidString)/1"
            let full = try f.cli(["changes", "--disk", "d0", "--since", foreign])
            #expect(full.status == 1 && full.stderr.contains("full read"), "\(full.stderr)")
            do { _ = try client.queryChanges(disk: "d0", since: foreign); Issue.record("a foreign change ID was answered") }
            catch let e as FilterError { #expect(e.code == .fullReadRequired) }

            let unknownDisk = try f.cli(["status", "--disk", "nosuch"])
            #expect(unknownDisk.status == 1 && unknownDisk.stderr.contains("nosuch"))
            f.stop()
        }
        let unreachable = try Tessera.run(["filter", "status", "--control", dir.file("gone.sock")])
        #expect(unreachable.status == 2 && unreachable.stderr.contains("gone.sock"), "\(unreachable.stderr)")
    }
}
