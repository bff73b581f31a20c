import BlockIO
import ChangeTracking
import Foundation
import TestSupport
import Testing
import TrackerControl

/// Hard kills: `tracker-torture` marks a seeded stream and prints each completed mark; we
/// SIGKILL it at random instants and check that reopening yields every printed mark.
struct CrashTests {
    // Must match Tools/tracker-torture/main.swift.
    static let diskSize: UInt64 = (1 << 30) + 12345
    static let configuration = TrackerConfiguration(granularity: 65536, activityLogExtentSize: 1 << 20, activityLogSlots: 16)

    static var rounds: Int { ProcessInfo.processInfo.environment["TESSERA_LONG"] == "1" ? 300 : 20 }

    struct Mark {
        var range: ByteRange
        /// Change IDs handed out before the mark started, in this round.
        var after: [ChangeID]
    }

    @Test func hardKillsLoseNoMark() throws {
        let dir = try TemporaryDirectory("tracker-crash")
        let executable = BuiltProducts.executable("tracker-torture")
        #expect(FileManager.default.isExecutableFile(atPath: executable), "build tracker-torture first (swift build --build-tests)")
        var rng = SeededGenerator(seed: 20_240_601)

        let first = try ChangeTracker.open(stateDirectory: dir.path, diskSize: Self.diskSize, identity: nil, configuration: Self.configuration)
        let start = first.status().currentChangeID
        try first.close(identity: nil)
        var allMarks: [(since: ChangeID, range: ByteRange)] = []
        var killedMidStream = 0

        for round in 0..<Self.rounds {
            // The torture tool checkpoints as it goes; how many depends on the machine's speed,
            // so over many rounds the history can outgrow the tracker's window (at least 191
            // checkpoints). Each round's own start is always answerable after its crash.
            let before = try ChangeTracker.open(stateDirectory: dir.path, diskSize: Self.diskSize, identity: nil, configuration: Self.configuration)
            let roundStart = before.status().currentChangeID
            try before.close(identity: nil)
            let process = try ChildProcess(executable, [dir.path, String(1000 + round)])
            // A random instant: a quarter of the rounds during open, the rest into the stream,
            // counted from its first line, so a slow start (a sanitizer build, a loaded
            // machine) does not turn every kill into one during open.
            if round % 4 == 0 {
                usleep(UInt32.random(in: 1_000...20_000, using: &rng))
            } else {
                _ = process.waitForLines(timeout: 60) { !$0.isEmpty }
                usleep(UInt32.random(in: 0...200_000, using: &rng))
            }
            let killed = process.kill()
            #expect(killed.status == 128 + SIGKILL, "round \(round): the torture tool died on its own: status \(killed.status): \(killed.stderr)")

            // Only whole lines are completed operations.
            var text = killed.stdout
            if let lastNewline = text.lastIndex(of: "\n") { text = String(text[...lastNewline]) } else { text = "" }
            var handedOut: [ChangeID] = []
            var marks: [Mark] = []
            for line in text.split(separator: "\n") {
                let parts = line.split(separator: " ")
                switch parts.first {
                case "W", "Z":
                    let range = ByteRange(offset: UInt64(parts[1])!, length: UInt64(parts[2])!)
                    marks.append(Mark(range: range, after: handedOut))
                case "C":
                    handedOut.append(try #require(ChangeID(String(parts[1]))))
                default: break
                }
            }
            if !marks.isEmpty { killedMidStream += 1 }

            let tracker = try ChangeTracker.open(stateDirectory: dir.path, diskSize: Self.diskSize, identity: nil, configuration: Self.configuration)
            let status = tracker.status()
            #expect(status.generation == start.generation, "round \(round): a crash must not start a new generation: \(status.openReport)")
            #expect(!status.cleanOpen || marks.isEmpty)
            let sinceStart = try changedBlocks(tracker, since: roundStart)
            for mark in marks {
                for b in blocks(of: mark.range, granularity: Self.configuration.granularity) {
                    #expect(sinceStart[b] != nil, "round \(round): mark \(mark.range) lost since \(roundStart)")
                }
            }
            // Every checkpoint handed out before a mark must report it.
            var cache: [ChangeID: [Int: Bool]] = [:]
            for mark in marks {
                for id in mark.after {
                    if cache[id] == nil { cache[id] = try changedBlocks(tracker, since: id) }
                    for b in blocks(of: mark.range, granularity: Self.configuration.granularity) where cache[id]![b] == nil {
                        Issue.record("round \(round): mark \(mark.range) missing from changes since \(id)")
                    }
                }
            }
            allMarks += marks.map { (roundStart, $0.range) }
            // Leave it "crashed" too (no close): the next torture run opens after an unclean shutdown.
        }
        #expect(killedMidStream >= Self.rounds / 2, "most kills should land while marking")
        let final = try ChangeTracker.open(stateDirectory: dir.path, diskSize: Self.diskSize, identity: nil, configuration: Self.configuration)
        // Across rounds: every mark is in the answer since every round start still inside the
        // window; a start the window no longer reaches must fail loudly (promise 2), never
        // answer short.
        let oldest = final.status().oldestAnswerable.sequence
        var answers: [ChangeID: [Int: Bool]] = [:]
        for (since, range) in allMarks {
            if since.sequence < oldest {
                #expect(throws: TrackerError.self) { _ = try final.changes(since: since) }
                continue
            }
            if answers[since] == nil { answers[since] = try changedBlocks(final, since: since) }
            for b in blocks(of: range, granularity: Self.configuration.granularity) where answers[since]![b] == nil {
                Issue.record("mark \(range) lost across rounds (since \(since))")
            }
        }
        if start.sequence >= oldest {
            let everything = try changedBlocks(final, since: start)
            for (_, range) in allMarks {
                for b in blocks(of: range, granularity: Self.configuration.granularity) where everything[b] == nil {
                    Issue.record("mark \(range) lost across rounds")
                }
            }
        }
        try final.close(identity: nil)
    }
}
