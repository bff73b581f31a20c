import BlockIO
import ChangeTracking
import Foundation
import TestSupport
import Testing
import TrackerControl

/// Seeded random marks, checkpoints, releases and queries against `TrackerModel`.
struct ModelTests {
    static let cases: [(seed: UInt64, granularity: UInt64, blocks: UInt64, tail: UInt64, operations: Int)] = [
        (1, 65536, 64, 1000, 3000),
        (2, 4096, 200, 17, 2000),
        (3, 65536, 40, 0, 7000), // enough checkpoints to rebase twice
    ]

    @Test(arguments: 0..<cases.count)
    func randomOperationsMatchTheModel(_ index: Int) throws {
        let c = Self.cases[index]
        var rng = SeededGenerator(seed: c.seed)
        let diskSize = c.blocks * c.granularity + c.tail
        let dir = try TemporaryDirectory("tracker-model")
        let configuration = TrackerConfiguration(granularity: c.granularity, activityLogExtentSize: 1 << 20, activityLogSlots: 16)
        let tracker = try ChangeTracker.open(stateDirectory: dir.path, diskSize: diskSize, identity: nil, configuration: configuration)
        let generation = tracker.status().generation
        var model = TrackerModel(diskSize: diskSize, granularity: c.granularity)
        var handedOut: [UInt64] = [0]
        var rebased = false

        func randomRange() -> ByteRange {
            let offset = UInt64.random(in: 0..<diskSize, using: &rng)
            let maxLength = min(diskSize - offset, 4 * c.granularity)
            var length = UInt64.random(in: 1...maxLength, using: &rng)
            if Bool.random(using: &rng) { // block-aligned variant
                let aligned = offset / c.granularity * c.granularity
                length = min(UInt64.random(in: 1...3, using: &rng) * c.granularity, diskSize - aligned)
                return ByteRange(offset: aligned, length: length)
            }
            return ByteRange(offset: offset, length: length)
        }

        for step in 0..<c.operations {
            let roll = Int.random(in: 0..<100, using: &rng)
            switch roll {
            case 0..<50:
                let r = randomRange()
                try tracker.markWrite(r)
                model.write(r)
            case 50..<65:
                let r = randomRange()
                try tracker.markZero(r)
                model.zero(r)
            case 65..<77:
                if model.held == nil {
                    let info = try tracker.checkpoint()
                    let expected = model.checkpoint()
                    #expect(info.changeID == ChangeID(generation: generation, sequence: expected))
                    #expect(info.previous?.sequence == model.openPrevious)
                    handedOut.append(expected)
                    if model.base > 0 { rebased = true }
                } else {
                    expectTrackerError(.checkpointOpen) { try tracker.checkpoint() }
                }
            case 77..<88:
                let commit = Bool.random(using: &rng)
                if model.held != nil {
                    try tracker.release(commit: commit)
                    model.release(commit: commit)
                } else {
                    expectTrackerError(.noCheckpoint) { try tracker.release(commit: commit) }
                }
            case 88..<96:
                // Mostly recent IDs, sometimes any.
                let s = Bool.random(using: &rng) ? handedOut.last! - min(UInt64.random(in: 0...40, using: &rng), handedOut.last!)
                                                 : handedOut.randomElement(using: &rng)!
                let id = ChangeID(generation: generation, sequence: s)
                if s < model.base {
                    expectTrackerError(.fullReadRequired, "\(id) is older than base \(model.base)") { try tracker.changes(since: id) }
                } else {
                    let limit = [1, 2, 7, 65536].randomElement(using: &rng)!
                    #expect(try changedBlocks(tracker, since: id, limit: limit) == model.since(s), "seed \(c.seed) step \(step) since \(s)")
                }
            default:
                #expect(try changedBlocks(tracker, view: .active) == model.activeView(), "seed \(c.seed) step \(step) active view")
                if model.held != nil {
                    #expect(try changedBlocks(tracker, view: .checkpoint, limit: 3) == model.checkpointView(), "seed \(c.seed) step \(step) checkpoint view")
                } else {
                    expectTrackerError(.noCheckpoint) { try tracker.changes(view: .checkpoint, in: ByteRange(offset: 0, length: 1)) }
                }
            }
            let status = tracker.status()
            #expect(status.baseSequence == model.base)
            #expect(status.currentChangeID.sequence == model.lastClosed)
        }
        // History: everything the tracker still answers is at least 191 checkpoints deep.
        let status = tracker.status()
        #expect(status.currentChangeID.sequence - status.baseSequence >= min(191, status.currentChangeID.sequence))
        if index == 2 { #expect(rebased, "this case must exercise a rebase") }
        // Future and foreign IDs never answer.
        expectTrackerError(.fullReadRequired) { try tracker.changes(since: ChangeID(generation: generation, sequence: model.lastClosed + 1)) }
        expectTrackerError(.fullReadRequired) { try tracker.changes(since: ChangeID(generation: UUID(), sequence: model.lastClosed)) }
        // Every answerable ID survives a clean restart unchanged.
        try tracker.close(identity: nil)
        let reopened = try ChangeTracker.open(stateDirectory: dir.path, diskSize: diskSize, identity: nil, configuration: configuration)
        #expect(reopened.status().generation == generation)
        #expect(reopened.status().cleanOpen)
        for s in handedOut.suffix(20) where s >= model.base {
            #expect(try changedBlocks(reopened, since: ChangeID(generation: generation, sequence: s)) == model.since(s))
        }
        #expect(reopened.status().openCheckpoint?.changeID.sequence == (model.held != nil ? model.lastClosed : nil))
    }
}
