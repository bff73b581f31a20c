import BlockIO
import ChangeTracking
import Filter
import Foundation
import Synchronization
import Testing
import TestSupport
import TrackerControl

/// One VM, one instant: the disks of a VM are checkpointed together, so a "transaction" that
/// writes a log record to one disk and then (after the record was acknowledged) its data to
/// another is never seen with the data and without the record.
@Suite(.serialized)
struct ConsistencyGroupTests {
    static let recordSize = 4096
    static let records = 1500
    static let size = UInt64(records * recordSize)

    /// A writer that commits transactions in order: record i on the log disk, FLUSH, then
    /// data i on the data disk, FLUSH.
    final class TransactionWriter: Sendable {
        let log: FilteredDisk, data: FilteredDisk
        let committed = Atomic<Int>(0)
        let stop = Atomic<Bool>(false)
        /// Signalled after every commit (and when the writer ends), for `waitUntilCommitted`.
        private let progress = NSCondition()
        private let ended = Atomic<Bool>(false)

        init(log: FilteredDisk, data: FilteredDisk) {
            self.log = log
            self.data = data
        }

        static func block(_ i: Int) -> [UInt8] {
            var b = [UInt8](repeating: UInt8(i % 251 + 1), count: ConsistencyGroupTests.recordSize)
            withUnsafeBytes(of: UInt64(i).littleEndian) { b.replaceSubrange(0..<8, with: $0) }
            return b
        }

        /// Waits until `count` transactions are committed; false when the writer ended first
        /// (or a minute passed).
        func waitUntilCommitted(_ count: Int) -> Bool {
            let deadline = Date(timeIntervalSinceNow: 60)
            progress.lock()
            defer { progress.unlock() }
            while committed.load(ordering: .relaxed) < count {
                if ended.load(ordering: .relaxed) || !progress.wait(until: deadline) { return committed.load(ordering: .relaxed) >= count }
            }
            return true
        }

        func run() throws {
            defer {
                progress.lock()
                ended.store(true, ordering: .relaxed)
                progress.broadcast()
                progress.unlock()
            }
            for i in 0..<ConsistencyGroupTests.records where !stop.load(ordering: .relaxed) {
                let offset = UInt64(i * ConsistencyGroupTests.recordSize)
                try Self.block(i).withUnsafeBytes { try log.write(offset: offset, bytes: $0, fua: false) }
                try log.flush()
                try Self.block(i).withUnsafeBytes { try data.write(offset: offset, bytes: $0, fua: false) }
                try data.flush()
                progress.lock()
                committed.store(i + 1, ordering: .relaxed)
                progress.broadcast()
                progress.unlock()
            }
        }
    }

    /// How many transactions a frozen base holds, counted from the first: the first block
    /// that is not its transaction's ends the count.
    static func count(_ disk: FilteredDisk, _ checkpoint: String) throws -> Int {
        var buffer = [UInt8](repeating: 0, count: recordSize)
        for i in 0..<records {
            try buffer.withUnsafeMutableBytes { try disk.readCheckpoint(checkpoint, offset: UInt64(i * recordSize), into: $0) }
            if buffer != TransactionWriter.block(i) { return i }
        }
        return records
    }

    static func attach(_ dir: TemporaryDirectory, _ name: String) throws -> FilteredDisk {
        _ = try DiskImage.createRaw(path: dir.file("\(name).raw"), size: size)
        return try FilteredDisk.attach(name: name, path: dir.file("\(name).raw"), stateDirectory: dir.file("state-\(name)"),
                                       configuration: TrackerConfiguration())
    }

    @Test
    func aGroupCheckpointNeverHoldsDataWithoutItsLogRecord() throws {
        let dir = try TemporaryDirectory("group-atomic")
        let log = try Self.attach(dir, "log"), data = try Self.attach(dir, "data")
        defer { try? log.close(); try? data.close() }
        let writer = TransactionWriter(log: log, data: data)
        let failure = Mutex<(any Error)?>(nil)
        let thread = Thread { do { try writer.run() } catch { failure.withLock { $0 = error } } }
        thread.start()
        defer { writer.stop.store(true, ordering: .relaxed) }
        var rounds = 0, seenMidway = 0
        while writer.committed.load(ordering: .relaxed) < Self.records && rounds < 60 && failure.withLock({ $0 }) == nil {
            let infos = try FilteredDisk.checkpoint([data, log], owner: nil, group: "vm")
            let (dataID, logID) = (infos[0].changeID.description, infos[1].changeID.description)
            let records = try Self.count(log, logID), datas = try Self.count(data, dataID)
            #expect(datas <= records, "round \(rounds): the data disk holds \(datas) transactions, the log only \(records)")
            if records > 0 && records < Self.records { seenMidway += 1 }
            #expect(log.status().checkpoint?.group == "vm" && data.status().checkpoint?.group == "vm")
            try log.release(commit: true)
            try data.release(commit: true)
            rounds += 1
        }
        #expect(failure.withLock { $0 } == nil)
        #expect(seenMidway > 0, "no checkpoint landed while the writer ran; the test tested nothing")
    }

    /// The oracle above is not toothless: two checkpoints taken one after the other, with the
    /// writer going on in between, are caught holding data without its record.
    @Test
    func separateCheckpointsAreCaughtByTheSameOracle() throws {
        let dir = try TemporaryDirectory("group-separate")
        let log = try Self.attach(dir, "log"), data = try Self.attach(dir, "data")
        defer { try? log.close(); try? data.close() }
        let writer = TransactionWriter(log: log, data: data)
        let thread = Thread { try? writer.run() }
        thread.start()
        defer { writer.stop.store(true, ordering: .relaxed) }
        try #require(writer.waitUntilCommitted(10), "the writer did not commit 10 transactions")
        let logInfo = try log.checkpoint()
        let at = writer.committed.load(ordering: .relaxed)
        try #require(writer.waitUntilCommitted(at + 3), "the writer stopped after the log's checkpoint")
        let dataInfo = try data.checkpoint()
        let records = try Self.count(log, logInfo.changeID.description)
        let datas = try Self.count(data, dataInfo.changeID.description)
        #expect(datas > records, "separate checkpoints with writes in between should show data without its record")
        try log.release(commit: true)
        try data.release(commit: true)
    }

    /// All or nothing: when one disk of the group cannot take its checkpoint (it has one open
    /// already), the others are left without one.
    @Test
    func aGroupThatFailsOnOneDiskLeavesNoCheckpoint() throws {
        let dir = try TemporaryDirectory("group-fail")
        let a = try Self.attach(dir, "a"), b = try Self.attach(dir, "b")
        defer { try? a.close(); try? b.close() }
        _ = try b.checkpoint()
        #expect(throws: FilterError.self) { _ = try FilteredDisk.checkpoint([a, b], owner: nil, group: "vm") }
        #expect(!a.hasCheckpoint && a.tracker.status().openCheckpoint == nil, "disk a kept a checkpoint of a failed group")
        try b.release(commit: false)
        let infos = try FilteredDisk.checkpoint([a, b], owner: nil, group: "vm")
        #expect(infos.count == 2)
        try a.release(commit: true)
        try b.release(commit: true)
    }

    /// Through the control endpoint, as the nightly run uses it.
    @Test
    func theControlEndpointChecksPointsAGroup() throws {
        let dir = try TemporaryDirectory("group-control")
        _ = try DiskImage.createRaw(path: dir.file("a.raw"), size: 1 << 20)
        _ = try DiskImage.createRaw(path: dir.file("b.raw"), size: 1 << 20)
        let filter = FilterProcess(directory: dir, diskName: "a", diskPath: dir.file("a.raw"),
                                   extraArguments: ["--disk", "b=\(dir.file("b.raw"))"])
        try withFilter(filter) { f in
            let reply = try f.client().checkpointGroup(disks: ["a", "b"], group: "vm1-night")
            #expect(reply.group == "vm1-night" && reply.checkpoints.map(\.disk) == ["a", "b"])
            #expect(reply.checkpoints.allSatisfy { $0.group == "vm1-night" })
            let statuses = try f.client().status()
            #expect(statuses.allSatisfy { $0.checkpoint?.group == "vm1-night" }, "\(statuses)")
            #expect(throws: FilterError.self) { _ = try f.client().checkpointGroup(disks: ["a", "a"]) }
            #expect(throws: FilterError.self) { _ = try f.client().checkpointGroup(disks: ["a", "nosuch"]) }
            for d in ["a", "b"] { _ = try f.client().release(disk: d, commit: true) }
            #expect(f.stop() == 0)
        }
    }
}
