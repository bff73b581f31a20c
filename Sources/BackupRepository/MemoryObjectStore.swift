import BlockIO
import Synchronization

/// An object store in memory: the second implementation of `ObjectStore`, so the
/// repository and agent suites run against more than one store (restic's backend test suite)
/// and an S3 store can join them later. Everything the contract promises holds trivially:
/// a put is whole and visible at once, names are "durable" at once.
public final class MemoryObjectStore: ObjectStore {
    private struct Contents {
        var objects: [ObjectKey: [UInt8]] = [:]
        var quarantined: [String: [UInt8]] = [:]
    }

    private let contents = Mutex(Contents())

    public init() {}

    public func put(_ key: ObjectKey, _ bytes: [UInt8], syncNow: Bool) throws {
        try key.validate()
        contents.withLock { $0.objects[key] = bytes }
    }

    public func syncPendingDirectories() throws {}

    public func get(_ key: ObjectKey) throws -> [UInt8] {
        try key.validate()
        guard let bytes = contents.withLock({ $0.objects[key] }) else {
            throw RepositoryError(.notFound, "\(key) does not exist")
        }
        return bytes
    }

    public func get(_ key: ObjectKey, range: ByteRange) throws -> [UInt8] {
        let bytes = try get(key)
        guard range.end <= UInt64(bytes.count) else {
            throw RepositoryError(.damaged, "\(key) is \(bytes.count) bytes, shorter than the range \(range) asked for")
        }
        return Array(bytes[Int(range.offset)..<Int(range.end)])
    }

    public func size(_ key: ObjectKey) throws -> UInt64 { UInt64(try get(key).count) }

    public func exists(_ key: ObjectKey) -> Bool {
        (try? key.validate()) != nil && contents.withLock { $0.objects[key] != nil }
    }

    public func list(_ kind: ObjectKind, prefix: String) throws -> [ObjectKey] {
        contents.withLock { c in
            c.objects.keys.filter { $0.kind == kind && $0.name.hasPrefix(prefix) }.sorted { $0.name < $1.name }
        }
    }

    /// Deleting what is not there is not an error (as for files: prune may be re-run).
    public func delete(_ key: ObjectKey) throws {
        try key.validate()
        _ = contents.withLock { $0.objects.removeValue(forKey: key) }
    }

    /// Like a local store's: every copy set aside is kept under its own name
    /// (`quarantine/<kind>-<name>.<n>.bad`), a second one never replaces the first.
    public func quarantine(_ key: ObjectKey) throws -> String {
        try key.validate()
        return try contents.withLock { (c: inout Contents) throws(RepositoryError) -> String in
            guard let bytes = c.objects.removeValue(forKey: key) else {
                throw RepositoryError(.notFound, "\(key) does not exist")
            }
            var n = 0
            while c.quarantined["quarantine/\(key.kind.rawValue)-\(key.name).\(n).bad"] != nil { n += 1 }
            let place = "quarantine/\(key.kind.rawValue)-\(key.name).\(n).bad"
            c.quarantined[place] = bytes
            return place
        }
    }

    // MARK: - For tests that damage a repository

    /// Replaces an object's bytes behind the repository's back (a flipped byte, a truncation):
    /// a test hook, so not public.
    package func tamper(_ key: ObjectKey, _ change: (inout [UInt8]) -> Void) throws {
        try contents.withLock { (c: inout Contents) throws(RepositoryError) in
            guard var bytes = c.objects[key] else { throw RepositoryError(.notFound, "\(key) does not exist") }
            change(&bytes)
            c.objects[key] = bytes
        }
    }
}
