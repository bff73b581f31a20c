@testable import BackupRepository
import BlockIO
import Codecs
import Foundation
import Synchronization
import Testing
import TestSupport

struct RoundTripTests {
    @Test(arguments: StoreKind.allCases)
    func chunksOfEverySizeAndKindRoundTrip(_ kind: StoreKind) throws {
        let (t, repo) = try kind.makeRepository("rt", chunkSize: 65536)
        var g = SeededGenerator(seed: 1)
        let chunks: [[UInt8]] = [
            [7],
            g.bytes(65536),
            [UInt8](repeating: 0x41, count: 65536),
            (0..<65536).map { UInt8(truncatingIfNeeded: $0 / 300) },
            g.bytes(1000),
        ]
        let writer = try repo.makeWriter()
        var outcomes: [StoreOutcome] = []
        for c in chunks {
            outcomes.append(try c.withUnsafeBytes { try writer.store(chunk: $0, id: XXH3.hash128($0)) })
        }
        #expect(outcomes.allSatisfy { if case .new = $0 { true } else { false } })
        // Incompressible data is stored raw: its envelope is the header plus the raw bytes.
        #expect(outcomes[1] == .new(storedBytes: 65536 + ObjectEnvelope.headerSize))
        guard case .new(let compressedSize) = outcomes[2] else { Issue.record("expected new"); return }
        #expect(compressedSize < 1000)
        // Before the flush nothing is visible in the repository (not durable yet).
        #expect(!repo.contains(XXH3.hash128(chunks[1])))
        try writer.flush()
        for c in chunks {
            let id = XXH3.hash128(c)
            #expect(repo.contains(id))
            #expect(try repo.readChunk(id) == c)
        }
        // A fresh open loads the index from the index files.
        let reopened = try t.open()
        for c in chunks { #expect(try reopened.readChunk(XXH3.hash128(c)) == c) }
        #expect(try reopened.readChunk(XXH3.hash128(chunks[0])) == [7])
    }

    @Test(arguments: StoreKind.allCases)
    func zeroChunksAreNeverStoredAndWrongIDsAreRefused(_ kind: StoreKind) throws {
        let (t, repo) = try kind.makeRepository("rt", chunkSize: 4096)
        defer { withExtendedLifetime(t) {} }
        let writer = try repo.makeWriter()
        let zero = [UInt8](repeating: 0, count: 4096)
        #expect(try zero.withUnsafeBytes { try writer.store(chunk: $0, id: XXH3.hash128($0)) } == .zero)
        let data: [UInt8] = [1, 2, 3]
        let error = #expect(throws: RepositoryError.self) {
            try data.withUnsafeBytes { try writer.store(chunk: $0, id: XXH3.hash128([9])) }
        }
        #expect(error?.code == .invalidArgument)
        try writer.flush()
        #expect(try repo.store.list(.pack).isEmpty)
        #expect(!repo.contains(XXH3.hash128(zero)))
    }

    @Test(arguments: StoreKind.allCases)
    func sameChunkStoredTwiceIsKeptOnce(_ kind: StoreKind) throws {
        let (t, repo) = try kind.makeRepository("rt", chunkSize: 4096)
        var g = SeededGenerator(seed: 2)
        let c = g.bytes(4096)
        let id = XXH3.hash128(c)
        let w1 = try repo.makeWriter()
        #expect(try c.withUnsafeBytes { try w1.store(chunk: $0, id: id) } == .new(storedBytes: 4096 + 48))
        #expect(try c.withUnsafeBytes { try w1.store(chunk: $0, id: id) } == .duplicate)
        try w1.flush()
        let w2 = try repo.makeWriter()
        #expect(try c.withUnsafeBytes { try w2.store(chunk: $0, id: id) } == .duplicate)
        try w2.flush()
        // After reopening, still a duplicate; exactly one copy in the packs.
        let reopened = try t.open()
        let w3 = try reopened.makeWriter()
        #expect(try c.withUnsafeBytes { try w3.store(chunk: $0, id: id) } == .duplicate)
        let packs = try repo.store.list(.pack)
        let copies = try packs.reduce(0) { n, key in
            n + (try repo.verifyPack(Digest128(hex: key.name)!)).filter { $0.id == id }.count
        }
        #expect(copies == 1)
    }

    @Test(arguments: StoreKind.allCases)
    func manyThreadsStoringTheSameChunksStoreEachOnce(_ kind: StoreKind) throws {
        let (t, repo) = try kind.makeRepository("rt", chunkSize: 4096)
        defer { withExtendedLifetime(t) {} }
        let writer = try repo.makeWriter(packTargetSize: 64 << 10)
        var g = SeededGenerator(seed: 3)
        let chunks = (0..<200).map { _ in g.bytes(4096) }
        let newCount = Mutex(0)
        let failures = Mutex(0)
        DispatchQueue.concurrentPerform(iterations: 8) { t in
            for k in 0..<chunks.count {
                let c = chunks[(k + t * 25) % chunks.count]
                do {
                    if case .new = try c.withUnsafeBytes({ try writer.store(chunk: $0, id: XXH3.hash128($0)) }) {
                        newCount.withLock { $0 += 1 }
                    }
                } catch {
                    failures.withLock { $0 += 1 }
                }
            }
        }
        #expect(failures.withLock { $0 } == 0)
        #expect(newCount.withLock { $0 } == chunks.count)
        try writer.flush()
        for c in chunks { #expect(try repo.readChunk(XXH3.hash128(c)) == c) }
        #expect(try repo.store.list(.pack).count > 1)
    }

    @Test(arguments: StoreKind.allCases)
    func diskMapsWithZeroEntriesAndAPartialLastChunkRoundTrip(_ kind: StoreKind) throws {
        let (t, repo) = try kind.makeRepository("rt", chunkSize: 4096)
        // 5000 chunks (two pages) and a partial last chunk of 100 bytes.
        let disk = DiskModel.mixed(size: 4096 * 4999 + 100, seed: 4, blockSize: 4096, zeroShare: 60)
        let record = try backup(disk, into: repo)
        let map = try repo.readDiskMap(record.diskMap)
        #expect(map.count == 5000)
        #expect(map.diskSize == UInt64(disk.bytes.count))
        #expect(map.byteRange(ofChunk: 4999) == ByteRange(offset: 4096 * 4999, length: 100))
        for i in 0..<map.count {
            let zero = disk.block(i).allSatisfy { $0 == 0 }
            #expect(map[i] == (zero ? nil : disk.block(i).withUnsafeBytes { XXH3.hash128($0) }))
        }
        #expect(try restore(record, from: repo) == disk.bytes)
        #expect(try t.open().readDiskMap(record.diskMap) == map)
    }

    @Test(arguments: StoreKind.allCases)
    func mapsThatDifferInOneEntryShareEveryOtherPage(_ kind: StoreKind) throws {
        let (t, repo) = try kind.makeRepository("rt", chunkSize: 4096)
        defer { withExtendedLifetime(t) {} }
        var disk = DiskModel.mixed(size: 4096 * 10_000, seed: 5, blockSize: 4096, zeroShare: 80)
        let first = try backup(disk, into: repo)
        let pagesBefore = try repo.store.list(.mapPage).count
        #expect(pagesBefore == 3)
        disk.scribble(block: 5000, seed: 99)
        let second = try backup(disk, into: repo)
        #expect(first.diskMap != second.diskMap)
        // Only the page holding entry 5000 is new.
        #expect(try repo.store.list(.mapPage).count == pagesBefore + 1)
        #expect(try restore(second, from: repo) == disk.bytes)
        #expect(try XXH3.hash128(restore(first, from: repo)) != disk.hash)
    }

    @Test func resizedCopyKeepsEntriesAndForgetsTheBoundaryChunk() throws {
        var parent = try DiskMap(diskSize: 4096 * 3 + 10, chunkSize: 4096)
        for i in 0..<parent.count { parent[i] = Digest128(high: 1, low: UInt64(i + 1)) }
        let grown = try DiskMap(copying: parent, resizedTo: 4096 * 6)
        #expect(grown.count == 6)
        #expect(grown[0] == parent[0] && grown[2] == parent[2])
        #expect(grown[3] == nil) // was partial: its ID described 10 bytes
        #expect(grown[5] == nil)
        let shrunk = try DiskMap(copying: parent, resizedTo: 4096 + 5)
        #expect(shrunk.count == 2)
        #expect(shrunk[0] == parent[0])
        #expect(shrunk[1] == nil) // now partial
        #expect(throws: RepositoryError.self) { try DiskMap(diskSize: 100, chunkSize: 3000) }
    }

    @Test(arguments: StoreKind.allCases)
    func snapshotRecordsRoundTripAndSortByTime(_ kind: StoreKind) throws {
        let (t, repo) = try kind.makeRepository("rt", chunkSize: 4096)
        defer { withExtendedLifetime(t) {} }
        let disk = DiskModel.mixed(size: 4096 * 8, seed: 6, blockSize: 4096)
        let writer = try repo.makeWriter()
        for i in 0..<disk.blockCount { _ = try disk.block(i).withUnsafeBytes { try writer.store(chunk: $0, id: XXH3.hash128($0)) } }
        var map = try DiskMap(diskSize: UInt64(disk.bytes.count), chunkSize: 4096)
        for i in 0..<disk.blockCount where !disk.block(i).allSatisfy({ $0 == 0 }) {
            map[i] = disk.block(i).withUnsafeBytes { XXH3.hash128($0) }
        }
        let mapID = try writer.writeDiskMap(map)
        let record = SnapshotRecord(id: "ab" + String(repeating: "0", count: 30), diskName: "vm1-disk0",
                                    time: Date(timeIntervalSince1970: 1_790_000_000.5), diskSize: UInt64(disk.bytes.count),
                                    chunkSize: 4096, parent: "cd" + String(repeating: "1", count: 30),
                                    changeID: "52e1c3f0-0000-4000-8000-000000000001/42", source: .nbdBitmap,
                                    tags: ["nightly", "vm1"],
                                    stats: .init(bytesRead: 1, chunksNew: 2, chunksReused: 3, chunksZero: 4, bytesStored: 5, seconds: 6.25),
                                    diskMap: mapID)
        try writer.commit(record)
        #expect(throws: RepositoryError.self) { try writer.commit(record) }
        #expect(try repo.readSnapshot(id: record.id) == record)
        // Two more, an earlier and a later one, written by later writers.
        let early = try backup(disk, into: repo, id: "ab1" + String(repeating: "0", count: 29), time: Date(timeIntervalSince1970: 1_700_000_000))
        let late = try backup(disk, into: repo, id: "ff" + String(repeating: "0", count: 30), time: Date(timeIntervalSince1970: 1_800_000_000))
        #expect(try repo.snapshots().map(\.id) == [early.id, record.id, late.id])
        #expect(try repo.snapshot(matching: "ff").id == late.id)
        #expect(try repo.snapshot(matching: record.id).id == record.id)
        #expect((#expect(throws: RepositoryError.self) { try repo.snapshot(matching: "ab") })?.code == .ambiguous)
        #expect((#expect(throws: RepositoryError.self) { try repo.snapshot(matching: "0123") })?.code == .notFound)
        #expect((#expect(throws: RepositoryError.self) { try repo.snapshot(matching: "../x") })?.code == .notFound)
    }

    @Test(arguments: StoreKind.allCases)
    func aDiskMapNamingAMissingChunkIsRefused(_ kind: StoreKind) throws {
        let (t, repo) = try kind.makeRepository("rt", chunkSize: 4096)
        defer { withExtendedLifetime(t) {} }
        let writer = try repo.makeWriter()
        var map = try DiskMap(diskSize: 8192, chunkSize: 4096)
        map[1] = XXH3.hash128([1, 2, 3])
        let e = #expect(throws: RepositoryError.self) { try writer.writeDiskMap(map) }
        #expect(e?.code == .invalidArgument)
        #expect(try repo.store.list(.diskMap).isEmpty)
    }

    @Test func chunkIndexAgreesWithADictionary() throws {
        var index = ChunkIndex(reserve: 16)
        var model: [ChunkID: ChunkLocation] = [:]
        var g = SeededGenerator(seed: 7)
        let packs = (0..<50).map { _ in Digest128(high: g.next(), low: g.next()) }
        for _ in 0..<100_000 {
            let id = Digest128(high: g.next(), low: g.next())
            let loc = ChunkLocation(pack: packs[Int(g.next() % 50)], offset: g.next() % (1 << 30), length: Int(g.next() % 70_000))
            index.insert(id, pack: loc.pack, offset: loc.offset, length: loc.length)
            model[id] = loc
        }
        let count = index.count
        #expect(count == model.count)
        var mismatches = 0
        for (id, loc) in model where index.location(of: id) != loc { mismatches += 1 }
        #expect(mismatches == 0)
        var falseHits = 0
        for _ in 0..<10_000 where index.contains(Digest128(high: g.next(), low: g.next())) { falseHits += 1 }
        #expect(falseHits == 0)
        // Same low half, different high half: still told apart.
        let a = Digest128(high: 1, low: 42), b = Digest128(high: 2, low: 42)
        index.insert(a, pack: packs[0], offset: 1, length: 1)
        let found = (index.contains(a), index.contains(b))
        #expect(found == (true, false))
    }
}
