import BlockIO
import ChangeTracking
@testable import Filter
import Foundation
import Logging
@testable import NBD
import NIOCore
import Synchronization
import Testing
import TestSupport
import TrackerControl
#if canImport(Glibc)
import Glibc
#endif

/// The control server's parts without a process: the frame parser and the connection state
/// machine driven by plain calls, the server in-process with a release held mid-merge, and the
/// one mapping of errors to each wire.
@Suite(.serialized)
struct ControlServerTests {
    static func message(_ number: UInt16, _ json: String = "{}", id: UInt32, magic: UInt32 = ControlProtocol.requestMagic,
                        version: UInt16 = ControlProtocol.version, length: UInt32? = nil) -> [UInt8] {
        let payload = Array(json.utf8)
        return ControlProtocol.Header(magic: magic, version: version, number: number, id: id,
                                      length: length ?? UInt32(payload.count)).bytes + payload
    }

    /// Every frame `bytes` yields when fed `chunk` bytes at a time, then the end of the stream.
    static func frames(_ bytes: [UInt8], chunk: Int) -> [ControlFrame] {
        var parser = ControlFrameParser()
        var buffer = ByteBuffer()
        var out: [ControlFrame] = []
        var at = 0
        while at < bytes.count {
            buffer.writeBytes(bytes[at..<min(at + chunk, bytes.count)])
            at += chunk
            while let f = parser.next(&buffer) { out.append(f) }
        }
        if let f = parser.end(&buffer) { out.append(f) }
        return out
    }

    static func summary(_ frames: [ControlFrame]) -> [String] {
        frames.map {
            switch $0 {
            case .message(let h, let payload): "\(h.number)#\(h.id):\(String(decoding: payload, as: UTF8.self))"
            case .malformed(let id, let e): "\(e.code.rawValue)#\(id)"
            }
        }
    }

    @Test(arguments: [1, 2, 7, 16, 17, 1000])
    func theParserCutsMessagesWhateverTheChunks(chunk: Int) {
        let stream = Self.message(3, #"{"disk":"d0"}"#, id: 1) + Self.message(99, id: 2) + Self.message(5, id: 3)
            + Self.message(3, id: 4, magic: 0xDEAD_BEEF) + Self.message(3, id: 5)
        #expect(Self.summary(Self.frames(stream, chunk: chunk)) == [#"3#1:{"disk":"d0"}"#, "99#2:{}", "5#3:{}", "bad-request#4"])
    }

    @Test
    func theParserRefusesABadHeaderBeforeItsPayloadAndReportsACutOffMessage() {
        let oversized = Self.message(3, id: 9, length: UInt32(ControlProtocol.maxRequestPayload + 1))
        #expect(Self.summary(Self.frames(Array(oversized.prefix(16)), chunk: 16)) == ["bad-request#9"])
        #expect(Self.summary(Self.frames(Self.message(3, id: 8, version: 2), chunk: 3)) == ["unsupported-version#8"])
        #expect(Self.summary(Self.frames(Array(Self.message(3, #"{"disk":"d0"}"#, id: 7).dropLast(2)), chunk: 5)) == ["bad-request#7"])
        #expect(Self.summary(Self.frames(Array(Self.message(3, id: 7).prefix(5)), chunk: 1)) == ["bad-request#0"])
        #expect(Self.summary(Self.frames([], chunk: 1)).isEmpty)
    }

    static func header(_ number: UInt16, id: UInt32) -> ControlProtocol.Header {
        ControlProtocol.Header(magic: ControlProtocol.requestMagic, number: number, id: id, length: 0)
    }

    static func replyID(_ action: ControlConnection.Action?) -> UInt32? {
        switch action {
        case .reply(let bytes), .replyAndClose(let bytes): try? ControlProtocol.Header(parsing: Array(bytes.prefix(16))).id
        default: nil
        }
    }

    @Test
    func aConnectionRunsOneRequestAtATimeAndAnswersInOrder() {
        var c = ControlConnection()
        c.received(.message(Self.header(3, id: 1), payload: []))
        c.received(.message(Self.header(99, id: 2), payload: []))
        c.received(.message(Self.header(4, id: 3), payload: []))
        #expect(c.next(writable: true) == .run(.status, id: 1, payload: []))
        #expect(c.next(writable: true) == nil, "a second request started while the first runs")
        c.finished()
        #expect(Self.replyID(c.next(writable: true)) == 2, "the unknown request is answered in its turn")
        #expect(c.next(writable: false) == nil, "a request started while the client does not read its replies")
        #expect(c.next(writable: true) == .run(.checkpoint, id: 3, payload: []))
        c.received(.malformed(id: 4, FilterError(.badRequest, "garbage")))
        c.received(.message(Self.header(3, id: 5), payload: []))
        #expect(c.next(writable: true) == nil)
        c.finished()
        guard case .replyAndClose = c.next(writable: true) else { Issue.record("a malformed message must end the connection"); return }
        #expect(c.next(writable: true) == nil, "anything after the malformed message was taken")
        #expect(!c.wantsInput)
    }

    @Test
    func aConnectionStopsReadingWhenItsQueueIsFullAndClosesAfterTheLastReply() {
        var c = ControlConnection()
        for i in 0..<ControlConnection.maximumQueued { c.received(.message(Self.header(3, id: UInt32(i)), payload: [])) }
        #expect(!c.wantsInput)
        #expect(c.next(writable: true) == .run(.status, id: 0, payload: []))
        #expect(c.wantsInput)
        c.endOfInput()
        #expect(!c.wantsInput)
        c.drain()
        c.finished()
        for i in 1..<ControlConnection.maximumQueued { #expect(Self.replyID(c.next(writable: true)) == UInt32(i)) }
        #expect(c.next(writable: true) == .close)
        #expect(c.next(writable: true) == nil)
    }

    // MARK: - The server in-process

    struct Setup {
        let dir: TemporaryDirectory
        let service: FilterService
        let disk: FilteredDisk
        var socket: String { dir.file("ctl.sock") }
    }

    static func setUp(_ label: String) throws -> Setup {
        let dir = try TemporaryDirectory(label)
        _ = try DiskImage.createRaw(path: dir.file("disk.raw"), size: 16 << 20)
        let service = try FilterService(stateDirectory: dir.file("state"), configuration: TrackerConfiguration(),
                                        logger: Logger(label: "test"))
        let disk = try service.attach(name: "d0", path: dir.file("disk.raw"))
        return Setup(dir: dir, service: service, disk: disk)
    }

    /// A checkpoint with written blocks, and a hook that holds its release before the first
    /// merge batch until `proceed` is signalled (`merging` says it got there).
    static func holdTheNextRelease(_ disk: FilteredDisk) throws -> (merging: DispatchSemaphore, proceed: DispatchSemaphore) {
        _ = try disk.checkpoint()
        try [UInt8](repeating: 0x42, count: 65536).withUnsafeBytes { try disk.write(offset: 0, bytes: $0, fua: false) }
        let merging = DispatchSemaphore(value: 0), proceed = DispatchSemaphore(value: 0)
        let first = Atomic<Bool>(true)
        disk.hooks.withLock {
            $0.beforeMergeBatch = {
                if first.exchange(false, ordering: .relaxed) { merging.signal(); proceed.wait() }
            }
        }
        return (merging, proceed)
    }

    /// Waits for `semaphore`; after a minute (a broken server) the test fails instead of hanging.
    static func wait(_ semaphore: DispatchSemaphore, for what: String) throws {
        if semaphore.wait(timeout: .now() + 60) == .timedOut { throw CommandError(description: "\(what) never happened") }
    }

    /// Runs `body` on a thread of its own; the semaphore is signalled when it is done.
    static func background(_ body: @escaping @Sendable () -> Void) -> DispatchSemaphore {
        let done = DispatchSemaphore(value: 0)
        Thread { body(); done.signal() }.start()
        return done
    }

    /// With every thread for blocking requests taken (a RELEASE merging, two CHECKPOINTs
    /// waiting for it), STATUS and QUERY_CHANGES on other connections are still answered.
    @Test
    func checkpointsWaitingForAReleaseDoNotHoldUpStatus() async throws {
        let s = try Self.setUp("ctl-wait")
        defer { s.service.closeAll() }
        let (merging, proceed) = try Self.holdTheNextRelease(s.disk)
        let started = DispatchSemaphore(value: 0)
        let server = ControlServer(path: s.socket, logger: Logger(label: "test"), threads: 3) { request, payload in
            if request == .checkpoint || request == .release { started.signal() }
            return try s.service.handle(request, payload)
        }
        try await server.start()
        do {
            try Self.whileTheReleaseIsHeld(s, merging: merging, proceed: proceed, started: started)
        } catch {
            proceed.signal()  // so the merge ends and the disk can close
            await server.stop()
            throw error
        }
        await server.stop()
    }

    static func whileTheReleaseIsHeld(_ s: Setup, merging: DispatchSemaphore, proceed: DispatchSemaphore,
                                      started: DispatchSemaphore) throws {
        let outcomes = Mutex<[String]>([])
        let record = { @Sendable (label: String, body: () throws -> Void) in
            do { try body(); outcomes.withLock { $0.append("\(label): ok") } } catch let e as FilterError {
                outcomes.withLock { $0.append("\(label): \(e.code.rawValue)") }
            } catch { outcomes.withLock { $0.append("\(label): \(error)") } }
        }
        let path = s.socket
        let release = background { record("release") { _ = try ControlClient(path: path).release(disk: "d0", commit: true) } }
        try wait(merging, for: "the release reaching its merge")
        let checkpoints = (0..<2).map { _ in background { record("checkpoint") { _ = try ControlClient(path: path).checkpoint(disk: "d0") } } }
        for _ in 0..<3 { try wait(started, for: "a blocking request starting") }  // all three threads are taken now

        // A raw connection: its 30 s failsafe turns a STATUS stuck behind them into a failure, not a hang.
        let client = try RawControlConnection(path)
        try client.send(message(3, #"{"disk":"d0"}"#, id: 1))
        let reply = try #require(try client.reply())
        let status = try #require(try JSONDecoder().decode(ControlProtocol.StatusReply.self, from: Data(reply.body)).disks.first)
        #expect(status.checkpoint != nil, "the release is still merging, so the checkpoint is still there")
        try client.send(message(5, #"{"disk":"d0","since":"\#(status.changeID)"}"#, id: 2))
        #expect(try client.reply().map { try RawControlConnection.errorCode($0) } == .some(nil), "QUERY_CHANGES was not answered")
        #expect(outcomes.withLock { $0 }.isEmpty, "a blocking request finished before the release was let go: \(outcomes.withLock { $0 })")

        proceed.signal()
        try wait(release, for: "the release finishing")
        for c in checkpoints { try wait(c, for: "a checkpoint finishing") }
        #expect(outcomes.withLock { $0 }.sorted() == ["checkpoint: checkpoint-open", "checkpoint: ok", "release: ok"])
    }

    /// Stopping the server lets a running request finish and answers it, answers the request
    /// queued behind it `busy`, then closes and removes the socket file.
    @Test
    func stoppingLetsTheRunningRequestFinish() async throws {
        let s = try Self.setUp("ctl-stop")
        defer { s.service.closeAll() }
        let (merging, proceed) = try Self.holdTheNextRelease(s.disk)
        let server = ControlServer(path: s.socket, logger: Logger(label: "test")) { try s.service.handle($0, $1) }
        try await server.start()
        let connection = try RawControlConnection(s.socket)
        try connection.send(Self.message(6, #"{"disk":"d0","commit":true}"#, id: 1) + Self.message(3, id: 2))
        do { try Self.wait(merging, for: "the release reaching its merge") } catch {
            await server.stop()
            throw error
        }
        let stopping = Task { await server.stop() }
        // The socket file goes once every connection was told to drain, before the server
        // waits for them: from then on the queued STATUS cannot start.
        #expect(await FileWatch.waitInBackground(for: s.socket, toExist: false), "the socket file stayed")
        proceed.signal()
        await stopping.value
        let replies = try Self.readAll(connection)
        #expect(replies.map(\.header.id) == [1, 2])
        #expect(try replies.map { try RawControlConnection.errorCode($0) } == [nil, "busy"])
        #expect(!s.disk.hasCheckpoint, "the release did not finish")
    }

    static func readAll(_ c: RawControlConnection) throws -> [RawControlConnection.Reply] {
        var out: [RawControlConnection.Reply] = []
        while let r = try c.reply() { out.append(r) }
        return out
    }

    // MARK: - One mapping to each wire

    struct Mapping: Sendable, CustomTestStringConvertible {
        var error: any Error
        var control: String
        var errno: UInt32
        var testDescription: String { "\(type(of: error)) \(error)" }
    }

    static let mappings: [Mapping] = {
        let full = BlockIOError(.noSpace, "/s/log: no space left on device while trying to write; free space and retry")
        var held: (any Error)?
        let dir = try? TemporaryDirectory("ctl-held")
        if let dir {
            let first = try? FileLock.acquire(dir.file("l"), create: true)
            do { _ = try FileLock.acquire(dir.file("l")) } catch { held = error }
            withExtendedLifetime(first) {}
        }
        return [
            Mapping(error: FilterError(.invalidArgument, "bad"), control: "invalid-argument", errno: 22),
            Mapping(error: FilterError(.busy, "busy"), control: "busy", errno: 5),
            Mapping(error: FilterError(.noCheckpoint, "released"), control: "no-checkpoint", errno: 5),
            Mapping(error: FilterError(.damaged, "overlay"), control: "damaged", errno: 5),
            Mapping(error: FilterError(.io, "wrapped", cause: full), control: "io", errno: 28),
            Mapping(error: TrackerError(.fullReadRequired, "full"), control: "full-read-required", errno: 5),
            Mapping(error: TrackerError(.invalidArgument, "range"), control: "invalid-argument", errno: 22),
            Mapping(error: TrackerError(.checkpointOpen, "open"), control: "checkpoint-open", errno: 5),
            Mapping(error: TrackerError(.noCheckpoint, "none"), control: "no-checkpoint", errno: 5),
            Mapping(error: TrackerError(.closed, "closed"), control: "io", errno: 5),
            Mapping(error: TrackerError(.io, "activity log", cause: full), control: "io", errno: 28),
            Mapping(error: TrackerError(.io, "activity log", cause: BlockIOError(.permissionDenied, "x")), control: "io", errno: 5),
            Mapping(error: BlockIOError(.notFound, "/x: no such file"), control: "not-found", errno: 5),
            Mapping(error: BlockIOError(.permissionDenied, "/x: permission denied"), control: "permission", errno: 1),
            Mapping(error: full, control: "io", errno: 28),
            Mapping(error: BlockIOError(.invalidArgument, "/x: is a directory"), control: "invalid-argument", errno: 22),
            Mapping(error: BlockIOError(.corrupt, "/x: truncated"), control: "damaged", errno: 5),
            Mapping(error: BlockIOError(.shortRead, "/x: short"), control: "io", errno: 5),
            Mapping(error: BlockIOError(.io, "/x: EIO"), control: "io", errno: 5),
            Mapping(error: held ?? FilterError(.busy, "no lock"), control: "busy", errno: 5),
            Mapping(error: FilteredDisk.DiskFileHeld(path: "/x", pid: 1), control: "busy", errno: 5),
            Mapping(error: NBDError(.permission, "read-only"), control: "permission", errno: 1),
            Mapping(error: NBDError(.invalid, "context"), control: "invalid-argument", errno: 22),
            Mapping(error: NBDError(.noSpace, "full"), control: "io", errno: 28),
            Mapping(error: NBDError(.shutdown, "going"), control: "busy", errno: 108),
            Mapping(error: CocoaError(.fileReadCorruptFile), control: "io", errno: 5),
        ]
    }()

    @Test(arguments: mappings)
    func everyErrorHasOneMeaningOnEachWire(_ m: Mapping) {
        let control = WireErrors.control(m.error)
        #expect(control.code.rawValue == m.control)
        #expect(ControlProtocol.statusNumber(control.code) == ControlProtocol.statusNumber(FilterError.Code(rawValue: m.control)))
        #expect(!control.message.isEmpty && control.message == "\(m.error)", "the message is the error's own: \(control.message)")
        if !(m.error is FilterError) {
            #expect(control.cause.map { "\($0)" } == "\(m.error)", "the original error is kept as the cause")
        }
        let nbd = WireErrors.nbd(m.error)
        #expect(nbd.wireErrno == m.errno, "\(nbd.code)")
        #expect(!nbd.message.isEmpty)
    }
}
