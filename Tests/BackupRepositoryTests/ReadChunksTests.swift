@testable import BackupRepository
import BlockIO
import Codecs
import Foundation
import Testing
import TestSupport

struct ReadChunksTests {
    /// Batched reads give every chunk its own bytes or its own error: a damaged chunk in the
    /// middle of a run spoils only itself, a missing one only itself, nil slots stay untouched.
    @Test func everySlotGetsItsChunkOrItsOwnError() throws {
        let dir = try TemporaryDirectory("readchunks")
        let repo = try Repository.initialize(at: dir.path, chunkSize: 4096)
        let disk = DiskModel.mixed(size: 4096 * 40, seed: 5, blockSize: 4096, zeroShare: 0)
        // Small packs, so a batch spans several packs and runs.
        let record = try backup(disk, into: repo, packTargetSize: 24 << 10)
        let map = try repo.readDiskMap(record.diskMap)
        let store = LocalObjectStore(root: dir.path)

        // Damage the stored bytes of chunk 13 (flip one byte inside its payload).
        let victim = try #require(map[13])
        let loc = try #require(repo.location(of: victim))
        let packPath = store.path(of: ObjectKey(.pack, loc.pack.hex))
        let file = try BlockFile(path: packPath, mode: .readWrite)
        let at = loc.offset + UInt64(ObjectEnvelope.headerSize) + 7
        let old = try file.read(count: 1, at: at)
        try file.write([old[0] ^ 0x40], at: at)

        var ids: [ChunkID?] = (0..<40).map { map[$0] }
        ids[3] = nil
        ids[20] = XXH3.hash128([1, 2, 3]) // not in the repository
        var buffer = [UInt8](repeating: 0xEE, count: ids.count * 4096)
        let results = buffer.withUnsafeMutableBytes { repo.readChunks(ids, into: $0) }

        for k in 0..<ids.count {
            let slot = Array(buffer[(k * 4096)..<((k + 1) * 4096)])
            switch k {
            case 3:
                #expect((try? results[k].get()) == 0)
                #expect(slot.allSatisfy { $0 == 0xEE }, "a nil slot was written")
            case 13:
                guard case .failure(let e) = results[k] else { Issue.record("damaged chunk 13 read back"); continue }
                #expect(e.code == .damaged && e.object == "pack \(loc.pack)")
            case 20:
                guard case .failure(let e) = results[k] else { Issue.record("missing chunk read back"); continue }
                #expect(e.code == .notFound)
            default:
                #expect((try? results[k].get()) == 4096)
                #expect(slot == Array(disk.block(k)), "slot \(k) holds the wrong bytes")
            }
        }
    }
}
