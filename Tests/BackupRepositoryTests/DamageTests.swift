@testable import BackupRepository
import Codecs
import Foundation
import Testing
import TestSupport

/// Every object kind damaged one way at a time: reading it fails with an error that names
/// the object, and nothing crashes.
struct DamageTests {
    enum Damage: String, CaseIterable { case flipByte, truncate, missing, swap }

    /// A repository with two snapshots of different disks: two packs, two index files,
    /// two maps, distinct pages, two records.
    struct Scene {
        let dir: TemporaryDirectory
        let path: String
        let first: SnapshotRecord
        let second: SnapshotRecord

        init() throws {
            dir = try TemporaryDirectory("damage")
            path = dir.path + "/repo"
            let repo = try Repository.initialize(at: path, chunkSize: 4096)
            first = try backup(DiskModel.mixed(size: 4096 * 24, seed: 21, blockSize: 4096, zeroShare: 10), into: repo)
            second = try backup(DiskModel.mixed(size: 4096 * 24, seed: 22, blockSize: 4096, zeroShare: 10), into: repo)
        }

        var store: LocalObjectStore { LocalObjectStore(root: path) }

        func damage(_ key: ObjectKey, _ how: Damage, other: ObjectKey?, at position: Int? = nil) throws {
            let p = store.path(of: key)
            var bytes = Array(try Data(contentsOf: URL(fileURLWithPath: p)))
            switch how {
            case .flipByte:
                let i = position ?? bytes.count / 2
                bytes[i] ^= 0x20
                try Data(bytes).write(to: URL(fileURLWithPath: p))
            case .truncate:
                try Data(bytes[0..<bytes.count / 2]).write(to: URL(fileURLWithPath: p))
            case .missing:
                try FileManager.default.removeItem(atPath: p)
            case .swap:
                let o = store.path(of: try #require(other))
                let otherBytes = try Data(contentsOf: URL(fileURLWithPath: o))
                try otherBytes.write(to: URL(fileURLWithPath: p))
                try Data(bytes).write(to: URL(fileURLWithPath: o))
            }
        }

        /// Reads everything a restore of `record` reads.
        func readWhole(_ record: SnapshotRecord) throws {
            let repo = try Repository.open(at: path)
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

    @Test(arguments: Damage.allCases)
    func damagedSnapshotRecord(_ how: Damage) throws {
        let s = try Scene()
        try s.damage(ObjectKey(.snapshot, s.first.id), how, other: ObjectKey(.snapshot, s.second.id))
        expectNamed("snapshot \(s.first.id)") { _ = try Repository.open(at: s.path).readSnapshot(id: s.first.id) }
        if how != .missing {
            expectNamed("snapshot \(s.first.id)") { _ = try Repository.open(at: s.path).snapshots() }
            // A listing that goes on past the damaged record still shows the good one.
            let (records, damaged) = try Repository.open(at: s.path).readAllSnapshots()
            // Listed in name order, and snapshot IDs are random: compare sorted.
            #expect(damaged.compactMap(\.object).sorted() == (["snapshot \(s.first.id)"] + (how == .swap ? ["snapshot \(s.second.id)"] : [])).sorted())
            #expect(records.map(\.id) == (how == .swap ? [] : [s.second.id]))
        }
    }

    @Test(arguments: Damage.allCases)
    func damagedDiskMap(_ how: Damage) throws {
        let s = try Scene()
        try s.damage(ObjectKey(.diskMap, s.first.diskMap.hex), how, other: ObjectKey(.diskMap, s.second.diskMap.hex))
        expectNamed("disk map \(s.first.diskMap)") { try s.readWhole(s.first) }
    }

    @Test(arguments: Damage.allCases)
    func damagedMapPage(_ how: Damage) throws {
        let s = try Scene()
        let repo = try Repository.open(at: s.path)
        let (_, pages1) = try DiskMapCodec.decodeMap(repo.store.get(ObjectKey(.diskMap, s.first.diskMap.hex)), id: s.first.diskMap)
        let (_, pages2) = try DiskMapCodec.decodeMap(repo.store.get(ObjectKey(.diskMap, s.second.diskMap.hex)), id: s.second.diskMap)
        let page = try #require(pages1.first), other = try #require(pages2.first)
        #expect(page != other)
        try s.damage(ObjectKey(.mapPage, page.hex), how, other: ObjectKey(.mapPage, other.hex))
        expectNamed("map page \(page)") { try s.readWhole(s.first) }
    }

    func packs(_ s: Scene) throws -> (PackID, PackID) {
        let repo = try Repository.open(at: s.path)
        let map = try repo.readDiskMap(s.first.diskMap)
        let id = try #require((0..<map.count).compactMap { map[$0] }.first)
        let p1 = try #require(repo.location(of: id)).pack
        let p2 = try #require(try repo.store.list(.pack).map { Digest128(hex: $0.name)! }.first { $0 != p1 })
        return (p1, p2)
    }

    @Test(arguments: Damage.allCases)
    func damagedPack(_ how: Damage) throws {
        let s = try Scene()
        let (pack, other) = try packs(s)
        try s.damage(ObjectKey(.pack, pack.hex), how, other: ObjectKey(.pack, other.hex))
        expectNamed("pack \(pack)") { try s.readWhole(s.first) }
        expectNamed("pack \(pack)") { _ = try Repository.open(at: s.path).verifyPack(pack) }
    }

    /// A flipped byte anywhere in a pack (header, an envelope header, a payload, the
    /// trailer, the footer) is found by verifyPack, and named.
    @Test func aFlippedByteAnywhereInAPackIsFound() throws {
        let s = try Scene()
        let (pack, _) = try packs(s)
        let size = Int(try s.store.size(ObjectKey(.pack, pack.hex)))
        for position in [1, 8, 8 + 20, 8 + 48 + 100, size / 2, size - 40, size - 10, size - 1] {
            let p = s.store.path(of: ObjectKey(.pack, pack.hex))
            let original = try Data(contentsOf: URL(fileURLWithPath: p))
            try s.damage(ObjectKey(.pack, pack.hex), .flipByte, other: nil, at: position)
            expectNamed("pack \(pack)") { _ = try Repository.open(at: s.path).verifyPack(pack) }
            try original.write(to: URL(fileURLWithPath: p))
        }
        _ = try Repository.open(at: s.path).verifyPack(pack)
    }

    @Test(arguments: Damage.allCases)
    func damagedIndexFile(_ how: Damage) throws {
        let s = try Scene()
        let names = try s.store.list(.index).map(\.name)
        #expect(names.count == 2)
        try s.damage(ObjectKey(.index, names[0]), how, other: ObjectKey(.index, names[1]))
        // Opening still works (repair needs it); the damaged file is reported and named.
        let repo = try Repository.open(at: s.path)
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

    @Test(arguments: [Damage.flipByte, .truncate, .missing])
    func damagedConfig(_ how: Damage) throws {
        let s = try Scene()
        try s.damage(.config, how, other: nil, at: 40)
        let e = #expect(throws: RepositoryError.self) { _ = try Repository.open(at: s.path) }
        #expect(e?.object == "config")
        #expect(e?.code == (how == .missing ? .notARepository : .damaged))
    }
}
