// Repository micro-benchmarks (numbers for BENCHMARKS.md, not tests):
//   swift run -c release tessera-microbench repository [--chunks N] [--index-chunks N] [--skip-maps]
// Measures chunk store throughput, index lookups/s, index bytes per chunk, disk-map size per TiB.
import BackupRepository
import Codecs
import Dispatch
import Foundation
#if canImport(Glibc)
import Glibc
#endif

enum RepositoryBench {
    static func run(_ arguments: [String]) {
        func option(_ name: String, _ fallback: Int) -> Int {
            guard let i = arguments.firstIndex(of: name), i + 1 < arguments.count, let v = Int(arguments[i + 1]) else { return fallback }
            return v
        }
        let work = FileManager.default.temporaryDirectory.appendingPathComponent("tessera-repobench-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: work) }
        do {
            print("repository micro-benchmarks (zstd \(Zstd.libraryVersion), \(ProcessInfo.processInfo.activeProcessorCount) cores)")
            // The index first: its memory is measured as RSS growth, which later frees would blur.
            indexBench(chunks: option("--index-chunks", 1_000_000))
            try storeThroughput(work: work + "/store", chunks: option("--chunks", 2048))
            if !arguments.contains("--skip-maps") { try diskMapSize(work: work + "/maps") }
        } catch {
            print("benchmark failed: \(error)")
        }
    }

    static func seconds(_ body: () throws -> Void) rethrows -> Double {
        let t0 = DispatchTime.now().uptimeNanoseconds
        try body()
        return Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
    }

    /// 64 KiB chunks whose first half is random and second half a repeating pattern
    /// ("half-compressible"): zstd stores them at about half size.
    static func makeChunks(_ n: Int, seed: UInt64) -> [[UInt8]] {
        var g = SystemRandomNumberGenerator()
        _ = seed
        return (0..<n).map { i in
            var c = [UInt8](repeating: 0, count: 65536)
            for j in stride(from: 0, to: 32768, by: 8) {
                let w = g.next() as UInt64
                withUnsafeBytes(of: w) { c.replaceSubrange(j..<j + 8, with: $0) }
            }
            for j in 32768..<65536 { c[j] = UInt8(truncatingIfNeeded: (j * 7 + i) / 16) }
            return c
        }
    }

    static func storeThroughput(work: String, chunks n: Int) throws {
        let chunks = makeChunks(n, seed: 1)
        let ids = chunks.map { XXH3.hash128($0) }
        let mib = Double(n * 65536) / 1_048_576
        for threads in [1, 2] {
            try? FileManager.default.removeItem(atPath: work)
            let repo = try Repository.initialize(at: work)
            let writer = try repo.makeWriter()
            let stored = LockedCounter()
            let t = try seconds {
                DispatchQueue.concurrentPerform(iterations: threads) { t in
                    for i in stride(from: t, to: n, by: threads) {
                        if case .new(let b)? = try? chunks[i].withUnsafeBytes({ try writer.store(chunk: $0, id: ids[i]) }) {
                            stored.add(b)
                        }
                    }
                }
                try writer.flush()
            }
            print(String(format: "store: %d x 64 KiB half-compressible chunks, %d thread(s): %.0f MB/s (%.1f MiB in %.2f s, stored %.1f MiB, packs+index fsynced)",
                         n, threads, mib * 1.048576 / t, mib, t, Double(stored.value) / 1_048_576))
        }
        // Read back (checksum + decompress + re-hash).
        let repo = try Repository.open(at: work)
        let t = try seconds { for id in ids { _ = try repo.readChunk(id) } }
        print(String(format: "read:  %d chunks, 1 thread: %.0f MB/s", n, mib * 1.048576 / t))
    }

    /// Resident set size from /proc/self/statm (pages touched: large tables are mmapped
    /// and counted once written, which they all are here).
    static func allocatedBytes() -> Int {
        guard let s = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let fields = s.split(separator: " ")
        return fields.count > 1 ? (Int(fields[1]) ?? 0) * Int(sysconf(Int32(_SC_PAGESIZE))) : 0
    }

    static func indexBench(chunks n: Int) {
        var g = SystemRandomNumberGenerator()
        let ids = (0..<n).map { _ in Digest128(high: g.next(), low: g.next()) }
        let packs = (0..<(n / 256 + 1)).map { _ in Digest128(high: g.next(), low: g.next()) }

        // The load path: index files say how many entries there are, so the table is reserved.
        var before = allocatedBytes()
        var index = ChunkIndex(reserve: n)
        for (i, id) in ids.enumerated() { index.insert(id, pack: packs[i / 256], offset: UInt64(i % 256) * 65_600, length: 65_584) }
        var used = allocatedBytes() - before
        print(String(format: "index: %d chunks, reserved (load path): %.1f bytes/chunk (RSS), %.1f by its own count",
                     n, Double(used) / Double(n), Double(index.memoryBytes) / Double(n)))

        before = allocatedBytes()
        var grown = ChunkIndex()
        for (i, id) in ids.enumerated() { grown.insert(id, pack: packs[i / 256], offset: UInt64(i % 256) * 65_600, length: 65_584) }
        used = allocatedBytes() - before
        print(String(format: "index: %d chunks, grown by inserts: %.1f bytes/chunk by its own count (RSS growth %.1f)",
                     n, Double(grown.memoryBytes) / Double(n), Double(used) / Double(n)))

        before = allocatedBytes()
        var dict: [Digest128: ChunkLocation] = [:]
        for (i, id) in ids.enumerated() { dict[id] = ChunkLocation(pack: packs[i / 256], offset: UInt64(i % 256) * 65_600, length: 65_584) }
        used = allocatedBytes() - before
        print(String(format: "for comparison, Dictionary<Digest128, ChunkLocation>: %.1f bytes/chunk (RSS)", Double(used) / Double(n)))
        withExtendedLifetime(dict) {}

        var hits = 0
        let misses = (0..<n).map { _ in Digest128(high: g.next(), low: g.next()) }
        let tHit = seconds { for id in ids where index.contains(id) { hits += 1 } }
        let tMiss = seconds { for id in misses where index.contains(id) { hits += 1 } }
        print(String(format: "lookups: %.1f M/s (hits), %.1f M/s (misses), 1 thread, random order (%d)",
                     Double(n) / tHit / 1e6, Double(n) / tMiss / 1e6, hits))
    }

    static func directoryBytes(_ path: String) -> Int {
        var total = 0
        let e = FileManager.default.enumerator(atPath: path)
        while let p = e?.nextObject() as? String {
            if let a = try? FileManager.default.attributesOfItem(atPath: "\(path)/\(p)"), a[.type] as? FileAttributeType == .typeRegular {
                total += (a[.size] as? Int) ?? 0
            }
        }
        return total
    }

    /// A 1 TiB disk at 64 KiB: 16,777,216 entries in 4,096 pages.
    static func diskMapSize(work: String) throws {
        let repo = try Repository.initialize(at: work)
        let writer = try repo.makeWriter()
        // The map must name stored chunks: store one real chunk and use its ID everywhere
        // except where we want distinct IDs... distinct IDs are what makes pages big, so
        // store a few thousand distinct chunks and fill the map with them at random.
        var g = SystemRandomNumberGenerator()
        var ids: [ChunkID] = []
        for i in 0..<4096 {
            var c = [UInt8](repeating: 0, count: 64)
            withUnsafeBytes(of: UInt64(i) &+ 1) { c.replaceSubrange(0..<8, with: $0) }
            let id = XXH3.hash128(c)
            _ = try c.withUnsafeBytes { try writer.store(chunk: $0, id: id) }
            ids.append(id)
        }
        try writer.flush()
        let tib: UInt64 = 1 << 40
        var map = try DiskMap(diskSize: tib, chunkSize: 65536)
        for i in 0..<map.count { map[i] = ids[Int(g.next() % 4096)] }
        let mapsBefore = directoryBytes(work + "/maps")
        let t = try seconds { _ = try writer.writeDiskMap(map) }
        let full = directoryBytes(work + "/maps") - mapsBefore
        let shared0 = directoryBytes(work + "/maps")
        _ = try writer.writeDiskMap(map) // identical map: every page shared, nothing new but the map object
        var changed = map
        changed[12345] = ids[0] == changed[12345] ? ids[1] : ids[0]
        _ = try writer.writeDiskMap(changed)
        let sharedTwo = directoryBytes(work + "/maps") - shared0
        print(String(format: "disk map, 1 TiB at 64 KiB (%d entries, %d pages), entries drawn from 4096 chunk IDs: %.1f MiB (all-distinct IDs: 256 MiB = 16 B/entry) (written in %.1f s)",
                     map.count, (map.count + 4095) / 4096, Double(full) / 1_048_576, t))
        print(String(format: "disk map sharing every page with its parent: ~%.0f KiB (map object only); one entry changed: map object + 1 new page = %.0f KiB",
                     Double(map.count / 4096 * 16 + 48) / 1024, Double(sharedTwo) / 1024))
        var empty = try DiskMap(diskSize: tib, chunkSize: 65536)
        empty[0] = ids[0]
        let e0 = directoryBytes(work + "/maps")
        _ = try writer.writeDiskMap(empty)
        print(String(format: "disk map of an empty 1 TiB disk (all zero chunks): %.0f KiB", Double(directoryBytes(work + "/maps") - e0) / 1024))
    }
}

/// A counter shared by benchmark threads.
final class LockedCounter: @unchecked Sendable {
    private var v = 0
    private let lock = NSLock()
    func add(_ n: Int) { lock.lock(); v += n; lock.unlock() }
    var value: Int { lock.lock(); defer { lock.unlock() }; return v }
}
