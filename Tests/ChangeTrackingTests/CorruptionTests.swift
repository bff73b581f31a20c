import BlockIO
import ChangeTracking
import Foundation
import TestSupport
import Testing
import TrackerControl

/// Damaged state files and logs: a new generation (old change IDs need a full read), or for a
/// torn tail log record a replay that still covers everything before it. Never a quiet loss.
struct CorruptionTests {
    let g: UInt64 = 65536
    let size: UInt64 = 256 * 65536 + 777
    let configuration = TrackerConfiguration(granularity: 65536, activityLogExtentSize: 1 << 20, activityLogSlots: 32)

    func cleanState() throws -> (dir: TemporaryDirectory, id: ChangeID, bytes: [UInt8]) {
        let dir = try TemporaryDirectory("tracker-corrupt")
        let t = try ChangeTracker.open(stateDirectory: dir.path, diskSize: size, identity: nil, configuration: configuration)
        try t.markWrite(ByteRange(offset: 7 * g, length: 3))
        let id = try t.checkpoint().changeID
        try t.markWrite(ByteRange(offset: 20 * g, length: 3)) // held by the open checkpoint
        try t.close(identity: nil)
        return (dir, id, Array(try Data(contentsOf: URL(fileURLWithPath: dir.file("tracker.state")))))
    }

    /// Opens over `bytes` as the state file and expects a new generation.
    func expectNewGeneration(_ dir: TemporaryDirectory, _ bytes: [UInt8], old id: ChangeID, _ what: String) throws {
        try Data(bytes).write(to: URL(fileURLWithPath: dir.file("tracker.state")))
        let t = try ChangeTracker.open(stateDirectory: dir.path, diskSize: size, identity: nil, configuration: configuration)
        let status = t.status()
        #expect(status.generation != id.generation, "\(what): must start a new generation")
        #expect(status.openReport.contains { $0.contains("new generation") }, "\(what): the open report says why: \(status.openReport)")
        expectTrackerError(.fullReadRequired, "\(what)") { try t.changes(since: id) }
        try t.close(identity: nil)
    }

    @Test func damagedStateFileStartsANewGeneration() throws {
        let (dir, id, good) = try cleanState()
        var cases: [(String, [UInt8])] = []
        for i in 0..<8 { var b = good; b[i] ^= 0x20; cases.append(("magic byte \(i)", b)) }
        var version = good; version[8] = 2; cases.append(("version", version))
        var checksum = good; checksum[good.count - 1] ^= 1; cases.append(("checksum", checksum))
        for cut in [0, 1, 8, 100, 167, 168, good.count / 2, good.count - 9, good.count - 1] {
            cases.append(("truncated to \(cut)", Array(good[0..<cut])))
        }
        cases.append(("extended", good + [0]))
        var rng = SeededGenerator(seed: 77)
        for _ in 0..<60 {
            var b = good
            let at = Int.random(in: 0..<b.count, using: &rng)
            b[at] ^= UInt8.random(in: 1...255, using: &rng)
            cases.append(("flip at \(at)", b))
        }
        for (what, bytes) in cases {
            try expectNewGeneration(dir, bytes, old: id, what)
        }
        // The same state unharmed still opens in the old generation (the test above is not vacuous).
        try Data(good).write(to: URL(fileURLWithPath: dir.file("tracker.state")))
        let t = try ChangeTracker.open(stateDirectory: dir.path, diskSize: size, identity: nil, configuration: configuration)
        #expect(t.status().generation == id.generation)
        #expect(try changedBlocks(t, since: id) == [20: false])
    }

    /// A crashed tracker whose log holds `records` records, one per extent: returns its files.
    func crashedWithLog(records: Int) throws -> (dir: TemporaryDirectory, id: ChangeID, state: [UInt8], log: [UInt8], blocksPerRecord: [[Int]]) {
        let dir = try TemporaryDirectory("tracker-corrupt-log")
        var t: ChangeTracker? = try ChangeTracker.open(stateDirectory: dir.path, diskSize: size, identity: nil, configuration: configuration)
        let id = t!.status().currentChangeID
        var marked: [[Int]] = []
        for r in 0..<records { // one mark per 1 MiB extent = one record each
            let block = r * 16 + 3
            try t!.markWrite(ByteRange(offset: UInt64(block) * g, length: 10))
            marked.append([block])
        }
        t = nil
        let state = Array(try Data(contentsOf: URL(fileURLWithPath: dir.file("tracker.state"))))
        let log = Array(try Data(contentsOf: URL(fileURLWithPath: dir.file("activity.log"))))
        return (dir, id, state, log, marked)
    }

    func reopen(_ dir: TemporaryDirectory, state: [UInt8], log: [UInt8]) throws -> ChangeTracker {
        try Data(state).write(to: URL(fileURLWithPath: dir.file("tracker.state")))
        try Data(log).write(to: URL(fileURLWithPath: dir.file("activity.log")))
        if !FileManager.default.fileExists(atPath: dir.file("in-use")) {
            try Data("x".utf8).write(to: URL(fileURLWithPath: dir.file("in-use")))
        }
        return try ChangeTracker.open(stateDirectory: dir.path, diskSize: size, identity: nil, configuration: configuration)
    }

    @Test func logReplayCoversEveryRecord() throws {
        let c = try crashedWithLog(records: 4)
        let t = try reopen(c.dir, state: c.state, log: c.log)
        #expect(t.status().generation == c.id.generation)
        let changed = try changedBlocks(t, since: c.id)
        for b in c.blocksPerRecord.joined() { #expect(changed[b] != nil) }
        // The whole 1 MiB extent counts as changed.
        #expect(changed.count == 4 * 16)
    }

    @Test func damagedLogHeaderStartsANewGeneration() throws {
        let c = try crashedWithLog(records: 3)
        var cases: [(String, [UInt8])] = []
        for i in [0, 3, 7] { var b = c.log; b[i] ^= 1; cases.append(("magic \(i)", b)) }
        for i in 8..<56 { var b = c.log; b[i] ^= 0x10; cases.append(("header byte \(i)", b)) }
        cases.append(("truncated header", Array(c.log[0..<30])))
        cases.append(("truncated ring", Array(c.log[0..<(c.log.count - 4096)])))
        cases.append(("empty", []))
        for (what, log) in cases {
            let t = try reopen(c.dir, state: c.state, log: log)
            #expect(t.status().generation != c.id.generation, "\(what)")
            expectTrackerError(.fullReadRequired, "\(what)") { try t.changes(since: c.id) }
        }
    }

    @Test func damagedLogRecordsNeverLoseQuietly() throws {
        let records = 5
        let c = try crashedWithLog(records: records)
        var rng = SeededGenerator(seed: 99)
        var positions: [Int] = []
        for r in 0..<records { // each record's header fields, extents, and padding
            let slotStart = 4096 + (r + 1) * 4096 // sequence r+1 lives in slot r+1
            positions += [0, 4, 8, 16, 23, 24, 39, 40, 47, 48, 100, 4095].map { slotStart + $0 }
        }
        for _ in 0..<40 { positions.append(Int.random(in: 4096..<c.log.count, using: &rng)) }
        var sawTornTail = false, sawNewGeneration = false
        for at in positions {
            var log = c.log
            log[at] ^= 0x5A
            let t = try reopen(c.dir, state: c.state, log: log)
            let slot = (at - 4096) / 4096
            let record = slot - 1 // index into blocksPerRecord, when a record lives there
            let inRecord = record >= 0 && record < records && (at - 4096) % 4096 < 48
            if t.status().generation == c.id.generation {
                let changed = try changedBlocks(t, since: c.id)
                for (r, blocks) in c.blocksPerRecord.enumerated() {
                    // Only the newest record may be dropped, and only when it is the damaged one.
                    if inRecord && r == record && r == records - 1 { sawTornTail = true; continue }
                    for b in blocks { #expect(changed[b] != nil, "flip at \(at): record \(r) lost without a new generation") }
                }
            } else {
                sawNewGeneration = true
                #expect(inRecord && record < records - 1, "flip at \(at): only damage before the tail needs a new generation")
                expectTrackerError(.fullReadRequired) { try t.changes(since: c.id) }
            }
        }
        #expect(sawTornTail && sawNewGeneration)
    }
}
