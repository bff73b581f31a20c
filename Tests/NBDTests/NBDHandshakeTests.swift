import NIOCore
@testable import NBD
import Testing

/// The handshake state machine driven with plain calls, no sockets.
struct NBDHandshakeTests {
    let provider = NBDExportSet([
        MemoryExport(name: "disk", size: 1 << 20, contexts: ["base:allocation", "qemu:dirty-bitmap:active", "qemu:dirty-bitmap:frozen"]),
        MemoryExport(name: "other", size: 4096, readOnly: true, contexts: ["base:allocation"]),
    ])

    /// Runs the machine over `input`, collecting actions until it needs more data.
    private func drive(_ input: [UInt8], machine: inout NBDHandshake) -> (actions: [NBDHandshake.Action], rest: ByteBuffer) {
        var buffer = ByteBuffer(bytes: input)
        var actions: [NBDHandshake.Action] = []
        while let a = machine.process(&buffer) {
            actions.append(a)
            if case .send = a { continue }
            break
        }
        return (actions, buffer)
    }

    private func replies(_ actions: [NBDHandshake.Action]) -> [OptionReply] {
        actions.flatMap { a -> [OptionReply] in
            switch a {
            case .send(let b), .sendAndClose(let b), .startTransmission(let b, _): return OptionReply.parseAll(b) ?? []
            case .close: return []
            }
        }
    }

    @Test func greetingIsFixedNewstyleWithNoZeroes() {
        let g = NBDHandshake.greeting()
        #expect(Array(g.readableBytesView) == Array("NBDMAGICIHAVEOPT".utf8) + [0, 3])
    }

    @Test func unknownClientFlagsClose() {
        var m = NBDHandshake(provider: provider)
        let (actions, _) = drive(ClientMessage.flags(0x80), machine: &m)
        guard case .close(let e)? = actions.first else { Issue.record("expected close, got \(actions)"); return }
        #expect(e.code == .protocolViolation)
    }

    @Test func goSendsExportInfoThenAckAndStartsTransmission() throws {
        var m = NBDHandshake(provider: provider)
        let (actions, rest) = drive(ClientMessage.flags() + ClientMessage.option(7, ClientMessage.go("disk")) + [9, 9], machine: &m)
        guard case .startTransmission(let reply, let session)? = actions.last else { Issue.record("\(actions)"); return }
        let r = try #require(OptionReply.parseAll(reply))
        #expect(r.map(\.type) == [3, 1])
        // NBD_INFO_EXPORT: type 0, size, flags HAS_FLAGS|SEND_FLUSH|SEND_FUA|SEND_TRIM|SEND_WRITE_ZEROES.
        var d = ByteBuffer(bytes: r[0].data)
        let readd = d.readMultipleIntegers(as: (UInt16, UInt64, UInt16).self)
        let (infoType, size, flags) = try #require(readd)
        #expect(infoType == 0 && size == 1 << 20 && flags == 0b110_1101)
        #expect(session.info.name == "disk" && !session.structuredReplies && session.contexts.isEmpty)
        #expect(Array(rest.readableBytesView) == [9, 9], "bytes after GO belong to transmission")
    }

    @Test func readOnlyExportAdvertisesReadOnlyWithoutWriteFlags() throws {
        var m = NBDHandshake(provider: provider)
        let (actions, _) = drive(ClientMessage.flags() + ClientMessage.option(6, ClientMessage.go("other")), machine: &m)
        let r = replies(actions)
        var d = ByteBuffer(bytes: try #require(r.first).data)
        let readd = d.readMultipleIntegers(as: (UInt16, UInt64, UInt16).self)
        let (_, _, flags) = try #require(readd)
        #expect(flags == 0b0000_1111, "HAS_FLAGS|READ_ONLY|SEND_FLUSH|SEND_FUA, no TRIM/WRITE_ZEROES")
    }

    @Test func infoAnswersRequestedInformationAndKeepsNegotiating() throws {
        var m = NBDHandshake(provider: provider)
        let (actions, _) = drive(ClientMessage.flags() + ClientMessage.option(6, ClientMessage.go("disk", info: [1, 2, 3, 77])), machine: &m)
        guard case .send? = actions.first else { Issue.record("INFO must not start transmission: \(actions)"); return }
        let r = replies(actions)
        #expect(r.map(\.type) == [3, 3, 3, 3, 1])
        let types = r.dropLast().map { UInt16($0.data[0]) << 8 | UInt16($0.data[1]) }
        #expect(types == [1, 2, 3, 0])
        #expect(String(decoding: r[0].data.dropFirst(2), as: UTF8.self) == "disk")
        #expect(String(decoding: r[1].data.dropFirst(2), as: UTF8.self) == "memory disk")
        var bs = ByteBuffer(bytes: r[2].data)
        let readbs = bs.readMultipleIntegers(as: (UInt16, UInt32, UInt32, UInt32).self)
        let (_, minimum, preferred, maximum) = try #require(readbs)
        #expect(minimum == 1 && preferred == 4096 && maximum == 32 << 20)
        // Still negotiating: a GO now works.
        let (more, _) = drive(ClientMessage.option(7, ClientMessage.go("disk")), machine: &m)
        guard case .startTransmission? = more.last else { Issue.record("\(more)"); return }
    }

    @Test func unknownExportGetsErrUnknownAndNegotiationContinues() {
        var m = NBDHandshake(provider: provider)
        let (actions, _) = drive(ClientMessage.flags() + ClientMessage.option(7, ClientMessage.go("nope"))
                                 + ClientMessage.option(7, ClientMessage.go("")), machine: &m)
        #expect(replies([actions[0]]).map(\.type) == [0x8000_0006])
        guard case .startTransmission(_, let s)? = actions.last else { Issue.record("\(actions)"); return }
        #expect(s.info.name == "disk", "\"\" is the default export: the first one")
    }

    @Test func listReportsEveryExportThenAck() {
        var m = NBDHandshake(provider: provider)
        let r = replies(drive(ClientMessage.flags() + ClientMessage.option(3), machine: &m).actions)
        #expect(r.map(\.type) == [2, 2, 1])
        #expect(Array(r[0].data.prefix(8)) == [0, 0, 0, 4] + Array("disk".utf8))
        #expect(Array(r[1].data.prefix(9)) == [0, 0, 0, 5] + Array("other".utf8))
    }

    @Test func listWithDataIsInvalid() {
        var m = NBDHandshake(provider: provider)
        let r = replies(drive(ClientMessage.flags() + ClientMessage.option(3, [1]), machine: &m).actions)
        #expect(r.map(\.type) == [0x8000_0003])
    }

    @Test func abortAcksAndCloses() {
        var m = NBDHandshake(provider: provider)
        let (actions, _) = drive(ClientMessage.flags() + ClientMessage.option(2), machine: &m)
        guard case .sendAndClose(let b)? = actions.first else { Issue.record("\(actions)"); return }
        #expect(OptionReply.parseAll(b)?.map(\.type) == [1])
    }

    @Test(arguments: [UInt32(4), 5, 11, 12, 99, 0xFFFF_FFFF])
    func unsupportedOptionsGetErrUnsup(option: UInt32) {
        var m = NBDHandshake(provider: provider)
        let r = replies(drive(ClientMessage.flags() + ClientMessage.option(option, [1, 2, 3]), machine: &m).actions)
        #expect(r == [OptionReply(option: option, type: 0x8000_0001, data: r.first?.data ?? [])])
    }

    @Test func malformedGoIsInvalid() {
        var m = NBDHandshake(provider: provider)
        // Name length says 10, only 4 bytes follow.
        let r = replies(drive(ClientMessage.flags() + ClientMessage.option(7, [0, 0, 0, 10, 1, 2, 3, 4]), machine: &m).actions)
        #expect(r.map(\.type) == [0x8000_0003])
    }

    @Test func exportNameSendsSizeFlagsAndZeroesUnlessNoZeroes() throws {
        for (clientFlags, expectedLength) in [(UInt32(1), 134), (UInt32(3), 10)] {
            var m = NBDHandshake(provider: provider)
            let (actions, _) = drive(ClientMessage.flags(clientFlags) + ClientMessage.option(1, Array("disk".utf8)), machine: &m)
            guard case .startTransmission(let b, _)? = actions.last else { Issue.record("\(actions)"); return }
            #expect(b.readableBytes == expectedLength)
            #expect(b.getInteger(at: b.readerIndex, as: UInt64.self) == 1 << 20)
        }
        var m = NBDHandshake(provider: provider)
        let (actions, _) = drive(ClientMessage.flags() + ClientMessage.option(1, Array("missing".utf8)), machine: &m)
        guard case .close(let e)? = actions.last else { Issue.record("\(actions)"); return }
        #expect(e.code == .refused)
    }

    @Test func structuredReplyTwiceIsInvalid() {
        var m = NBDHandshake(provider: provider)
        let r = replies(drive(ClientMessage.flags() + ClientMessage.option(8) + ClientMessage.option(8), machine: &m).actions)
        #expect(r.map(\.type) == [1, 0x8000_0003])
    }

    private func listMeta(_ queries: [String], export: String = "disk") -> [String] {
        var m = NBDHandshake(provider: provider)
        let r = replies(drive(ClientMessage.flags() + ClientMessage.option(9, ClientMessage.meta(export, queries)), machine: &m).actions)
        guard r.last?.type == 1 else { return ["<\(r.last?.type ?? 0)>"] }
        return r.dropLast().map { String(decoding: $0.data.dropFirst(4), as: UTF8.self) }
    }

    @Test func listMetaContextQueries() {
        let all = ["base:allocation", "qemu:dirty-bitmap:active", "qemu:dirty-bitmap:frozen"]
        #expect(listMeta([]) == all)
        #expect(listMeta(["base:"]) == ["base:allocation"])
        #expect(listMeta(["qemu:"]) == Array(all.dropFirst()))
        #expect(listMeta(["qemu:dirty-bitmap:"]) == Array(all.dropFirst()))
        #expect(listMeta(["qemu:dirty-bitmap:frozen"]) == ["qemu:dirty-bitmap:frozen"])
        #expect(listMeta(["x-unknown:thing", "qemu:dirty-bitmap:none"]) == [])
        #expect(listMeta(["base:allocation", "base:"]) == ["base:allocation"], "a context matched twice is listed once")
        #expect(listMeta([], export: "nope") == ["<\(0x8000_0006)>"])
    }

    @Test func setMetaContextNeedsStructuredRepliesAndSelectsExactNames() throws {
        var m = NBDHandshake(provider: provider)
        let set = ClientMessage.option(10, ClientMessage.meta("disk", ["qemu:dirty-bitmap:frozen", "qemu:", "base:allocation"]))
        let early = replies(drive(ClientMessage.flags() + set, machine: &m).actions)
        #expect(early.map(\.type) == [0x8000_0003])
        let (actions, _) = drive(ClientMessage.option(8) + set + ClientMessage.option(7, ClientMessage.go("disk")), machine: &m)
        guard case .startTransmission(_, let session)? = actions.last else { Issue.record("\(actions)"); return }
        #expect(session.structuredReplies)
        // "qemu:" is a LIST wildcard only; SET selects exact names, in ID order.
        #expect(session.contexts.map(\.name) == ["base:allocation", "qemu:dirty-bitmap:frozen"])
        #expect(session.contexts.map(\.id) == [0, 2])
    }

    @Test func metaContextSelectionForTheDefaultExportNameCarriesOver() {
        var m = NBDHandshake(provider: provider)
        let (actions, _) = drive(ClientMessage.flags() + ClientMessage.option(8)
                                 + ClientMessage.option(10, ClientMessage.meta("", ["qemu:dirty-bitmap:active"]))
                                 + ClientMessage.option(7, ClientMessage.go("")), machine: &m)
        guard case .startTransmission(_, let session)? = actions.last else { Issue.record("\(actions)"); return }
        #expect(session.info.name == "disk")
        #expect(session.contexts.map(\.name) == ["qemu:dirty-bitmap:active"])
    }

    @Test func metaContextSelectionIsDroppedForAnotherExport() {
        var m = NBDHandshake(provider: provider)
        let (actions, _) = drive(ClientMessage.flags() + ClientMessage.option(8)
                                 + ClientMessage.option(10, ClientMessage.meta("disk", ["base:allocation"]))
                                 + ClientMessage.option(7, ClientMessage.go("other")), machine: &m)
        guard case .startTransmission(_, let session)? = actions.last else { Issue.record("\(actions)"); return }
        #expect(session.contexts.isEmpty)
    }

    @Test func oversizedOptionIsSkippedAndRefusedThenNegotiationContinues() {
        var m = NBDHandshake(provider: provider)
        let big = ClientMessage.option(9, [UInt8](repeating: 7, count: 70_000))
        var input = ClientMessage.flags() + big + ClientMessage.option(3)
        var actions: [NBDHandshake.Action] = []
        // Fed in pieces, so the discarding state is crossed mid-payload.
        while !input.isEmpty {
            let piece = Array(input.prefix(1000))
            input.removeFirst(piece.count)
            var b = ByteBuffer(bytes: piece)
            while let a = m.process(&b) { actions.append(a) }
            #expect(b.readableBytes == 0 || !actions.isEmpty)
            if b.readableBytes > 0 { input = Array(b.readableBytesView) + input }
        }
        #expect(replies(actions).map(\.type) == [0x8000_0009, 2, 2, 1])
    }

    @Test func wrongOptionMagicCloses() {
        var m = NBDHandshake(provider: provider)
        var bad = ClientMessage.option(7, ClientMessage.go("disk"))
        bad[0] ^= 0xFF
        let (actions, _) = drive(ClientMessage.flags() + bad, machine: &m)
        guard case .close(let e)? = actions.last else { Issue.record("\(actions)"); return }
        #expect(e.code == .protocolViolation)
    }

    @Test func byteByByteGivesTheSameRepliesAsOneBuffer() {
        let input = ClientMessage.flags() + ClientMessage.option(8) + ClientMessage.option(3)
            + ClientMessage.option(9, ClientMessage.meta("disk", []))
            + ClientMessage.option(10, ClientMessage.meta("disk", ["base:allocation"]))
            + ClientMessage.option(99) + ClientMessage.option(7, ClientMessage.go("disk", info: [3]))
        var whole = NBDHandshake(provider: provider)
        var all: [NBDHandshake.Action] = []
        var b = ByteBuffer(bytes: input)
        while let a = whole.process(&b) { all.append(a) }
        var drip = NBDHandshake(provider: provider)
        var dripped: [NBDHandshake.Action] = []
        var pending = ByteBuffer(bytes: [])
        for byte in input {
            pending.writeInteger(byte)
            while let a = drip.process(&pending) { dripped.append(a) }
        }
        #expect(replies(all) == replies(dripped))
        #expect(replies(all).count == 1 + 3 + 4 + 2 + 1 + 3)
        guard case .startTransmission(_, let s)? = dripped.last else { Issue.record("\(dripped)"); return }
        #expect(s.contexts.map(\.name) == ["base:allocation"])
    }
}
