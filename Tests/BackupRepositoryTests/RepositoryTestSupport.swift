@testable import BackupRepository
import BlockIO
import Codecs
import Foundation
import Synchronization
import TestSupport

/// Backs a disk up in full (every chunk offered; dedup decides) and commits a snapshot
/// tagged with the XXH3-128 of the disk, so any reader can check what it restores.
@discardableResult
func backup(_ disk: DiskModel, into repo: Repository, name: String = "disk0", packTargetSize: Int = 16 << 20,
            id: String = SnapshotRecord.newID(), time: Date = Date()) throws -> SnapshotRecord {
    let writer = try repo.makeWriter(packTargetSize: packTargetSize)
    var map = try DiskMap(diskSize: UInt64(disk.bytes.count), chunkSize: disk.blockSize)
    var stats = SnapshotRecord.Stats()
    for i in 0..<disk.blockCount {
        let c = disk.block(i)
        let outcome = try c.withUnsafeBytes { b in try writer.store(chunk: b, id: XXH3.hash128(b)) }
        switch outcome {
        case .zero: stats.chunksZero += 1
        case .duplicate:
            stats.chunksReused += 1
            map[i] = c.withUnsafeBytes { XXH3.hash128($0) }
        case .new(let n):
            stats.chunksNew += 1
            stats.bytesStored += UInt64(n)
            map[i] = c.withUnsafeBytes { XXH3.hash128($0) }
        }
    }
    stats.bytesRead = UInt64(disk.bytes.count)
    let mapID = try writer.writeDiskMap(map)
    let record = SnapshotRecord(id: id, diskName: name, time: time, diskSize: UInt64(disk.bytes.count), chunkSize: disk.blockSize,
                                source: .full, tags: ["disk-xxh3=\(disk.hash.hex)"], stats: stats, diskMap: mapID)
    try writer.commit(record)
    return record
}

/// Restores a snapshot into memory (every chunk read, checked and re-hashed).
func restore(_ record: SnapshotRecord, from repo: Repository) throws -> [UInt8] {
    let map = try repo.readDiskMap(record.diskMap)
    var out = [UInt8](repeating: 0, count: Int(map.diskSize))
    for i in 0..<map.count {
        guard let id = map[i] else { continue }
        let r = map.byteRange(ofChunk: i)
        let c = try repo.readChunk(id)
        guard c.count == Int(r.length) else {
            throw RepositoryError(.damaged, "chunk \(id) is \(c.count) bytes, map says \(r.length)")
        }
        out.replaceSubrange(Int(r.offset)..<Int(r.end), with: c)
    }
    return out
}

/// Every committed snapshot restores whole, to bytes that hash to its `disk-xxh3` tag.
/// Returns how many snapshots there are.
@discardableResult
func verifyAllSnapshots(at path: String) throws -> Int {
    try verifyAllSnapshots(in: try Repository.open(at: path))
}

/// The same through an open repository (on any store).
@discardableResult
func verifyAllSnapshots(in repo: Repository) throws -> Int {
    let records = try repo.snapshots()
    for r in records {
        let bytes = try restore(r, from: repo)
        let tag = r.tags.first { $0.hasPrefix("disk-xxh3=") }.map { String($0.dropFirst("disk-xxh3=".count)) }
        guard XXH3.hash128(bytes).hex == tag else {
            throw RepositoryError(.damaged, "snapshot \(r.id) restores to bytes that do not match its tag \(tag ?? "none")")
        }
    }
    return records.count
}

/// Files under a directory (relative paths), for before/after comparisons.
func filesUnder(_ root: String) -> [String] {
    let e = FileManager.default.enumerator(atPath: root)
    var out: [String] = []
    while let p = e?.nextObject() as? String {
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: "\(root)/\(p)", isDirectory: &isDir), !isDir.boolValue { out.append(p) }
    }
    return out.sorted()
}

/// Counts calls and throws at the `failAt`-th (0-based) fault point; records every point.
final class FaultPlan: Sendable {
    private let state = Mutex<(count: Int, points: [FaultPoint])>((0, []))
    let failAt: Int?

    init(failAt: Int?) { self.failAt = failAt }

    struct Injected: Error {}

    var points: [FaultPoint] { state.withLock { $0.points } }

    func hook(_ p: FaultPoint) throws {
        let n = state.withLock { s -> Int in
            s.points.append(p)
            s.count += 1
            return s.count - 1
        }
        if n == failAt { throw Injected() }
    }
}
