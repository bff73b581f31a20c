import Foundation
import NIOCore
@testable import NBD
import Testing
import TestSupport

/// Random and mutated input to the parsers: they never trap, always end in replies that are
/// well formed, a request, "need more data", or a clean error.
struct NBDFuzzTests {
    static let iterations = ProcessInfo.processInfo.environment["TESSERA_LONG"] == "1" ? 200_000 : 3_000

    let provider = NBDExportSet([
        MemoryExport(name: "disk", size: 1 << 20, contexts: ["base:allocation", "qemu:dirty-bitmap:a"]),
        MemoryExport(name: "ro", size: 8192, readOnly: true),
    ])

    /// Feeds `input` in random pieces; checks every reply parses and the machine stops after a
    /// terminal action. Returns the actions.
    @discardableResult
    private func feed(_ input: [UInt8], rng: inout SeededGenerator, seed: UInt64) -> [NBDHandshake.Action] {
        var m = NBDHandshake(provider: provider)
        var pending = ByteBuffer(bytes: [])
        var actions: [NBDHandshake.Action] = []
        var i = 0
        var finished = false
        while i < input.count && !finished {
            let n = min(Int(rng.next() % 64) + 1, input.count - i)
            pending.writeBytes(input[i..<i + n])
            i += n
            var steps = 0
            while let a = m.process(&pending) {
                steps += 1
                actions.append(a)
                switch a {
                case .send(let b):
                    #expect(OptionReply.parseAll(b) != nil, "seed \(seed): malformed reply")
                case .sendAndClose, .close, .startTransmission:
                    finished = true
                }
                if finished || steps > 10_000 { break }
            }
            #expect(steps <= 10_000, "seed \(seed): the machine did not stop")
        }
        if finished {
            var after = ByteBuffer(bytes: [1, 2, 3])
            #expect(m.process(&after) == nil, "seed \(seed): actions after the end")
        }
        return actions
    }

    private func validHandshake(_ rng: inout SeededGenerator) -> [UInt8] {
        var out = ClientMessage.flags(UInt32(rng.next() % 4))
        let options: [[UInt8]] = [
            ClientMessage.option(8),
            ClientMessage.option(3),
            ClientMessage.option(9, ClientMessage.meta("disk", ["qemu:", "base:allocation"])),
            ClientMessage.option(10, ClientMessage.meta("disk", ["qemu:dirty-bitmap:a"])),
            ClientMessage.option(6, ClientMessage.go("disk", info: [0, 1, 2, 3])),
            ClientMessage.option(99, [1, 2]),
        ]
        for _ in 0..<(rng.next() % 6) { out += options[Int(rng.next() % UInt64(options.count))] }
        out += rng.next() % 2 == 0 ? ClientMessage.option(7, ClientMessage.go("disk")) : ClientMessage.option(1, Array("disk".utf8))
        return out
    }

    @Test func randomBytesIntoTheHandshake() {
        var rng = SeededGenerator(seed: 0xF00D)
        for i in 0..<Self.iterations {
            let seed = UInt64(i)
            var local = SeededGenerator(seed: seed ^ rng.next())
            // Half the time, valid flags and option magic first, so the fuzz reaches option parsing.
            var input = local.next() % 2 == 0 ? ClientMessage.flags(3) + Array(ClientMessage.option(UInt32(local.next() % 12)).prefix(12)) : []
            input += local.bytes(Int(local.next() % 300))
            feed(input, rng: &local, seed: seed)
        }
    }

    @Test func mutatedHandshakes() {
        var rng = SeededGenerator(seed: 0xBEEF)
        var started = 0
        for i in 0..<Self.iterations {
            var input = validHandshake(&rng)
            switch rng.next() % 4 {
            case 0: // flip bytes
                for _ in 0..<(rng.next() % 4 + 1) { input[Int(rng.next() % UInt64(input.count))] ^= UInt8(truncatingIfNeeded: rng.next() | 1) }
            case 1: // truncate
                input = Array(input.prefix(Int(rng.next() % UInt64(input.count))))
            case 2: // insert random bytes
                let at = Int(rng.next() % UInt64(input.count))
                input.insert(contentsOf: rng.bytes(Int(rng.next() % 40)), at: at)
            default: // unchanged: must reach transmission
                break
            }
            let actions = feed(input, rng: &rng, seed: UInt64(i))
            if case .startTransmission? = actions.last { started += 1 }
        }
        #expect(started >= Self.iterations / 4, "unmutated handshakes must all succeed")
    }

    @Test func randomOptionPayloadsGetExactlyOneFinalReply() {
        var rng = SeededGenerator(seed: 0xCAFE)
        for i in 0..<Self.iterations {
            let option = UInt32(rng.next() % 12) + 1
            guard option != 1, option != 2, option != 7 else { continue } // these end the handshake
            var payload = rng.bytes(Int(rng.next() % 64))
            if rng.next() % 2 == 0 && payload.count >= 4 {
                // Plausible lengths so the parser goes deeper.
                payload.replaceSubrange(0..<4, with: ClientMessage.string("disk").prefix(4))
            }
            let actions = feed(ClientMessage.flags() + ClientMessage.option(8) + ClientMessage.option(option, payload),
                               rng: &rng, seed: UInt64(i))
            guard case .send(let b)? = actions.last, let replies = OptionReply.parseAll(b), let last = replies.last else {
                Issue.record("seed \(i): option \(option) got no reply: \(actions)")
                continue
            }
            #expect(last.option == option)
            #expect(last.type == 1 || last.type & 0x8000_0000 != 0, "seed \(i): the last reply must be ACK or an error")
        }
    }

    @Test func randomRequestsIntoTheParserAndTheServerLogic() {
        var rng = SeededGenerator(seed: 0xABCD)
        let export = MemoryExport(name: "disk", size: 1 << 20, contexts: ["base:allocation"])
        let session = NBDSession(export: export, info: export.info, structuredReplies: true, contexts: [(0, "base:allocation")])
        var served = 0
        for i in 0..<Self.iterations {
            var parser = NBDRequestParser(maximumPayload: 1 << 16)
            var bytes: [UInt8]
            if rng.next() % 3 == 0 {
                bytes = rng.bytes(Int(rng.next() % 200))
            } else {
                // Valid magic, random but often plausible fields.
                let type = UInt16(rng.next() % 10)
                let length = rng.next() % 2 == 0 ? UInt32(rng.next() % 70_000) : UInt32(truncatingIfNeeded: rng.next())
                let offset = rng.next() % 2 == 0 ? rng.next() % (1 << 21) : rng.next()
                let payload = type == 1 && length <= 1 << 16 ? rng.bytes(Int(length)) : nil
                bytes = ClientMessage.request(type: type, flags: UInt16(truncatingIfNeeded: rng.next() % 64), cookie: UInt64(i),
                                              offset: offset, length: length, payload: payload)
            }
            var b = ByteBuffer(bytes: bytes)
            for _ in 0..<100 {
                do {
                    let r = try parser.next(&b)
                    guard case .request(let req) = r else { break }
                    guard NBDTransmission.validate(req, session: session) == nil else { continue }
                    let reply = NBDTransmission.perform(req, session: session, allocator: .init())
                    served += 1
                    let magic = reply.getInteger(at: reply.readerIndex, as: UInt32.self)
                    #expect(magic == 0x6744_6698 || magic == 0x668E_33EF, "seed \(i)")
                } catch {
                    #expect(error.code == .protocolViolation)
                    break
                }
            }
        }
        #expect(served > 0, "some fuzzed requests must be valid and served")
    }
}
