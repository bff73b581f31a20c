import BlockIO
import ChangeTracking
import Filter
import Foundation
import Synchronization
import Testing
import TestSupport
import TrackerControl

/// Trust items 7-11: a step that fails or is interrupted leaves the disk in a state the next
/// step can use, and FUA means durable for every file a request touched.
@Suite(.serialized)
struct FailureRollbackTests {
    static let granularity: UInt64 = 65536
    static let size: UInt64 = 16 << 20

    static func attach(_ disk: String, state: String, slots: Int = 16) throws -> FilteredDisk {
        try FilteredDisk.attach(name: "d0", path: disk, stateDirectory: state,
                                configuration: TrackerConfiguration(activityLogSlots: slots))
    }

    static func write(_ disk: FilteredDisk, _ byte: UInt8, at offset: UInt64, length: Int = 65536, fua: Bool = false) throws {
        try [UInt8](repeating: byte, count: length).withUnsafeBytes { try disk.write(offset: offset, bytes: $0, fua: fua) }
    }

    static func overlayFiles(_ state: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: state)) ?? []).filter { $0.hasPrefix("overlay") }.sorted()
    }

    /// Item 8: a CHECKPOINT that fails for lack of space on the state directory rolls back
    /// whole, whichever step ran out (the overlay, the owner record, the state file).
    @Test
    func aCheckpointThatRunsOutOfSpaceLeavesNoCheckpointAndTheNextOneWorks() throws {
        let dir = try TemporaryDirectory("ckpt-enospc")
        let fs = try SmallFileSystem(bytes: 2 << 20)
        _ = try DiskImage.createRaw(path: dir.file("disk.raw"), size: Self.size)
        let state = fs.file("state")
        let disk = try Self.attach(dir.file("disk.raw"), state: state)
        defer { try? disk.close() }
        let start = disk.tracker.status().currentChangeID
        try Self.write(disk, 0x11, at: 0)
        var failures = 0
        for free: UInt64 in [0, 4096, 8192, 12288, 16384, 32768, 65536] {
            try fs.fill(leaving: free)
            do {
                _ = try disk.checkpoint(owner: CheckpointOwner(pid: getpid()))
                // It fitted: release it with room to spare, then go on.
                fs.unfill()
                try disk.release(commit: false)
            } catch {
                failures += 1
                // Every part agrees there is no checkpoint, and nothing was left behind.
                #expect(disk.tracker.status().openCheckpoint == nil, "\(free) B free: the tracker kept a checkpoint after \(error)")
                #expect(!disk.hasCheckpoint, "\(free) B free: the disk kept an overlay after \(error)")
                #expect(Self.overlayFiles(state).isEmpty, "\(free) B free: overlay files left: \(Self.overlayFiles(state))")
                #expect(!FileManager.default.fileExists(atPath: "\(state)/checkpoint-owner.json"), "\(free) B free: owner record left")
                #expect(throws: FilterError.self) { try disk.release(commit: true) }
                fs.unfill()
            }
            // Writes go on and are tracked; the next checkpoint and its release work.
            try Self.write(disk, 0x22, at: 1 << 20)
            let info = try disk.checkpoint()
            try disk.release(commit: true)
            #expect(info.previous == nil || info.previous!.generation == start.generation)
        }
        #expect(failures > 0, "no checkpoint ever ran out of space; the test did not test anything")
        let changed = try disk.tracker.changes(since: start).extents.map(\.range)
        #expect(changed.contains { $0.offset == 0 } && changed.contains { $0.offset == 1 << 20 }, "changes lost: \(changed)")
    }

    /// Item 7: FUA on a trim or write-zeroes while an overlay exists (here: during a merge,
    /// when blocks not in the overlay go to the base) makes the base durable, not only the overlay.
    @Test
    func fuaMakesEveryTouchedFileDurable() throws {
        let dir = try TemporaryDirectory("fua-files")
        _ = try DiskImage.createRaw(path: dir.file("disk.raw"), size: Self.size)
        let disk = try Self.attach(dir.file("disk.raw"), state: dir.file("state"))
        defer { try? disk.close() }
        let synced = Mutex<[Bool]>([])
        disk.hooks.withLock { $0.synced = { base in synced.withLock { $0.append(base) } } }

        // A merge held at its first batch: the overlay exists and is merging.
        _ = try disk.checkpoint()
        for block in 0..<8 { try Self.write(disk, 0x33, at: UInt64(block) * Self.granularity) }
        let merging = DispatchSemaphore(value: 0), proceed = DispatchSemaphore(value: 0)
        let first = Atomic<Bool>(true)
        disk.hooks.withLock {
            $0.beforeMergeBatch = {
                if first.exchange(false, ordering: .relaxed) { merging.signal(); proceed.wait() }
            }
        }
        let released = DispatchSemaphore(value: 0)
        let release = Thread { try? disk.release(commit: true); released.signal() }
        release.start()
        merging.wait()
        // Blocks 100.. are not in the overlay: a merging overlay sends them to the base.
        for (label, request) in [
            ("trim+FUA", { try disk.zero(ByteRange(offset: 100 * Self.granularity, length: Self.granularity), noHole: false, fua: true) }),
            ("write-zeroes+FUA", { try disk.zero(ByteRange(offset: 101 * Self.granularity, length: Self.granularity), noHole: true, fua: true) }),
            ("write+FUA", { try Self.write(disk, 0x44, at: 102 * Self.granularity, fua: true) }),
        ] as [(String, () throws -> Void)] {
            synced.withLock { $0.removeAll() }
            try request()
            #expect(synced.withLock { $0 }.contains(true), "\(label) during a merge did not make the base durable (synced: \(synced.withLock { $0 }))")
        }
        proceed.signal()
        released.wait()
        #expect(!disk.hasCheckpoint)
    }

    /// Item 9: the filter stopping (SIGTERM: `close`) during a release stops the merge first;
    /// the next start finishes the release and keeps the generation (the clean close
    /// recorded the file as the merge left it).
    @Test
    func closingDuringAMergeStopsItAndTheNextStartFinishesItInTheSameGeneration() throws {
        let dir = try TemporaryDirectory("close-merge")
        _ = try DiskImage.createRaw(path: dir.file("disk.raw"), size: Self.size)
        var model = [UInt8](repeating: 0, count: Int(Self.size))
        var disk = try Self.attach(dir.file("disk.raw"), state: dir.file("state"))
        let start = disk.tracker.status().currentChangeID
        _ = try disk.checkpoint()
        for block in 0..<200 {
            let byte = UInt8(block % 250 + 1)
            try Self.write(disk, byte, at: UInt64(block) * Self.granularity)
            model.replaceSubrange(block * 65536..<(block + 1) * 65536, with: repeatElement(byte, count: 65536))
        }
        let batches = Atomic<Int>(0)
        let inMerge = DispatchSemaphore(value: 0)
        disk.hooks.withLock {
            $0.beforeMergeBatch = {
                // Let one batch land, then let the close in while the merge goes on.
                if batches.add(1, ordering: .relaxed).newValue == 2 { inMerge.signal() }
                // The point: a slow merge, so the close lands while it goes on.
                usleep(2000)
            }
        }
        let released = Mutex<(any Error)?>(nil)
        let merging = disk
        let release = Thread { do { try merging.release(commit: true) } catch { released.withLock { $0 = error } } }
        release.start()
        inMerge.wait()
        try disk.close()
        #expect(released.withLock { $0 } != nil, "the release was not stopped by the close")
        #expect(disk.hasCheckpoint, "the merge finished before the close; the test did not test a stopped merge")

        disk = try Self.attach(dir.file("disk.raw"), state: dir.file("state"))
        defer { try? disk.close() }
        let status = disk.tracker.status()
        #expect(status.generation == start.generation, "a new generation after a clean stop during a merge: \(disk.attachNotes)")
        #expect(disk.attachNotes.contains { $0.contains("resumed a release") }, "\(disk.attachNotes)")
        #expect(!disk.hasCheckpoint && status.openCheckpoint == nil)
        #expect(try DiskImage.open(path: dir.file("disk.raw"), writable: false).read(count: Int(Self.size), at: 0) == model)
        let changed = try disk.tracker.changes(since: start).extents
        #expect(changed.first?.range == ByteRange(offset: 0, length: 200 * Self.granularity), "\(changed)")
    }

    /// Item 10: a checkpoint (a new backup) that arrives while the previous release is still
    /// merging waits for it instead of failing.
    @Test
    func aCheckpointWaitsForARunningRelease() throws {
        let dir = try TemporaryDirectory("ckpt-waits")
        _ = try DiskImage.createRaw(path: dir.file("disk.raw"), size: Self.size)
        let disk = try Self.attach(dir.file("disk.raw"), state: dir.file("state"))
        defer { try? disk.close() }
        _ = try disk.checkpoint()
        for block in 0..<100 { try Self.write(disk, 0x55, at: UInt64(block) * Self.granularity) }
        let inMerge = DispatchSemaphore(value: 0)
        let first = Atomic<Bool>(true)
        disk.hooks.withLock {
            $0.beforeMergeBatch = {
                if first.exchange(false, ordering: .relaxed) { inMerge.signal() }
                // The point: a slow merge, so the checkpoint arrives while it runs.
                usleep(5000)
            }
        }
        let release = Thread { try? disk.release(commit: true) }
        release.start()
        inMerge.wait()
        let info = try disk.checkpoint()
        #expect(info.previous != nil, "the new checkpoint does not follow the committed one")
        #expect(disk.hasCheckpoint)
        try disk.release(commit: true)
    }

    /// Item 11: after a clean shutdown the filter starts on a state file system with less free
    /// space than one activity log (the log is emptied in place), and a start that fails for
    /// lack of space leaves the shutdown clean (no stale "in use").
    @Test
    func aCleanlyStoppedFilterRestartsOnAFullStateFileSystem() throws {
        let dir = try TemporaryDirectory("restart-full")
        let fs = try SmallFileSystem(bytes: 8 << 20)
        _ = try DiskImage.createRaw(path: dir.file("disk.raw"), size: Self.size)
        let state = fs.file("state")
        var disk = try Self.attach(dir.file("disk.raw"), state: state, slots: 1024) // a 4 MiB log
        let generation = disk.tracker.status().generation
        try Self.write(disk, 0x66, at: 0)
        try disk.close()

        // Not even the state file fits: the start fails, and nothing says "in use".
        try fs.fill(leaving: 0)
        #expect(throws: (any Error).self) { _ = try Self.attach(dir.file("disk.raw"), state: state, slots: 1024) }
        #expect(!FileManager.default.fileExists(atPath: "\(state)/in-use"), "a failed start left the in-use flag")
        fs.unfill()

        // Room for the state file, far less than a log: the start works and stays clean.
        try fs.fill(leaving: 256 << 10)
        disk = try Self.attach(dir.file("disk.raw"), state: state, slots: 1024)
        defer { try? disk.close() }
        let status = disk.tracker.status()
        #expect(status.cleanOpen && status.generation == generation, "restart was not clean: \(status.openReport)")
        try Self.write(disk, 0x67, at: 4 << 20)
        #expect(try disk.tracker.changes(since: ChangeID(generation: generation, sequence: 0)).extents.count == 2)
    }
}
