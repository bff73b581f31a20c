import BlockIO
import ChangeTracking
import Foundation

/// Marks per second: sequential and random 4 KiB marks, 1 and 2 threads, and the cost of the
/// activity log when a stream keeps touching new extents (each needs a logged, fdatasync'd
/// record) against a stream that stays inside hot extents.
///   tessera-microbench tracker [--marks N] [--dir PATH]
enum TrackerBench {
    static func run(_ arguments: [String]) {
        var marks = 2_000_000
        var base = NSTemporaryDirectory()
        var i = 0
        while i < arguments.count {
            if arguments[i] == "--marks", i + 1 < arguments.count { marks = Int(arguments[i + 1]) ?? marks; i += 1 }
            if arguments[i] == "--dir", i + 1 < arguments.count { base = arguments[i + 1]; i += 1 }
            i += 1
        }
        let diskSize: UInt64 = 64 << 30
        print("tracker benchmark: disk 64 GiB, granularity 64 KiB, log extent 4 MiB, \(marks) marks per run")
        print("| stream | threads | marks/s |")
        print("|---|---|---|")
        for (name, random) in [("sequential 4 KiB", false), ("random 4 KiB (hot extents)", true)] {
            for threads in [1, 2] {
                let rate = measure(base: base, diskSize: diskSize, threads: threads, marks: marks) { t, n in
                    // Random marks stay inside the first 256 MiB (64 extents) so the log is hot
                    // after warm-up: this measures the in-memory path.
                    var x = UInt64(t + 1) &* 0x9E37_79B9_7F4A_7C15
                    return (0..<n).map { k in
                        if random {
                            x = x &* 6364136223846793005 &+ 1442695040888963407
                            return (x >> 20) % (256 << 20) / 4096 * 4096
                        }
                        return UInt64(t) * (8 << 30) + UInt64(k % (2 << 20)) * 4096
                    }
                }
                print("| \(name) | \(threads) | \(format(rate)) |")
            }
        }
        // Cold: every mark lands in a new 4 MiB extent → one log record + fdatasync each.
        let coldMarks = min(marks, 2000)
        let cold = measure(base: base, diskSize: diskSize, threads: 1, marks: coldMarks) { _, n in
            (0..<n).map { UInt64($0) * (4 << 20) % diskSize }
        }
        print("| new extent every mark (log + fdatasync) | 1 | \(format(cold)) |")
        let cold2 = measure(base: base, diskSize: diskSize, threads: 2, marks: coldMarks) { t, n in
            (0..<n).map { (UInt64($0) * 2 + UInt64(t)) * (4 << 20) % diskSize }
        }
        print("| new extent every mark (group commit) | 2 | \(format(cold2)) |")
        let persistStart = DispatchTime.now()
        if let t = try? ChangeTracker.open(stateDirectory: base + "/tessera-bench-persist", diskSize: 2 << 40, identity: nil) {
            let opened = seconds(since: persistStart)
            let s = DispatchTime.now()
            try? t.persist()
            print("2 TiB tracker: open \(String(format: "%.2f", opened)) s, persist \(String(format: "%.3f", seconds(since: s))) s, memory \(t.status().memoryFootprint >> 20) MiB")
            try? t.close(identity: nil)
        }
        try? FileManager.default.removeItem(atPath: base + "/tessera-bench-persist")
    }

    static func measure(base: String, diskSize: UInt64, threads: Int, marks: Int,
                        offsets: (Int, Int) -> [UInt64]) -> Double {
        let dir = base + "/tessera-bench-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        guard let tracker = try? ChangeTracker.open(stateDirectory: dir, diskSize: diskSize, identity: nil) else { return 0 }
        let perThread = marks / threads
        let work = (0..<threads).map { offsets($0, perThread) }
        let start = DispatchTime.now()
        DispatchQueue.concurrentPerform(iterations: threads) { t in
            for offset in work[t] { try? tracker.markWrite(ByteRange(offset: offset, length: 4096)) }
        }
        let elapsed = seconds(since: start)
        try? tracker.close(identity: nil)
        return Double(perThread * threads) / elapsed
    }

    static func seconds(since start: DispatchTime) -> Double {
        Double(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds) / 1e9
    }

    static func format(_ rate: Double) -> String {
        rate >= 1e6 ? String(format: "%.2f M", rate / 1e6) : String(format: "%.0f", rate)
    }
}
