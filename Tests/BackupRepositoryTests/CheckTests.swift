@testable import BackupRepository
import BlockIO
import Codecs
import Foundation
import Testing
import TestSupport

/// The corruption matrix: every object kind damaged one way at a time; `check` reports
/// exactly that damage, naming the object, the snapshots and the disk byte ranges.
/// The oracles are computed from the test disks, not from the checker. Every test runs on
/// every store (a byte flipped in a file on disk, `MemoryObjectStore.tamper` in memory),
/// except the frozen fixture's, which is a folder.
struct CheckTests {
    /// Two snapshots of two different disks: two packs, two index files, two maps, two pages.
    struct Scene {
        let t: TestRepository
        let disks: [DiskModel]
        let records: [SnapshotRecord]

        init(_ kind: StoreKind) throws {
            t = try kind.makeStore("check")
            let repo = try t.initialize(chunkSize: 4096)
            disks = [DiskModel.mixed(size: 4096 * 24 + 1000, seed: 61, blockSize: 4096, zeroShare: 10),
                     DiskModel.mixed(size: 4096 * 20, seed: 62, blockSize: 4096, zeroShare: 10)]
            var records: [SnapshotRecord] = []
            for (i, d) in disks.enumerated() { records.append(try backup(d, into: repo, name: "disk\(i)")) }
            self.records = records
        }

        var store: any ObjectStore { t.store }
        func open() throws -> Repository { try t.open() }

        /// The byte ranges of disk `d` that hold chunks for which `pick` is true.
        func ranges(_ d: Int, where pick: (ChunkID) -> Bool) -> [ByteRange] {
            let disk = disks[d]
            var out: [ByteRange] = []
            for i in 0..<disk.blockCount {
                let c = disk.block(i)
                guard !c.allSatisfy({ $0 == 0 }) else { continue }
                if pick(c.withUnsafeBytes { XXH3.hash128($0) }) {
                    out.append(ByteRange(offset: UInt64(i * disk.blockSize), length: UInt64(c.count)))
                }
            }
            return out.coalesced()
        }

        func whole(_ d: Int) -> SnapshotDamage {
            SnapshotDamage(snapshot: records[d].id, disk: "disk\(d)", ranges: [ByteRange(offset: 0, length: UInt64(disks[d].bytes.count))])
        }

        func chunks(_ d: Int) -> Set<ChunkID> {
            Set((0..<disks[d].blockCount).compactMap { i in
                let c = disks[d].block(i)
                return c.allSatisfy { $0 == 0 } ? nil : c.withUnsafeBytes { XXH3.hash128($0) }
            })
        }

        /// The pack holding disk `d`'s chunks (each backup wrote its own), and its index file.
        func pack(_ d: Int) throws -> PackID {
            let first = try #require(chunks(d).first)
            let loc = try #require(try open().location(of: first))
            return loc.pack
        }

        func indexFile(_ d: Int) throws -> String {
            let repo = try open()
            let p = try pack(d)
            for name in try store.list(.index).map(\.name) where try repo.readIndexFile(name).contains(where: { $0.pack == p }) {
                return name
            }
            throw CommandError(description: "no index file names pack \(p)")
        }

        func damage(_ key: ObjectKey, _ how: Damage, other: ObjectKey? = nil, at position: Int? = nil) throws {
            try t.damage(key, how, other: other, at: position)
        }

        func check(_ readData: DataSelection = .none, setAside: Bool = true) throws -> RepositoryChecker.Report {
            try t.check(readData, setAside: setAside)
        }
    }

    func expectOne(_ report: RepositoryChecker.Report, kind: CheckFinding.Kind, object: String, damage: [SnapshotDamage],
                   sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(report.findings.count == 1, "findings: \(report.findings)", sourceLocation: sourceLocation)
        guard let f = report.findings.first else { return }
        #expect(f.kind == kind, sourceLocation: sourceLocation)
        #expect(f.object == object, sourceLocation: sourceLocation)
        #expect(f.damage == damage, "damage \(f.damage) expected \(damage)", sourceLocation: sourceLocation)
    }

    @Test(arguments: StoreKind.allCases)
    func aCleanRepositoryChecksClean(_ kind: StoreKind) throws {
        let s = try Scene(kind)
        for mode in [DataSelection.none, .all, .percent(50), .slice(1, of: 2), .slice(2, of: 2)] {
            let r = try s.check(mode)
            #expect(r.isClean, "\(mode): \(r.findings)")
        }
        let all = try s.check(.all).summary
        #expect(all.snapshots == 2 && all.packsRead == 2 && all.chunksRead == s.chunks(0).count + s.chunks(1).count)
        #expect(all.unreferencedPacks == 0 && all.unreferencedDiskMaps == 0 && all.setAsideNow == 0)
    }

    /// Local only: the fixture is a folder.
    @Test func theFrozenV1FixtureChecksClean() throws {
        let dir = try TemporaryDirectory("check-fixture")
        try FileManager.default.copyItem(atPath: BuiltProducts.fixtures + "/repository-v1", toPath: dir.path + "/repo")
        let r = try RepositoryChecker.check(path: dir.path + "/repo", options: CheckOptions(readData: .all, setAside: false))
        #expect(r.isClean, "\(r.findings)")
        #expect(r.summary.snapshots > 0 && r.summary.chunksRead > 0)
    }

    /// No false alarms on a busier repository: shared chunks across disks, duplicate copies
    /// stored by two writers at once, a healed set-aside copy, garbage from an abandoned writer.
    @Test(arguments: StoreKind.allCases)
    func noFalseAlarmsOnDuplicatesSharedChunksAndHealedCopies(_ kind: StoreKind) throws {
        let (t, repo) = try kind.makeRepository("check-busy")
        var disk = DiskModel.mixed(size: 4096 * 40, seed: 63, blockSize: 4096, zeroShare: 20)
        // Two writers store the same chunks: two copies of each in different packs.
        let w1 = try repo.makeWriter(packTargetSize: 16 << 10), w2 = try repo.makeWriter(packTargetSize: 16 << 10)
        for i in 0..<disk.blockCount {
            for w in [w1, w2] { _ = try disk.block(i).withUnsafeBytes { try w.store(chunk: $0, id: XXH3.hash128($0)) } }
        }
        try w1.flush()
        try w2.flush()
        _ = try backup(disk, into: repo, name: "a")
        disk.scribble(block: 3, seed: 5)
        _ = try backup(disk, into: repo, name: "b")
        // A copy set aside, then healed by the next backup.
        let victim = disk.block(7).withUnsafeBytes { XXH3.hash128($0) }
        try repo.setChunkAside(victim, reason: "test")
        _ = try backup(disk, into: try t.open(), name: "a")
        let garbage = try repo.makeWriter(packTargetSize: 4096)
        _ = try DiskModel.mixed(size: 4096 * 4, seed: 64, blockSize: 4096, zeroShare: 0).bytes.withUnsafeBytes { b in
            try garbage.store(chunk: UnsafeRawBufferPointer(rebasing: b[0..<4096]), id: XXH3.hash128(UnsafeRawBufferPointer(rebasing: b[0..<4096])))
        }
        try garbage.flush()
        let r = try t.check(.all)
        #expect(r.isClean, "\(r.findings)")
        #expect(r.summary.unreferencedPacks >= 1 && r.summary.setAsideBefore == 1 && r.summary.setAsideNow == 0)
        #expect(try t.verifyAllSnapshots() == 3)
    }

    @Test func slicesAreDisjointAndCoverEveryPack() {
        var g = SeededGenerator(seed: 7)
        let packs = (0..<500).map { _ in Digest128(high: g.next(), low: g.next()) }
        for m in [1, 3, 7] {
            for p in packs {
                #expect((1...m).filter { DataSelection.slice($0, of: m).selects(p) }.count == 1)
            }
        }
        let half = packs.filter { DataSelection.percent(50).selects($0) }.count
        #expect(half > 200 && half < 300)
        #expect(DataSelection(subset: "2/7") == .slice(2, of: 7) && DataSelection(subset: "10%") == .percent(10))
        #expect(DataSelection(subset: "8/7") == nil && DataSelection(subset: "0%") == nil && DataSelection(subset: "x") == nil)
    }

    @Test(arguments: StoreKind.allCases, Damage.allCases)
    func config(_ kind: StoreKind, _ how: Damage) throws {
        let s = try Scene(kind)
        let both = [SnapshotDamage(snapshot: s.records[0].id, disk: "?", ranges: []), SnapshotDamage(snapshot: s.records[1].id, disk: "?", ranges: [])]
            .sorted()
        switch how {
        case .swap:
            // Another repository's config (different chunk size) put in its place.
            let (other, _) = try kind.makeRepository("check-other", chunkSize: 8192)
            let otherConfig = try other.store.get(.config)
            try s.t.change(.config) { $0 = otherConfig }
            expectOne(try s.check(), kind: .config, object: "config", damage: [s.whole(0), s.whole(1)].sorted())
        default:
            try s.damage(.config, how)
            expectOne(try s.check(), kind: .config, object: "config", damage: both)
        }
    }

    @Test(arguments: StoreKind.allCases, Damage.allCases)
    func snapshotRecord(_ kind: StoreKind, _ how: Damage) throws {
        let s = try Scene(kind)
        let key = ObjectKey(.snapshot, s.records[0].id)
        try s.damage(key, how, other: ObjectKey(.snapshot, s.records[1].id))
        let r = try s.check()
        switch how {
        case .missing:
            // The record is the commit point: without it the snapshot never existed. Its map
            // is garbage for prune, not damage.
            #expect(r.isClean)
            #expect(r.summary.unreferencedDiskMaps == 1)
        case .swap:
            #expect(r.findings.map(\.object) == s.records.map { "snapshot \($0.id)" }.sorted())
            #expect(r.findings.allSatisfy { $0.kind == .snapshot && $0.damage.count == 1 && $0.damage[0].ranges.isEmpty })
        default:
            expectOne(r, kind: .snapshot, object: "snapshot \(s.records[0].id)",
                      damage: [SnapshotDamage(snapshot: s.records[0].id, disk: "?", ranges: [])])
        }
    }

    @Test(arguments: StoreKind.allCases, Damage.allCases)
    func diskMap(_ kind: StoreKind, _ how: Damage) throws {
        let s = try Scene(kind)
        try s.damage(ObjectKey(.diskMap, s.records[0].diskMap.hex), how, other: ObjectKey(.diskMap, s.records[1].diskMap.hex))
        let r = try s.check()
        if how == .swap {
            #expect(r.findings.map(\.object) == s.records.map { "disk map \($0.diskMap)" }.sorted())
            let damage = Set(r.findings.flatMap(\.damage))
            #expect(damage == [s.whole(0), s.whole(1)])
        } else {
            expectOne(r, kind: .diskMap, object: "disk map \(s.records[0].diskMap)", damage: [s.whole(0)])
        }
    }

    @Test(arguments: StoreKind.allCases, Damage.allCases)
    func mapPage(_ kind: StoreKind, _ how: Damage) throws {
        let s = try Scene(kind)
        let repo = try s.open()
        let pages = try (0..<2).map { try #require(try repo.readMapHeader(s.records[$0].diskMap).pages.first) }
        try s.damage(ObjectKey(.mapPage, pages[0].hex), how, other: ObjectKey(.mapPage, pages[1].hex))
        let r = try s.check()
        // One page covers the whole of these small disks.
        if how == .swap {
            #expect(Set(r.findings.map(\.object)) == Set(pages.map { "map page \($0)" }))
            #expect(Set(r.findings.flatMap(\.damage)) == [s.whole(0), s.whole(1)])
        } else {
            expectOne(r, kind: .mapPage, object: "map page \(pages[0])", damage: [s.whole(0)])
        }
    }

    @Test(arguments: StoreKind.allCases, [Damage.flipByte, .swap])
    func chunkPayload(_ kind: StoreKind, _ how: Damage) throws {
        let s = try Scene(kind)
        let repo = try s.open()
        let pack = try s.pack(0)
        let entries = try repo.verifyPack(pack)
        // Two chunks of equal stored length (random data is stored raw) for the swap.
        let a = try #require(entries.first { e in entries.contains { $0.id != e.id && $0.length == e.length } })
        let b = try #require(entries.first { $0.id != a.id && $0.length == a.length })
        try s.t.change(ObjectKey(.pack, pack.hex)) { bytes in
            if how == .flipByte {
                bytes[Int(a.offset) + ObjectEnvelope.headerSize + 100] ^= 0x01
            } else {
                let ea = Array(bytes[Int(a.offset)..<Int(a.offset) + a.length]), eb = Array(bytes[Int(b.offset)..<Int(b.offset) + b.length])
                bytes.replaceSubrange(Int(a.offset)..<Int(a.offset) + a.length, with: eb)
                bytes.replaceSubrange(Int(b.offset)..<Int(b.offset) + b.length, with: ea)
            }
        }
        #expect(try s.check().isClean, "structure alone does not read payloads")
        let r = try s.check(.all)
        let victims = how == .flipByte ? [a.id] : [a.id, b.id]
        #expect(r.findings.map(\.object) == victims.sorted().map { "chunk \($0) in pack \(pack)" })
        for f in r.findings {
            let id = try #require(Digest128(hex: f.object.dropFirst(6).prefix(32)))
            #expect(f.kind == .chunk && f.setAside && f.lost)
            #expect(f.damage == [SnapshotDamage(snapshot: s.records[0].id, disk: "disk0", ranges: s.ranges(0) { $0 == id })])
        }
        // Set aside: the next check names the chunk as set aside (still lost until a backup heals it).
        let again = try s.check(.all)
        #expect(again.findings.map(\.object) == victims.sorted().map { "chunk \($0)" })
        // The next backup of the disk stores them again; everything is clean and restores.
        _ = try backup(s.disks[0], into: try s.open(), name: "disk0")
        #expect(try s.check(.all).isClean)
        #expect(try s.t.verifyAllSnapshots() == 3)
    }

    @Test(arguments: StoreKind.allCases, Damage.allCases)
    func pack(_ kind: StoreKind, _ how: Damage) throws {
        let s = try Scene(kind)
        let repo = try s.open()
        let packs = try [s.pack(0), s.pack(1)]
        let entries = try repo.verifyPack(packs[0])
        let size = try s.store.size(ObjectKey(.pack, packs[0].hex))
        let key = ObjectKey(.pack, packs[0].hex)
        let all0 = SnapshotDamage(snapshot: s.records[0].id, disk: "disk0", ranges: s.ranges(0) { _ in true })
        switch how {
        case .flipByte:
            // In the trailer: the chunks still read, the pack can no longer vouch for them.
            let trailerAt = Int(entries.last!.offset) + entries.last!.length
            try s.damage(key, .flipByte, at: trailerAt + 20)
            for mode in [DataSelection.none, .all] {
                let r = try s.check(mode, setAside: false)
                expectOne(r, kind: .pack, object: "pack \(packs[0])", damage: [all0])
                #expect(r.findings.first?.lost == false)
            }
        case .truncate:
            let half = Int(size / 2)
            try s.damage(key, .truncate, at: half)
            let lost = Set(entries.filter { Int($0.offset) + $0.length > half }.map(\.id))
            let r = try s.check()
            expectOne(r, kind: .pack, object: "pack \(packs[0])",
                      damage: [SnapshotDamage(snapshot: s.records[0].id, disk: "disk0", ranges: s.ranges(0) { lost.contains($0) })])
            #expect(r.findings.first?.lost == true && r.summary.setAsideNow == lost.count)
        case .missing:
            try s.damage(key, .missing)
            let r = try s.check()
            expectOne(r, kind: .pack, object: "pack \(packs[0])", damage: [all0])
            #expect(r.summary.setAsideNow == entries.count)
        case .swap:
            try s.damage(key, .swap, other: ObjectKey(.pack, packs[1].hex))
            let r = try s.check(setAside: false)
            #expect(r.findings.map(\.object) == packs.sorted().map { "pack \($0)" })
            let expected = [all0, SnapshotDamage(snapshot: s.records[1].id, disk: "disk1", ranges: s.ranges(1) { _ in true })]
            #expect(Set(r.findings.flatMap(\.damage)) == Set(expected))
        }
    }

    @Test(arguments: StoreKind.allCases, Damage.allCases)
    func indexFile(_ kind: StoreKind, _ how: Damage) throws {
        let s = try Scene(kind)
        let names = try [s.indexFile(0), s.indexFile(1)]
        try s.damage(ObjectKey(.index, names[0]), how, other: ObjectKey(.index, names[1]))
        let r = try s.check()
        let d0 = SnapshotDamage(snapshot: s.records[0].id, disk: "disk0", ranges: s.ranges(0) { _ in true })
        let d1 = SnapshotDamage(snapshot: s.records[1].id, disk: "disk1", ranges: s.ranges(1) { _ in true })
        switch how {
        case .missing:
            expectOne(r, kind: .index, object: "index", damage: [d0])
        case .swap:
            #expect(r.findings.map(\.object) == names.sorted().map { "index file \($0)" })
            #expect(r.findings.allSatisfy { Set($0.damage) == [d0, d1] })
        default:
            expectOne(r, kind: .index, object: "index file \(names[0])", damage: [d0])
        }
        // Every index problem is repaired from the packs alone.
        _ = try RepositoryRepair.rebuildIndex(try s.open())
        #expect(try s.check(.all).isClean)
        #expect(try s.t.verifyAllSnapshots() == 2)
    }

    @Test(arguments: StoreKind.allCases)
    func damagedSnapshotsAreListedWithTheirLostRangesAndForgottenOnlyWhenAsked(_ kind: StoreKind) throws {
        let s = try Scene(kind)
        let pack = try s.pack(1)
        try s.t.remove(ObjectKey(.pack, pack.hex))
        let listed = try RepositoryRepair.damagedSnapshots(try s.open(), forget: false)
        #expect(listed.map(\.snapshot) == [s.records[1].id])
        #expect(listed.first?.lost == s.ranges(1) { _ in true })
        #expect(try s.open().snapshotIDs().count == 2)
        _ = try RepositoryRepair.damagedSnapshots(try s.open(), forget: true)
        #expect(try s.open().snapshotIDs() == [s.records[0].id])
        #expect(try s.check().isClean)
    }
}
