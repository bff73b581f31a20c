// tracker-torture: marks a seeded stream of writes, trims and checkpoints into a tracker and
// prints one line per completed operation, flushing each, so a test that SIGKILLs it at a
// random instant knows exactly which marks returned before the kill.
//
//   tracker-torture STATE_DIR SEED [OPERATIONS]
//
// Output lines: "OPEN <generation>", "W <offset> <length>", "Z <offset> <length>",
// "C <change ID>", "R commit|abort", "P" (persist), "DONE".
import BlockIO
import ChangeTracking
import Foundation

/// The shape the crash test reopens with; keep in step with CrashTests.
let diskSize: UInt64 = (1 << 30) + 12345
let configuration = TrackerConfiguration(granularity: 65536, activityLogExtentSize: 1 << 20, activityLogSlots: 16)

struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

func say(_ line: String) {
    print(line)
    fflush(nil) // flush stdout before the next mark: a kill may come at any instant
}

let args = CommandLine.arguments
guard args.count >= 3, let seed = UInt64(args[2]) else {
    FileHandle2.stderr("usage: tracker-torture STATE_DIR SEED [OPERATIONS]\n")
    exit(2)
}
let operations = args.count > 3 ? Int(args[3]) ?? Int.max : Int.max

enum FileHandle2 {
    static func stderr(_ s: String) { FileHandle.standardError.write(Data(s.utf8)) }
}

do {
    var rng = SplitMix(state: seed)
    let tracker = try ChangeTracker.open(stateDirectory: args[1], diskSize: diskSize, identity: nil, configuration: configuration)
    if tracker.status().openCheckpoint != nil { try tracker.release(commit: false) }
    say("OPEN \(tracker.status().generation.uuidString)")
    var open = false
    for _ in 0..<operations {
        let roll = Int.random(in: 0..<1000, using: &rng)
        // Writes cluster in a moving window so some extents are hot and some are new.
        let offset = UInt64.random(in: 0..<diskSize, using: &rng)
        let length = min(UInt64.random(in: 1...(256 << 10), using: &rng), diskSize - offset)
        let range = ByteRange(offset: offset, length: length)
        switch roll {
        case 0..<850:
            try tracker.markWrite(range)
            say("W \(range.offset) \(range.length)")
        case 850..<950:
            try tracker.markZero(range)
            say("Z \(range.offset) \(range.length)")
        case 950..<975:
            if open {
                let commit = Bool.random(using: &rng)
                try tracker.release(commit: commit)
                open = false
                say("R \(commit ? "commit" : "abort")")
            } else {
                let info = try tracker.checkpoint()
                open = true
                say("C \(info.changeID)")
            }
        default:
            try tracker.persist()
            say("P")
        }
    }
    try tracker.close(identity: nil)
    say("DONE")
} catch {
    FileHandle2.stderr("tracker-torture: \(error)\n")
    exit(1)
}
