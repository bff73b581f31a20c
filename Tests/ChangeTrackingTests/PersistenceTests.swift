import BlockIO
import ChangeTracking
import TrackerControl
import Foundation
import TestSupport
import Testing

struct PersistenceTests {
    let g: UInt64 = 65536
    let size: UInt64 = 100 * 65536 + 4321

    func identity(inode: UInt64 = 7, size: UInt64 = 1000, mtime: Int64 = 5) -> FileIdentity {
        FileIdentity(device: 1, inode: inode, size: size, modificationNanoseconds: mtime)
    }

    @Test func cleanRestartKeepsEverythingAndTheGeneration() throws {
        let dir = try TemporaryDirectory("tracker-persist")
        let t = try ChangeTracker.open(stateDirectory: dir.path, diskSize: size, identity: identity(), configuration: smallConfiguration)
        let g0 = t.status().currentChangeID
        try t.markWrite(ByteRange(offset: 3 * g + 5, length: 1))
        try t.markZero(ByteRange(offset: 10 * g, length: 2 * g))
        let c1 = try t.checkpoint().changeID
        try t.release(commit: true)
        try t.markWrite(ByteRange(offset: 50 * g, length: g + 1))
        let c2 = try t.checkpoint()                                  // left open across the restart
        #expect(c2.previous == c1)
        try t.markZero(ByteRange(offset: 99 * g, length: size - 99 * g)) // to the end: whole partial block
        let before = try [g0, c1, c2.changeID].map { try changedBlocks(t, since: $0) }
        try t.close(identity: identity())

        let r = try ChangeTracker.open(stateDirectory: dir.path, diskSize: size, identity: identity(), configuration: smallConfiguration)
        let status = r.status()
        #expect(status.cleanOpen)
        #expect(status.generation == g0.generation)
        #expect(status.openCheckpoint == c2)
        #expect(try [g0, c1, c2.changeID].map { try changedBlocks(r, since: $0) } == before)
        // 99 and 100 were zeroed after the open checkpoint: changed, but the frozen base is what a
        // since-query describes, so they are not "reads as zero".
        #expect(before[0] == [3: false, 10: true, 11: true, 50: false, 51: false, 99: false, 100: false])
        #expect(try changedBlocks(r, view: .active) == [99: true, 100: true])
        #expect(try changedBlocks(r, view: .checkpoint) == [50: false, 51: false])
        try r.release(commit: false)
        #expect(r.status().lastCommitted == c1, "abort keeps the last committed ID")
        #expect(try changedBlocks(r, since: c2.changeID) == [99: true, 100: true], "abort keeps the held marks")
        try r.close(identity: identity())
    }

    @Test func identityChangeAfterCleanCloseStartsANewGeneration() throws {
        let dir = try TemporaryDirectory("tracker-persist")
        let t = try ChangeTracker.open(stateDirectory: dir.path, diskSize: size, identity: identity(), configuration: smallConfiguration)
        let id = try t.checkpoint().changeID
        try t.release(commit: true)
        try t.close(identity: identity(mtime: 99))

        for changed in [identity(inode: 8, mtime: 99), identity(size: 2000, mtime: 99), identity(mtime: 100)] {
            // Reopen with the matching identity first: same generation.
            let same = try ChangeTracker.open(stateDirectory: dir.path, diskSize: size, identity: identity(mtime: 99), configuration: smallConfiguration)
            #expect(same.status().generation == id.generation)
            try same.close(identity: identity(mtime: 99))
            // A state copy lets each variant start from the clean state again.
            let copy = try TemporaryDirectory("tracker-persist-copy")
            for name in ["tracker.state", "activity.log"] {
                try FileManager.default.copyItem(atPath: dir.file(name), toPath: copy.file(name))
            }
            let other = try ChangeTracker.open(stateDirectory: copy.path, diskSize: size, identity: changed, configuration: smallConfiguration)
            #expect(other.status().generation != id.generation)
            #expect(!other.status().openReport.isEmpty)
            expectTrackerError(.fullReadRequired) { try other.changes(since: id) }
            do {
                _ = try other.changes(since: id)
            } catch let e as TrackerError {
                #expect(e.message.contains("full read"))
                #expect(e.message.contains("behind the tracker's back") || e.message.contains("modified while"))
            }
        }
    }

    @Test func afterACrashOnlySizeAndInodeAreCompared() throws {
        let dir = try TemporaryDirectory("tracker-persist")
        var t: ChangeTracker? = try ChangeTracker.open(stateDirectory: dir.path, diskSize: size, identity: identity(), configuration: smallConfiguration)
        let id = t!.status().currentChangeID
        try t!.markWrite(ByteRange(offset: 0, length: 1))
        t = nil // crash: no close
        let r = try ChangeTracker.open(stateDirectory: dir.path, diskSize: size, identity: identity(mtime: 12345), configuration: smallConfiguration)
        #expect(r.status().generation == id.generation, "our own writes changed the mtime: not a reason for a new generation")
        #expect(!r.status().cleanOpen)
        #expect(try changedBlocks(r, since: id)[0] == false)
        // Drop r (crash again), then the inode differs: new generation.
        let s = try ChangeTracker.open(stateDirectory: dir.path, diskSize: size, identity: identity(inode: 9, mtime: 12345), configuration: smallConfiguration)
        #expect(s.status().generation != id.generation)
        expectTrackerError(.fullReadRequired) { try s.changes(since: id) }
    }

    @Test func resizeAndResetStartNewGenerations() throws {
        let dir = try TemporaryDirectory("tracker-persist")
        let t = try ChangeTracker.open(stateDirectory: dir.path, diskSize: size, identity: nil, configuration: smallConfiguration)
        try t.markWrite(ByteRange(offset: 0, length: g))
        let id = try t.checkpoint().changeID
        try t.resize(to: size * 2)
        let status = t.status()
        #expect(status.generation != id.generation)
        #expect(status.diskSize == size * 2)
        #expect(status.openCheckpoint == nil)
        #expect(status.generationReason.contains("resized"))
        expectTrackerError(.fullReadRequired) { try t.changes(since: id) }
        try t.markWrite(ByteRange(offset: size * 2 - 1, length: 1))
        #expect(try changedBlocks(t, since: status.currentChangeID) == [Int((size * 2 - 1) / g): false])
        let afterResize = t.status().currentChangeID
        try t.reset(reason: "restored from a backup")
        expectTrackerError(.fullReadRequired) { try t.changes(since: afterResize) }
        let gen3 = t.status().generation
        try t.close(identity: nil)
        // A disk size that changed while detached also starts a new generation.
        let r = try ChangeTracker.open(stateDirectory: dir.path, diskSize: size, identity: nil, configuration: smallConfiguration)
        #expect(r.status().generation != gen3)
        #expect(r.status().openReport.joined().contains("disk size changed"))
    }

    @Test func crashReplayKeepsAnOpenCheckpointAndItsHeldMarks() throws {
        let dir = try TemporaryDirectory("tracker-persist")
        var t: ChangeTracker? = try ChangeTracker.open(stateDirectory: dir.path, diskSize: size, identity: nil, configuration: smallConfiguration)
        try t!.markWrite(ByteRange(offset: 5 * g, length: 1))
        let cp = try t!.checkpoint()
        try t!.markWrite(ByteRange(offset: 40 * g, length: 1)) // logged, not in the state file
        try t!.markZero(ByteRange(offset: 80 * g, length: g))
        t = nil
        let r = try ChangeTracker.open(stateDirectory: dir.path, diskSize: size, identity: nil, configuration: smallConfiguration)
        #expect(r.status().openCheckpoint == cp)
        #expect(r.status().openReport.contains { $0.contains("replayed") })
        #expect(try changedBlocks(r, view: .checkpoint) == Dictionary(uniqueKeysWithValues: (0...100).map { ($0, false) }),
                "no committed predecessor: the checkpoint view is the whole disk")
        let active = try changedBlocks(r, view: .active)
        // The log covers whole 1 MiB extents (16 blocks), not reading as zero after a crash.
        for b in [40, 80] { #expect(active[b] == false) }
        #expect(active[5] == nil)
        try r.release(commit: true)
        let since = try changedBlocks(r, since: cp.changeID)
        for b in [40, 80] { #expect(since[b] != nil) }
    }
}
