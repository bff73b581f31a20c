@testable import BackupRepository
import Codecs
import Foundation
import Testing
import TestSupport

/// Every object kind damaged one way at a time: reading it fails with an error that names
/// the object, and nothing crashes. On every store (`MemoryObjectStore.tamper` in memory).
struct DamageTests {
    /// A repository with two snapshots of different disks: two packs, two index files,
    /// two maps, distinct pages, two records.
    struct Scene {
        let t: TestRepository
        let first: SnapshotRecord
        let second: SnapshotRecord

        init(_ kind: StoreKind) throws {
            t = try kind.makeStore("damage")
            let repo = try t.initialize(chunkSize: 4096)
            first = try backup(DiskModel.mixed(size: 4096 * 24, seed: 21, blockSize: 4096, zeroShare: 10), into: repo)
            second = try backup(DiskModel.mixed(size: 4096 * 24, seed: 22, blockSize: 4096, zeroShare: 10), into: repo)
        }

        var store: any ObjectStore { t.store }
        func open() throws -> Repository { try t.open() }

        /// A flipped byte goes where `position` says; a cut is always at half.
        func damage(_ key: ObjectKey, _ how: Damage, other: ObjectKey?, at position: Int? = nil) throws {
            try t.damage(key, how, other: other, at: how == .flipByte ? position : nil)
        }

        /// Reads everything a restore of `record` reads.
        func readWhole(_ record: SnapshotRecord) throws {
            let repo = try open()
            _ = try restore(try repo.readSnapshot(id: record.id), from: repo)
        }
    }

    func expectNamed(_ object: String, _ body: () throws -> Void, sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            try body()
            Issue.record("reading damaged \(object) succeeded", sourceLocation: sourceLocation)
        } catch let e as RepositoryError {
            #expect(e.object == object || e.message.contains(object.split(separator: " ").last.map(String.init) ?? object),
                    "error \"\(e.message)\" (object \(e.object ?? "nil")) does not name \(object)", sourceLocation: sourceLocation)
        } catch {
            Issue.record("unexpected error type \(error)", sourceLocation: sourceLocation)
        }
    }

    @Test(arguments: StoreKind.allCases, Damage.allCases)
    func damagedSnapshotRecord(_ kind: StoreKind, _ how: Damage) throws {
        let s = try Scene(kind)
        try s.damage(ObjectKey(.snapshot, s.first.id), how, other: ObjectKey(.snapshot, s.second.id))
        expectNamed("snapshot \(s.first.id)") { _ = try s.open().readSnapshot(id: s.first.id) }
        if how != .missing {
            expectNamed("snapshot \(s.first.id)") { _ = try s.open().snapshots() }
            // A listing that goes on past the damaged record still shows the good one.
            let (records, damaged) = try s.open().readAllSnapshots()
            // Listed in name order, and snapshot IDs are random: compare sorted.
            #expect(damaged.compactMap(\.object).sorted() == (["snapshot \(s.first.id)"] + (how == .swap ? ["snapshot \(s.second.id)"] : [])).sorted())
            #expect(records.map(\.id) == (how == .swap ? [] : [s.second.id]))
        }
    }

    @Test(arguments: StoreKind.allCases, Damage.allCases)
    func damagedDiskMap(_ kind: StoreKind, _ how: Damage) throws {
        let s = try Scene(kind)
        try s.damage(ObjectKey(.diskMap, s.first.diskMap.hex), how, other: ObjectKey(.diskMap, s.second.diskMap.hex))
        expectNamed("disk map \(s.first.diskMap)") { try s.readWhole(s.first) }
    }

    @Test(arguments: StoreKind.allCases, Damage.allCases)
    func damagedMapPage(_ kind: StoreKind, _ how: Damage) throws {
        let s = try Scene(kind)
        let repo = try s.open()
        let (_, pages1) = try DiskMapCodec.decodeMap(repo.store.get(ObjectKey(.diskMap, s.first.diskMap.hex)), id: s.first.diskMap)
        let (_, pages2) = try DiskMapCodec.decodeMap(repo.store.get(ObjectKey(.diskMap, s.second.diskMap.hex)), id: s.second.diskMap)
        let page = try #require(pages1.first), other = try #require(pages2.first)
        #expect(page != other)
        try s.damage(ObjectKey(.mapPage, page.hex), how, other: ObjectKey(.mapPage, other.hex))
        expectNamed("map page \(page)") { try s.readWhole(s.first) }
    }

    func packs(_ s: Scene) throws -> (PackID, PackID) {
        let repo = try s.open()
        let map = try repo.readDiskMap(s.first.diskMap)
        let id = try #require((0..<map.count).compactMap { map[$0] }.first)
        let p1 = try #require(repo.location(of: id)).pack
        let p2 = try #require(try repo.store.list(.pack).map { Digest128(hex: $0.name)! }.first { $0 != p1 })
        return (p1, p2)
    }

    @Test(arguments: StoreKind.allCases, Damage.allCases)
    func damagedPack(_ kind: StoreKind, _ how: Damage) throws {
        let s = try Scene(kind)
        let (pack, other) = try packs(s)
        try s.damage(ObjectKey(.pack, pack.hex), how, other: ObjectKey(.pack, other.hex))
        expectNamed("pack \(pack)") { try s.readWhole(s.first) }
        expectNamed("pack \(pack)") { _ = try s.open().verifyPack(pack) }
    }

    /// A flipped byte anywhere in a pack (header, an envelope header, a payload, the
    /// trailer, the footer) is found by verifyPack, and named.
    @Test(arguments: StoreKind.allCases)
    func aFlippedByteAnywhereInAPackIsFound(_ kind: StoreKind) throws {
        let s = try Scene(kind)
        let (pack, _) = try packs(s)
        let key = ObjectKey(.pack, pack.hex)
        let size = Int(try s.store.size(key))
        for position in [1, 8, 8 + 20, 8 + 48 + 100, size / 2, size - 40, size - 10, size - 1] {
            let original = try s.store.get(key)
            try s.damage(key, .flipByte, other: nil, at: position)
            expectNamed("pack \(pack)") { _ = try s.open().verifyPack(pack) }
            try s.t.change(key) { $0 = original }
        }
        _ = try s.open().verifyPack(pack)
    }

    @Test(arguments: StoreKind.allCases, Damage.allCases)
    func damagedIndexFile(_ kind: StoreKind, _ how: Damage) throws {
        let s = try Scene(kind)
        let names = try s.store.list(.index).map(\.name)
        #expect(names.count == 2)
        try s.damage(ObjectKey(.index, names[0]), how, other: ObjectKey(.index, names[1]))
        // Opening still works (repair needs it); the damaged file is reported and named.
        let repo = try s.open()
        if how == .missing {
            // Its chunks are gone from the index: restoring whichever snapshot used them fails, naming a chunk.
            #expect(throws: RepositoryError.self) {
                try s.readWhole(s.first)
                try s.readWhole(s.second)
            }
        } else if how == .swap {
            // Both files are whole but under each other's names: both are reported.
            #expect(Set(repo.damagedIndexFiles.keys) == Set(names))
            expectNamed("index file \(names[0])") { _ = try repo.readIndexFile(names[0]) }
        } else {
            #expect(Array(repo.damagedIndexFiles.keys) == [names[0]])
            expectNamed("index file \(names[0])") { _ = try repo.readIndexFile(names[0]) }
            let e = #expect(throws: RepositoryError.self) {
                try s.readWhole(s.first)
                try s.readWhole(s.second)
            }
            #expect(e?.message.contains(String(names[0].prefix(12))) == true, "the error should point at the damaged index file")
        }
    }

    @Test(arguments: StoreKind.allCases, [Damage.flipByte, .truncate, .missing])
    func damagedConfig(_ kind: StoreKind, _ how: Damage) throws {
        let s = try Scene(kind)
        try s.damage(.config, how, other: nil, at: 40)
        let e = #expect(throws: RepositoryError.self) { _ = try s.open() }
        #expect(e?.object == "config")
        #expect(e?.code == (how == .missing ? .notARepository : .damaged))
    }
}
