import Foundation
import Testing
import TestSupport

/// Converging backups (`backup --filter`): passes over the live disk, then a checkpoint for
/// the last delta. The oracle: one writer that never stops, one request at a time, each write
/// a 4 KiB block holding its own sequence number and block number, every acknowledgement
/// logged. The disk at the checkpoint is then the state after some prefix of the log (the
/// checkpoint drains the write in flight), so a restored snapshot is right exactly when, with
/// I its highest sequence number, every block holds the last write to it numbered ≤ I.
@Suite("Converging backups")
struct ConvergingBackupCLITests {
    static let block = 4096
    static let blocks = 16384   // a 64 MiB disk: more than the 32 MiB a checkpoint reads at once

    /// A python3-libnbd writer: random 4 KiB blocks, half of them in a hot quarter of the disk.
    static let writer = """
        import nbd, os, random, struct, sys
        uri, log, stop = sys.argv[1], sys.argv[2], sys.argv[3]
        h = nbd.NBD()
        h.connect_uri(uri)
        blocks = h.get_size() // 4096
        rng = random.Random(7)
        with open(log, "w") as out:
            i = 0
            while not os.path.exists(stop):
                i += 1
                b = rng.randrange(blocks // 4) if rng.random() < 0.5 else rng.randrange(blocks)
                h.pwrite(struct.pack("<QQ", i, b) * 256, b * 4096)
                out.write("%d %d\\n" % (i, b))
                if i % 64 == 0:
                    out.flush()
        h.shutdown()
        """

    /// Checks a restored image against the write log; returns the prefix it is the state after.
    static func prefix(of image: Data, log: [(index: Int, block: Int)], _ what: String) -> Int {
        var holds = [Int](repeating: 0, count: blocks)
        for b in 0..<blocks {
            let bytes = image[b * block..<(b + 1) * block]
            if bytes.allSatisfy({ $0 == 0 }) { continue }
            let (i, claimed) = bytes.withUnsafeBytes { ($0.loadUnaligned(fromByteOffset: 0, as: UInt64.self), $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self)) }
            let pattern = bytes.withUnsafeBytes { raw in (0..<256).allSatisfy { raw.loadUnaligned(fromByteOffset: $0 * 16, as: UInt64.self) == i && raw.loadUnaligned(fromByteOffset: $0 * 16 + 8, as: UInt64.self) == claimed } }
            #expect(pattern && Int(claimed) == b, "\(what): block \(b) holds no single write (torn, or another block's data)")
            holds[b] = Int(i)
        }
        let top = holds.max() ?? 0
        var last = [Int](repeating: 0, count: blocks)
        for w in log where w.index <= top { last[w.block] = w.index }
        let wrong = (0..<blocks).filter { holds[$0] != last[$0] }
        #expect(wrong.isEmpty, "\(what): \(wrong.count) blocks are not the disk after write \(top), e.g. block \(wrong.first ?? 0) holds write \(holds[wrong.first ?? 0]), the disk then held write \(last[wrong.first ?? 0])")
        return top
    }

    @Test("under a writer that never stops, every snapshot is exactly the disk at its checkpoint")
    func snapshotsAreExactUnderAContinuousWriter() throws {
        let dir = try TemporaryDirectory("converge")
        let disk = dir.file("disk.raw"), repo = dir.file("repo")
        let log = dir.file("writes.log"), stop = dir.file("stop"), script = dir.file("writer.py")
        #expect(FileManager.default.createFile(atPath: disk, contents: nil))
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: disk))
        try handle.truncate(atOffset: UInt64(Self.blocks * Self.block))
        try handle.close()
        try Self.writer.write(toFile: script, atomically: true, encoding: .utf8)
        try Tessera.ok(["init", "--repo", repo])
        let filter = try FilterProcess.started(directory: dir, diskPath: disk)
        defer { if filter.isRunning { filter.kill() } }

        let writer = try ChildProcess("/usr/bin/python3", [script, filter.uri, log, stop])
        #expect(pollUntil(timeout: 60) { ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").count > 20_000 }, "the writer did not start")
        var results: [(id: String, summary: [String: Any])] = []
        for (n, arguments) in [[], [], ["--no-converge"]].enumerated() {
            // Before the incremental: enough writes that its delta exceeds what a checkpoint
            // reads at once (32 MiB), so it too converges.
            if n == 1 {
                let lines = (try? String(contentsOfFile: log, encoding: .utf8))?.count ?? 0
                #expect(pollUntil(timeout: 120) { ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").count > lines + 40_000 })
            }
            let r = try Tessera.ok(["backup", "--repo", repo, "--disk", filter.diskName, "--filter", filter.controlPath, "--json"] + arguments)
            let s = try Tessera.summary(r)
            results.append((s["snapshot"] as? String ?? "", s))
        }
        _ = FileManager.default.createFile(atPath: stop, contents: nil)
        let (end, timedOut) = writer.wait(timeout: 60)
        #expect(!timedOut && end.succeeded, "the writer: \(end.stderr)")

        let writes = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n").compactMap { line -> (index: Int, block: Int)? in
            let f = line.split(separator: " ")
            guard f.count == 2, let i = Int(f[0]), let b = Int(f[1]) else { return nil }
            return (i, b)
        }
        var previous = 0
        for (n, (id, summary)) in results.enumerated() {
            let image = try Tessera.restore(repo: repo, snapshot: id, scratch: dir.path)
            let top = Self.prefix(of: image, log: writes, "snapshot \(n + 1)")
            #expect(top > previous, "snapshot \(n + 1) does not hold later writes than the one before")
            previous = top
            let passes = summary["passes"] as? [[String: Any]] ?? []
            if n < 2 {
                #expect(!passes.isEmpty, "backup \(n + 1) took its checkpoint without reading the live disk first: \(summary)")
                #expect(summary["convergence"] is String)
            } else {
                #expect(passes.isEmpty, "--no-converge still read the live disk first: \(summary)")
            }
            #expect(summary["checkpoint_seconds"] is Double, "no checkpoint time in \(summary)")
        }
        #expect(writes.count > 1000, "the writer wrote only \(writes.count) blocks")
        let check = try Tessera.run(["check", "--repo", repo, "--read-data"])
        #expect(check.succeeded, "\(check.stdout)")
        filter.stop()
    }
}
