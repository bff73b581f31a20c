import BlockIO
import ChangeTracking
import Foundation
import Synchronization
import TestSupport
import Testing
import TrackerControl

/// Many threads marking while checkpoints come and go: every mark lands wholly before or
/// after each checkpoint, so none falls between views.
struct ConcurrencyTests {
    final class Shared: Sendable {
        let clock = Atomic<Int>(0)
        let stop = Atomic<Bool>(false)
        let marks = Mutex<[(range: ByteRange, start: Int, end: Int)]>([])
        func tick() -> Int { clock.add(1, ordering: .sequentiallyConsistent).newValue }
    }

    @Test func marksFromManyThreadsAreNeverLostAcrossCheckpoints() throws {
        let dir = try TemporaryDirectory("tracker-threads")
        let g: UInt64 = 4096
        let size: UInt64 = 64 << 20
        let tracker = try ChangeTracker.open(stateDirectory: dir.path, diskSize: size, identity: nil,
                                             configuration: TrackerConfiguration(granularity: g, activityLogExtentSize: 1 << 20, activityLogSlots: 8))
        let shared = Shared()
        let group = DispatchGroup()
        let threads = 4
        for t in 0..<threads {
            group.enter()
            let thread = Thread {
                var rng = SeededGenerator(seed: UInt64(t) + 1)
                var mine: [(range: ByteRange, start: Int, end: Int)] = []
                while !shared.stop.load(ordering: .sequentiallyConsistent) || mine.count < 200 {
                    let range = ByteRange(offset: UInt64.random(in: 0..<(size / g), using: &rng) * g + UInt64.random(in: 0..<g, using: &rng),
                                          length: 1)
                    let start = shared.tick()
                    do {
                        if Bool.random(using: &rng) { try tracker.markWrite(range) } else { try tracker.markZero(range) }
                    } catch {
                        Issue.record("mark failed: \(error)")
                    }
                    mine.append((range, start, shared.tick()))
                    if mine.count > 20_000 { break }
                }
                shared.marks.withLock { $0 += mine }
                group.leave()
            }
            thread.start()
        }

        var checkpoints: [(id: ChangeID, returned: Int)] = [(tracker.status().currentChangeID, 0)]
        var viewChecks: [(views: Set<Int>, previousReturned: Int, taken: Int)] = []
        for round in 0..<25 {
            let info = try tracker.checkpoint()
            checkpoints.append((info.changeID, shared.tick()))
            #expect(info.previous == (round == 0 ? nil : checkpoints[checkpoints.count - 2].id))
            let taken = shared.tick()
            let frozen = try changedBlocks(tracker, view: .checkpoint)
            let active = try changedBlocks(tracker, view: .active)
            viewChecks.append((Set(frozen.keys).union(active.keys), checkpoints[checkpoints.count - 2].returned, taken))
            try tracker.release(commit: true)
            if round % 5 == 4 { try tracker.persist() }
        }
        shared.stop.store(true, ordering: .sequentiallyConsistent)
        group.wait()

        let marks = shared.marks.withLock { $0 }
        #expect(marks.count >= threads * 200)
        var since: [ChangeID: [Int: Bool]] = [:]
        for (id, _) in checkpoints { since[id] = try changedBlocks(tracker, since: id) }
        var checked = 0
        for mark in marks {
            let block = Int(mark.range.offset / g)
            for (id, returned) in checkpoints where returned < mark.start {
                #expect(since[id]![block] != nil, "mark at block \(block) missing since \(id)")
                checked += 1
            }
            for v in viewChecks where v.previousReturned < mark.start && mark.end < v.taken {
                #expect(v.views.contains(block), "mark at block \(block) in neither the checkpoint nor the active view")
                checked += 1
            }
        }
        #expect(checked > marks.count, "the oracle compared many marks")
        try tracker.close(identity: nil)
    }
}
