import BlockIO
import Foundation
import NBD
import Testing
import TestSupport
import TrackerControl
#if canImport(Glibc)
import Glibc
#endif

/// A raw connection to a control endpoint: bytes in, replies out, for clients that misbehave
/// on purpose (hold connections, drip bytes, pipeline).
final class RawControlConnection {
    let fd: Int32

    struct Reply { var header: ControlProtocol.Header; var body: [UInt8] }

    /// - Parameter failsafe: seconds a read may wait before the test fails instead of hanging.
    init(_ path: String, failsafe: Int = 30) throws {
        fd = try ControlSocket.connect(path: path)
        var timeout = timeval(tv_sec: failsafe, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }

    func send(_ bytes: [UInt8]) throws { try ControlSocket.writeAll(fd, bytes) }

    /// The next reply; nil when the filter closed the connection (end of stream or reset).
    /// - Throws: when nothing arrives within the failsafe.
    func reply() throws -> Reply? {
        let h: [UInt8]?
        do {
            h = try ControlSocket.readExactly(fd, ControlProtocol.headerSize)
        } catch let e as FilterError where e.message.contains("reset") {
            return nil
        }
        guard let h else { return nil }
        let header = try ControlProtocol.Header(parsing: h)
        guard header.magic == ControlProtocol.responseMagic, header.length <= ControlProtocol.maxResponsePayload else {
            throw CommandError(description: "a reply without the response magic: \(header)")
        }
        return Reply(header: header, body: try ControlSocket.readExactly(fd, Int(header.length)) ?? [])
    }

    static func message(_ request: UInt16, _ json: String, id: UInt32) -> [UInt8] {
        let payload = Array(json.utf8)
        return ControlProtocol.Header(magic: ControlProtocol.requestMagic, number: request, id: id,
                                      length: UInt32(payload.count)).bytes + payload
    }

    static func status(id: UInt32) -> [UInt8] { message(3, #"{"disk":"d0"}"#, id: id) }

    /// The error reply's code, or nil for a success.
    static func errorCode(_ reply: Reply) throws -> String? {
        guard reply.header.number != 0 else { return nil }
        return try JSONDecoder().decode(ControlProtocol.ErrorReply.self, from: Data(reply.body)).code
    }

    static func errorMessage(_ reply: Reply) -> String {
        (try? JSONDecoder().decode(ControlProtocol.ErrorReply.self, from: Data(reply.body)).error) ?? ""
    }
}

/// The control endpoint is served on event loops: connections cost no thread, their number is
/// capped, idle and slow ones time out, and requests may be dripped or pipelined.
@Suite(.serialized)
struct ControlEndpointTests {
    static let size: UInt64 = 4 << 20

    static func filter(_ label: String, extra: [String] = [], launcher: [String] = []) throws -> FilterProcess {
        let dir = try TemporaryDirectory(label)
        let diskPath = dir.file("disk.raw")
        try DiskModel.create(at: diskPath, size: size)
        try BlockFile(path: diskPath, mode: .readWrite).write([UInt8](repeating: 0x5a, count: 65536), at: 65536)
        return FilterProcess(directory: dir, diskPath: diskPath, extraArguments: extra, launcher: launcher)
    }

    /// The `Threads:` line of /proc/PID/status.
    static func threads(of pid: Int32) throws -> Int {
        let text = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix("Threads:") }),
              let count = Int(line.dropFirst("Threads:".count).trimmingCharacters(in: .whitespaces)) else {
            throw CommandError(description: "no Threads: line in /proc/\(pid)/status")
        }
        return count
    }

    func stillServing(_ f: FilterProcess, _ nbd: NBDClient) throws {
        #expect(f.isRunning, "the filter died: \(f.log)")
        let bytes = try nbd.read(offset: 65536, length: 4096)
        #expect(bytes == [UInt8](repeating: 0x5a, count: 4096))
    }

    /// 60 idle connections cost no thread; 200 more are refused beyond the cap with a clear
    /// error, while a client connected before keeps being served, and so does NBD.
    @Test
    func heldConnectionsCostNoThreadAndStayWithinTheCap() throws {
        let cap = 64
        try withFilter(try Self.filter("ctl-cap")) { f in
            let nbd = try NBDClient.connect(try NBDURI(parsing: f.uri))
            defer { nbd.close() }
            let honest = try f.client()
            #expect(try honest.status().first?.name == "d0")
            try stillServing(f, nbd)
            let before = try Self.threads(of: f.pid)

            var held: [RawControlConnection] = []
            for i in 0..<60 {
                let c = try RawControlConnection(f.controlPath)
                held.append(c)
                // Answered, so the filter has taken the connection on.
                try c.send(RawControlConnection.status(id: UInt32(i)))
                let r = try #require(try c.reply(), "held connection \(i) was closed")
                #expect(r.header.number == 0 && r.header.id == UInt32(i))
            }
            let with60 = try Self.threads(of: f.pid)
            #expect(with60 <= before + 4, "60 idle control connections took \(with60 - before) threads (\(before) → \(with60))")

            var served = 0, refused = 0
            for i in 0..<200 {
                let c = try RawControlConnection(f.controlPath)
                held.append(c)
                // A refused connection may already be closed: its reply is read all the same.
                try? c.send(RawControlConnection.status(id: 1000 + UInt32(i)))
                guard let r = try c.reply() else {
                    Issue.record("connection \(60 + i) was closed without a word")
                    continue
                }
                if let code = try RawControlConnection.errorCode(r) {
                    let message = RawControlConnection.errorMessage(r)
                    #expect(code == "busy" && message.contains("\(cap)"), "refusal: \(code): \(message)")
                    refused += 1
                } else {
                    served += 1
                }
            }
            #expect(1 + 60 + served <= cap, "\(1 + 60 + served) control connections were served at once; the cap is \(cap)")
            #expect(refused == 200 - served)
            #expect(try honest.status().first?.name == "d0", "the client connected before the flood is still served")
            try stillServing(f, nbd)
            #expect(f.log.contains("refused a control connection"), "no log line for the refusals: \(f.log)")

            // Once the held connections close, new clients get in again.
            held.removeAll()
            // Nothing announces that the filter noticed the closes: a new client is admitted.
            let admitted = pollUntil(timeout: 30) { (try? ControlClient(path: f.controlPath).status().first?.name) == "d0" }
            #expect(admitted, "no new control client admitted after the held connections closed")
            f.stop()
        }
    }

    /// A connection that sends nothing, or stops in the middle of a message, is closed after
    /// the idle timeout; a client that sat idle reconnects by itself for its next request.
    @Test
    func idleAndStalledConnectionsTimeOut() throws {
        try withFilter(try Self.filter("ctl-idle", extra: ["--control-idle-timeout", "2"])) { f in
            let client = try f.client()
            #expect(try client.status().first?.name == "d0")
            // Connected after the client's last reply, so timed out after it.
            let idle = try RawControlConnection(f.controlPath)
            let stalled = try RawControlConnection(f.controlPath)
            try stalled.send(Array(RawControlConnection.status(id: 5).prefix(9)))
            #expect(try idle.reply() == nil, "an idle connection was answered instead of closed")
            if let r = try stalled.reply() {
                #expect(try RawControlConnection.errorCode(r) == "bad-request", "\(RawControlConnection.errorMessage(r))")
                #expect(try stalled.reply() == nil, "the stalled connection stayed open after its error reply")
            }
            #expect(try client.status().first?.name == "d0", "the idle client did not get a new connection")
            #expect(f.log.contains("idle"), "no log line for the timeouts: \(f.log)")
            f.stop()
        }
    }

    /// A request sent one byte per write is answered; requests sent together in one write are
    /// answered each, in order, and executed in order.
    @Test
    func drippedAndPipelinedRequestsAreAnsweredInOrder() throws {
        try withFilter(try Self.filter("ctl-pipe")) { f in
            let c = try RawControlConnection(f.controlPath)
            for id: UInt32 in [1, 2] {
                for byte in RawControlConnection.status(id: id) { try c.send([byte]) }
                let r = try #require(try c.reply())
                #expect(r.header.number == 0 && r.header.id == id)
            }

            let M = RawControlConnection.self
            try c.send(M.message(4, #"{"disk":"d0"}"#, id: 10) + M.status(id: 11) + M.message(99, "{}", id: 12)
                       + M.message(6, #"{"disk":"d0","commit":false}"#, id: 13) + M.status(id: 14)
                       + M.message(6, #"{"disk":"d0","commit":false}"#, id: 15))
            var replies: [RawControlConnection.Reply] = []
            for _ in 0..<6 { replies.append(try #require(try c.reply())) }
            #expect(replies.map(\.header.id) == [10, 11, 12, 13, 14, 15])
            #expect(try replies.map { try M.errorCode($0) } == [nil, nil, "unknown-request", nil, nil, "no-checkpoint"])
            // Executed in order too: the STATUS after the CHECKPOINT sees it, the one after the RELEASE does not.
            let status = { (r: RawControlConnection.Reply) in
                try JSONDecoder().decode(ControlProtocol.StatusReply.self, from: Data(r.body)).disks.first
            }
            #expect(try status(replies[1])?.checkpoint != nil)
            #expect(try status(replies[4])?.checkpoint == nil)
            f.stop()
        }
    }

    /// ATTACH of a path that is not a usable disk file says which path and why, with a code
    /// a program can act on (not `io`).
    @Test
    func attachErrorsNameThePathAndKeepTheirMeaning() throws {
        try withFilter(try Self.filter("ctl-attach")) { f in
            let client = try f.client()
            for (path, code) in [
                (f.directory.file("nope.raw"), "not-found"),
                (f.directory.path, "invalid-argument"),
                ("/etc/passwd/x", "not-found"),
            ] {
                do {
                    _ = try client.attach(disk: "x", path: path)
                    Issue.record("ATTACH of \(path) succeeded")
                } catch let e as FilterError {
                    #expect(e.code.rawValue == code, "ATTACH of \(path): \(e.code.rawValue): \(e.message)")
                    #expect(e.message.contains(path), "the message does not name \(path): \(e.message)")
                }
            }
            #expect(try client.status().map(\.name) == ["d0"])
            f.stop()
        }
    }

    /// A file the filter may not open (mode 000, the filter running as root without
    /// CAP_DAC_OVERRIDE) is a permission error naming the file.
    @Test(.enabled(if: ExternalTool.available("setpriv")))
    func attachOfAFileTheFilterMayNotOpenIsAPermissionError() throws {
        let launcher = [ExternalTool.path("setpriv") ?? "/usr/bin/setpriv",
                        "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]
        try withFilter(try Self.filter("ctl-perm", launcher: launcher)) { f in
            let locked = f.directory.file("locked.raw")
            try DiskModel.create(at: locked, size: Self.size)
            chmod(locked, 0)
            do {
                _ = try f.client().attach(disk: "x", path: locked)
                Issue.record("ATTACH of a mode 000 file succeeded without CAP_DAC_OVERRIDE")
            } catch let e as FilterError {
                #expect(e.code.rawValue == "permission", "\(e.code.rawValue): \(e.message)")
                #expect(e.message.contains(locked), "the message does not name the file: \(e.message)")
            }
            f.stop()
        }
    }
}
