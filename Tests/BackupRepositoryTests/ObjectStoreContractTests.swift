@testable import BackupRepository
import BlockIO
import Codecs
import Foundation
import Synchronization
import Testing
import TestSupport

/// The `ObjectStore` contract, run against every store (restic's backend test suite,
/// `internal/backend/test`): what the repository relies on, said once, so a new store (S3)
/// proves itself by adding a `StoreKind`. Each test starts from an empty store.
struct ObjectStoreContractTests {
    /// An empty store of `kind`, as `Repository.initialize` leaves it before the config.
    static func emptyStore(_ kind: StoreKind) throws -> TestRepository {
        let t = try kind.makeStore("contract-\(kind)")
        if let local = t.store as? LocalObjectStore { try local.createLayout() }
        return t
    }

    /// A valid object name: 32 hex digits, starting with `prefix`.
    static func name(_ prefix: String, _ n: Int) -> String {
        prefix + String(format: "%032x", n).dropFirst(prefix.count)
    }

    func expectCode(_ code: RepositoryError.Code, _ what: String, sourceLocation: SourceLocation = #_sourceLocation,
                    _ body: () throws -> Void) {
        do {
            try body()
            Issue.record("\(what) succeeded; expected \(code)", sourceLocation: sourceLocation)
        } catch let e as RepositoryError {
            #expect(e.code == code, "\(what): \(e.code) (\(e.message)), expected \(code)", sourceLocation: sourceLocation)
        } catch {
            Issue.record("\(what) threw \(error), not a RepositoryError", sourceLocation: sourceLocation)
        }
    }

    @Test(arguments: StoreKind.allCases)
    func aPutIsReadBackWholeAndAnotherPutReplacesIt(_ kind: StoreKind) throws {
        let t = try Self.emptyStore(kind)
        let store = t.store
        var g = SeededGenerator(seed: 1)
        for objectKind in ObjectKind.allCases {
            let key = objectKind == .config ? ObjectKey.config : ObjectKey(objectKind, Self.name("ab", 1))
            #expect(!store.exists(key))
            let bytes = g.bytes(1000 + objectKind.rawValue.count)
            try store.put(key, bytes, syncNow: objectKind == .snapshot)
            #expect(store.exists(key))
            #expect(try store.get(key) == bytes)
            #expect(try store.size(key) == UInt64(bytes.count))
            // A lock refreshed, a config replaced by `repair`: the new bytes, whole.
            let again = g.bytes(10)
            try store.put(key, again, syncNow: true)
            #expect(try store.get(key) == again)
            #expect(try store.size(key) == 10)
        }
        // The empty object is an object.
        let empty = ObjectKey(.index, Self.name("00", 2))
        try store.put(empty, [], syncNow: false)
        try store.syncPendingDirectories()
        #expect(store.exists(empty))
        #expect(try store.get(empty) == [])
        #expect(try store.size(empty) == 0)
    }

    @Test(arguments: StoreKind.allCases)
    func missingObjectsAreNotFoundEverywhere(_ kind: StoreKind) throws {
        let t = try Self.emptyStore(kind), store = t.store
        let key = ObjectKey(.pack, Self.name("cd", 3))
        #expect(!store.exists(key))
        expectCode(.notFound, "get") { _ = try store.get(key) }
        expectCode(.notFound, "get range") { _ = try store.get(key, range: ByteRange(offset: 0, length: 1)) }
        expectCode(.notFound, "size") { _ = try store.size(key) }
        expectCode(.notFound, "quarantine") { _ = try store.quarantine(key) }
        expectCode(.notFound, "config") { _ = try store.get(.config) }
        // Deleting what is not there is no error: prune may be run again after a kill.
        try store.delete(key)
        try store.syncPendingDirectories()
        #expect(try store.list(.pack).isEmpty)
    }

    @Test(arguments: StoreKind.allCases)
    func rangesReadExactlyTheirBytesAndAShortObjectIsDamage(_ kind: StoreKind) throws {
        let t = try Self.emptyStore(kind), store = t.store
        var g = SeededGenerator(seed: 4)
        let bytes = g.bytes(70_000)
        let key = ObjectKey(.pack, Self.name("12", 4))
        try store.put(key, bytes, syncNow: false)
        for (offset, length) in [(0, 70_000), (0, 1), (69_999, 1), (1234, 5678), (65536, 4464), (70_000, 0), (500, 0)] {
            let got = try store.get(key, range: ByteRange(offset: UInt64(offset), length: UInt64(length)))
            #expect(got == Array(bytes[offset..<(offset + length)]), "range \(offset)+\(length)")
        }
        // A range past the end: the object is shorter than what the index says (truncated).
        for (offset, length) in [(69_999, 2), (70_000, 1), (100_000, 10), (0, 70_001), (1 << 62, 10)] {
            expectCode(.damaged, "range \(offset)+\(length) of a 70000-byte object") {
                _ = try store.get(key, range: ByteRange(offset: UInt64(offset), length: UInt64(length)))
            }
        }
    }

    @Test(arguments: StoreKind.allCases)
    func aStoreNothingWasWrittenToListsNothing(_ kind: StoreKind) throws {
        // Not even the layout: a local store's folders are missing, which is no error.
        let t = try kind.makeStore("contract-bare"), store = t.store
        for k in ObjectKind.allCases {
            #expect(try store.list(k).isEmpty, "\(k)")
            #expect(try store.list(k, prefix: "ab").isEmpty, "\(k) with a prefix")
        }
        #expect(try store.leftovers().isEmpty)
        #expect(try store.irregularEntries().isEmpty)
        #expect(!store.exists(.config))
    }

    @Test(arguments: StoreKind.allCases)
    func listingsShowEachKindByNameAndPrefix(_ kind: StoreKind) throws {
        let t = try Self.emptyStore(kind), store = t.store
        for k in ObjectKind.allCases { #expect(try store.list(k).isEmpty, "\(k) in an empty store") }
        // Names spread over several first digits (a local store fans packs and maps out by them).
        let names = ["00", "0a", "0a", "a0", "a0", "a1", "ff"].enumerated().map { Self.name($0.element, $0.offset) }
        for k in ObjectKind.allCases where k != .config {
            for n in names { try store.put(ObjectKey(k, n), Array(n.utf8), syncNow: false) }
        }
        try store.put(.config, [1], syncNow: true)
        try store.syncPendingDirectories()
        for k in ObjectKind.allCases where k != .config {
            let listed = try store.list(k)
            #expect(listed.map(\.name) == names.sorted(), "\(k)")
            #expect(listed.allSatisfy { $0.kind == k })
            for prefix in ["", "0", "0a", "a", "a0", "a1", names[3], "f", "ff0", "b", "0000"] {
                #expect(try store.list(k, prefix: prefix).map(\.name) == names.filter { $0.hasPrefix(prefix) }.sorted(),
                        "\(k) with prefix \(prefix)")
            }
        }
        #expect(try store.list(.config) == [.config])
        // Listings show whole objects only: a fresh store has no leftovers and nothing irregular.
        #expect(try store.leftovers().isEmpty)
        #expect(try store.irregularEntries().isEmpty)
    }

    @Test(arguments: StoreKind.allCases)
    func deleteRemovesAnObjectFromEveryView(_ kind: StoreKind) throws {
        let t = try Self.emptyStore(kind), store = t.store
        let keep = ObjectKey(.index, Self.name("aa", 5)), gone = ObjectKey(.index, Self.name("ab", 6))
        try store.put(keep, [1], syncNow: false)
        try store.put(gone, [2], syncNow: false)
        try store.delete(gone)
        try store.syncPendingDirectories()
        #expect(!store.exists(gone) && store.exists(keep))
        #expect(try store.list(.index) == [keep])
        expectCode(.notFound, "get of a deleted object") { _ = try store.get(gone) }
    }

    @Test(arguments: StoreKind.allCases)
    func quarantineMovesAnObjectOutOfEveryListingAndTheSameContentCanComeBack(_ kind: StoreKind) throws {
        let t = try Self.emptyStore(kind), store = t.store
        let key = ObjectKey(.pack, Self.name("be", 7))
        try store.put(key, [1, 2, 3], syncNow: false)
        let first = try store.quarantine(key)
        #expect(!store.exists(key))
        #expect(try store.list(.pack).isEmpty)
        expectCode(.notFound, "get of a quarantined object") { _ = try store.get(key) }
        // Healing writes the same name again; a second quarantine keeps both copies aside.
        try store.put(key, [4, 5], syncNow: false)
        #expect(try store.get(key) == [4, 5])
        let second = try store.quarantine(key)
        #expect(first != second, "the second quarantined copy replaced the first (\(first))")
        #expect(try store.list(.pack).isEmpty)
    }

    @Test(arguments: StoreKind.allCases)
    func aStreamIsInvisibleUntilFinishedAndLeavesNothingWhenDiscarded(_ kind: StoreKind) throws {
        let t = try Self.emptyStore(kind), store = t.store
        var g = SeededGenerator(seed: 8)
        let pieces = (0..<5).map { g.bytes(1000 * ($0 + 1)) }
        let stream = try store.beginObject(.pack)
        for p in pieces {
            try p.withUnsafeBytes { try stream.append($0) }
            #expect(try store.list(.pack).isEmpty, "a pack being written is listed")
        }
        #expect(stream.byteCount == pieces.reduce(0) { $0 + $1.count })
        let name = Self.name("5e", 9)
        try stream.finish(as: name)
        try store.syncPendingDirectories()
        let key = ObjectKey(.pack, name)
        #expect(try store.list(.pack) == [key])
        #expect(try store.get(key) == pieces.flatMap { $0 })
        #expect(try store.leftovers().isEmpty)

        let dropped = try store.beginObject(.pack)
        try pieces[0].withUnsafeBytes { try dropped.append($0) }
        dropped.discard()
        #expect(try store.list(.pack) == [key])
        #expect(try store.leftovers() == [], "a discarded stream left a leftover")

        // Two streams at once, finished in the other order.
        let a = try store.beginObject(.pack), b = try store.beginObject(.pack)
        try ([1, 1] as [UInt8]).withUnsafeBytes { try a.append($0) }
        try ([2, 2, 2] as [UInt8]).withUnsafeBytes { try b.append($0) }
        try b.finish(as: Self.name("b0", 10))
        try a.finish(as: Self.name("a0", 11))
        try store.syncPendingDirectories()
        #expect(try store.get(ObjectKey(.pack, Self.name("a0", 11))) == [1, 1])
        #expect(try store.get(ObjectKey(.pack, Self.name("b0", 10))) == [2, 2, 2])
    }

    @Test(arguments: StoreKind.allCases)
    func namesThatAreNoObjectNamesAreRefused(_ kind: StoreKind) throws {
        let t = try Self.emptyStore(kind), store = t.store
        for name in ["", "a", "../x", "AB12", "ab/cd", "zz", "ab cd", "ab.pack", "..", "12\u{0}3"] {
            let key = ObjectKey(.pack, name)
            expectCode(.invalidArgument, "put \"\(name)\"") { try store.put(key, [1], syncNow: true) }
            expectCode(.invalidArgument, "get \"\(name)\"") { _ = try store.get(key) }
            expectCode(.invalidArgument, "delete \"\(name)\"") { try store.delete(key) }
            #expect(!store.exists(key))
        }
        expectCode(.invalidArgument, "a config under another name") { try store.put(ObjectKey(.config, "ab"), [1], syncNow: true) }
        #expect(try store.list(.pack).isEmpty)
        #expect(try store.list(.config).isEmpty)
        #expect(try store.leftovers().isEmpty)
    }

    @Test(arguments: StoreKind.allCases)
    func manyThreadsPuttingAndReadingSeeWholeObjects(_ kind: StoreKind) throws {
        let t = try Self.emptyStore(kind), store = t.store
        let failures = Mutex<[String]>([])
        DispatchQueue.concurrentPerform(iterations: 8) { t in
            var g = SeededGenerator(seed: UInt64(100 + t))
            for i in 0..<40 {
                let key = ObjectKey(.mapPage, Self.name(String(format: "%02x", t * 40 + i), t * 40 + i))
                let bytes = g.bytes(100 + i)
                do {
                    try store.put(key, bytes, syncNow: false)
                    if try store.get(key) != bytes { failures.withLock { $0.append("\(key) read back different bytes") } }
                } catch {
                    failures.withLock { $0.append("\(key): \(error)") }
                }
            }
        }
        try store.syncPendingDirectories()
        #expect(failures.withLock { $0 } == [])
        #expect(try store.list(.mapPage).count == 320)
    }

    /// `put` is atomic: while one name is put again and again (a lock refreshed, `repair`
    /// replacing the config), a reader sees one whole version or another, never a mix or a
    /// prefix, in whole reads, ranged reads and sizes.
    @Test(arguments: StoreKind.allCases)
    func aReplacedObjectIsReadAsOneWholeVersionNeverAMix(_ kind: StoreKind) throws {
        let t = try Self.emptyStore(kind), store = t.store
        let key = ObjectKey(.lock, Self.name("10", 12))
        // Versions of different lengths, each byte naming its version.
        let versions = (0..<6).map { v in [UInt8](repeating: UInt8(v + 1), count: 3000 + 7919 * v) }
        try store.put(key, versions[0], syncNow: true)
        let failures = Mutex<[String]>([])
        let writing = Atomic<Bool>(true)
        DispatchQueue.concurrentPerform(iterations: 3) { worker in
            if worker == 0 {
                defer { writing.store(false, ordering: .releasing) }
                for round in 0..<60 {
                    do { try store.put(key, versions[round % versions.count], syncNow: round % 10 == 0) } catch {
                        failures.withLock { $0.append("put: \(error)") }
                    }
                }
                return
            }
            while writing.load(ordering: .acquiring) {
                do {
                    let whole = try store.get(key)
                    if !versions.contains(whole) { failures.withLock { $0.append("a read of \(whole.count) bytes is no version") } }
                    let part = try store.get(key, range: ByteRange(offset: 1000, length: 2000))
                    if Set(part).count != 1 { failures.withLock { $0.append("a ranged read mixes versions") } }
                    let size = try store.size(key)
                    if !versions.contains(where: { $0.count == size }) { failures.withLock { $0.append("size \(size) is no version's") } }
                } catch {
                    failures.withLock { $0.append("read: \(error)") }
                }
            }
        }
        #expect(failures.withLock { $0 } == [])
        #expect(try store.get(key) == versions[59 % versions.count])
        #expect(try store.list(.lock) == [key])
        #expect(try store.leftovers().isEmpty)
    }

    /// Content-addressed objects are written once: the same name always carries the same
    /// bytes, so two writers racing to store the same pack (two backups deduplicating the
    /// same chunks) leave exactly one object, whole.
    @Test(arguments: StoreKind.allCases)
    func twoWritersOfTheSameContentAddressedObjectLeaveOne(_ kind: StoreKind) throws {
        let t = try Self.emptyStore(kind), store = t.store
        var g = SeededGenerator(seed: 13)
        let bytes = g.bytes(50_000)
        let name = XXH3.hash128(bytes).hex
        let failures = Mutex<[String]>([])
        DispatchQueue.concurrentPerform(iterations: 6) { i in
            do {
                if i % 2 == 0 {
                    try store.put(ObjectKey(.pack, name), bytes, syncNow: false)
                } else {
                    let s = try store.beginObject(.pack)
                    try bytes.withUnsafeBytes { try s.append($0) }
                    try s.finish(as: name)
                }
            } catch {
                failures.withLock { $0.append("\(error)") }
            }
        }
        try store.syncPendingDirectories()
        #expect(failures.withLock { $0 } == [])
        #expect(try store.list(.pack) == [ObjectKey(.pack, name)])
        #expect(try store.get(ObjectKey(.pack, name)) == bytes)
        #expect(try store.leftovers().isEmpty)
    }

    /// Names as the repository makes them: IDs of 32 hex digits (XXH3-128), set-aside notes
    /// of 64 (chunk ID and pack ID), and the config; anything longer is refused. Each kind's
    /// objects are listed under their own kind only.
    @Test(arguments: StoreKind.allCases)
    func namesOfTheRepositorysLayoutRoundTripInTheirOwnKind(_ kind: StoreKind) throws {
        let t = try Self.emptyStore(kind), store = t.store
        let id32 = XXH3.hash128([1, 2, 3]).hex
        let id64 = XXH3.hash128([4]).hex + XXH3.hash128([5]).hex
        #expect(id32.count == 32 && id64.count == 64)
        var written: [ObjectKey] = [.config]
        try store.put(.config, [0], syncNow: true)
        for k in ObjectKind.allCases where k != .config {
            let key = ObjectKey(k, k == .setAside ? id64 : id32)
            try store.put(key, Array(k.rawValue.utf8), syncNow: false)
            written.append(key)
        }
        try store.syncPendingDirectories()
        for key in written {
            #expect(try store.list(key.kind) == [key], "\(key.kind)")
            #expect(try store.get(key) == (key.kind == .config ? [0] : Array(key.kind.rawValue.utf8)))
        }
        expectCode(.invalidArgument, "a 65-digit name") { try store.put(ObjectKey(.setAside, id64 + "0"), [1], syncNow: false) }
        // On disk, every object is the file the layout names (FORMAT.md), fanned out by its
        // first two digits where the layout says so.
        if let path = t.path {
            let fan = String(id32.prefix(2))
            let expected: [ObjectKind: String] = [
                .config: "config", .pack: "packs/\(fan)/\(id32).pack", .index: "index/\(id32).idx",
                .mapPage: "maps/\(fan)/\(id32).page", .diskMap: "maps/\(fan)/\(id32).map",
                .snapshot: "snapshots/\(id32).snap", .lock: "locks/\(id32).lock",
                .setAside: "quarantine/chunks/\(id64).aside",
            ]
            #expect(Set(filesUnder(path)) == Set(expected.values))
            for key in written {
                #expect((store as? LocalObjectStore)?.path(of: key) == "\(path)/\(expected[key.kind]!)")
            }
        }
    }
}
