@testable import BackupRepository
import BlockIO
import Codecs
import Foundation
import Testing
import TestSupport

/// The frozen v1 repository (made once by `make-fixtures repository-v1`) stays readable,
/// byte for byte, by every later build.
struct FixtureTests {
    let path = BuiltProducts.fixtures + "/repository-v1"

    /// The recipe of `Tools/make-fixtures` (fixtureDisks), re-stated here as an independent oracle.
    func expectedDisks() -> ([UInt8], [UInt8]) {
        var g = SeededGenerator(seed: 0x7E55_E4A1)
        var disk1: [UInt8] = []
        for i in 0..<16 {
            switch i {
            case 4, 5, 12: disk1 += [UInt8](repeating: 0, count: 4096)
            case 6: disk1 += (0..<4096).map { UInt8(truncatingIfNeeded: $0 / 64) }
            case 7: disk1 += disk1[0..<4096]
            default: disk1 += g.bytes(4096)
            }
        }
        disk1 += g.bytes(1536)
        var disk2 = disk1
        disk2.replaceSubrange(2 * 4096..<3 * 4096, with: g.bytes(4096))
        disk2.replaceSubrange(4 * 4096..<5 * 4096, with: g.bytes(4096))
        disk2.replaceSubrange(9 * 4096..<10 * 4096, with: [UInt8](repeating: 0, count: 4096))
        return (disk1, disk2)
    }

    @Test func theFixtureIsExactlyTheFrozenFiles() {
        // Content-addressed names: a regenerated or edited fixture changes this list.
        #expect(filesUnder(path) == [
            "config",
            "index/894745480e2ac51f22d58a660befaf05.idx",
            "index/92d950fd824504de75c950c6cf82aa4f.idx",
            "maps/52/529f536867815c36dc89900079cb775b.page",
            "maps/60/604fdfc4b5ee7a990615123181409553.map",
            "maps/ac/ac4490ca9861dd6bbc563f53c372b4d1.map",
            "maps/b9/b9470c907dd45dee6ac8a6f425d05e2a.page",
            "packs/1f/1f85159c0ae2ad47c57cf881d8875d88.pack",
            "packs/37/37c4f53fd9f25da08b469e69594e48d3.pack",
            "snapshots/5a000000000000000000000000000001.snap",
            "snapshots/5a000000000000000000000000000002.snap",
        ])
    }

    @Test func bothSnapshotsRestoreToTheExactBytes() throws {
        let repo = try Repository.open(at: path)
        #expect(repo.config.id == "7e55e4a0000000000000000000000001")
        #expect(repo.config.chunkSize == 4096)
        #expect(repo.config.version == 1)
        #expect(repo.config.created == Date(timeIntervalSince1970: 1_767_225_600))
        let records = try repo.snapshots()
        #expect(records.map(\.id) == ["5a000000000000000000000000000001", "5a000000000000000000000000000002"])
        #expect(records[1].parent == records[0].id)
        #expect(records[0].source == .full && records[1].source == .scan)
        #expect(records[0].stats.chunksZero == 3 && records[0].stats.chunksReused == 1)
        let (disk1, disk2) = expectedDisks()
        #expect(XXH3.hash128(disk1).hex == "f4b95015a8d78bbb324c241e7d44237d")
        #expect(XXH3.hash128(disk2).hex == "594bcef1ff0080107f122a939af46506")
        #expect(try restore(records[0], from: repo) == disk1)
        #expect(try restore(records[1], from: repo) == disk2)
        let map2 = try repo.readDiskMap(records[1].diskMap)
        #expect(map2.count == 17 && map2[9] == nil && map2[4] != nil)
        #expect(map2.byteRange(ofChunk: 16).length == 1536)
        for key in try repo.store.list(.pack) { _ = try repo.verifyPack(try #require(Digest128(hex: key.name))) }
        #expect(repo.damagedIndexFiles.isEmpty)
    }
}
