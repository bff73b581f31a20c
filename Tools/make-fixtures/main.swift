// Makes the frozen test fixtures, deterministically (fixed seed, IDs and times):
//
//   make-fixtures repository-v1 [DIR]       writes Fixtures/repository-v1 (default DIR)
//   make-fixtures stress-writer REPO SEED [ROUNDS]
//       hidden test helper: backs up seeded disks into REPO in a loop (ROUNDS, default
//       forever), printing "committed <id>" after each commit; tests SIGKILL it at random.
//
// The fixture must never change once committed: a format change adds repository-v2.
import BackupRepository
import Codecs
import Foundation

/// SplitMix64, the same generator as TestSupport.SeededGenerator.
struct SplitMix64 {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func bytes(_ n: Int) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(n)
        while out.count < n {
            var w = next()
            for _ in 0..<8 where out.count < n {
                out.append(UInt8(truncatingIfNeeded: w))
                w >>= 8
            }
        }
        return out
    }
}

/// Stores every chunk of `disk`, writes its map and commits a snapshot tagged with the
/// disk's XXH3-128 (`disk-xxh3=`), so a reader can check a restore without the recipe.
func backUp(_ disk: [UInt8], into repo: Repository, chunkSize: Int, id: String, name: String, time: Date,
            parent: String?, source: SnapshotRecord.Source, packTargetSize: Int) throws -> SnapshotRecord {
    let writer = try repo.makeWriter(packTargetSize: packTargetSize)
    var map = try DiskMap(diskSize: UInt64(disk.count), chunkSize: chunkSize)
    var stats = SnapshotRecord.Stats(bytesRead: UInt64(disk.count))
    for i in 0..<map.count {
        let chunk = disk[i * chunkSize..<min((i + 1) * chunkSize, disk.count)]
        let id = chunk.withUnsafeBytes { XXH3.hash128($0) }
        switch try chunk.withUnsafeBytes({ try writer.store(chunk: $0, id: id) }) {
        case .zero: stats.chunksZero += 1
        case .duplicate: stats.chunksReused += 1; map[i] = id
        case .new(let n): stats.chunksNew += 1; stats.bytesStored += UInt64(n); map[i] = id
        }
    }
    let mapID = try writer.writeDiskMap(map)
    let record = SnapshotRecord(id: id, diskName: name, time: time, diskSize: UInt64(disk.count), chunkSize: chunkSize,
                                parent: parent, changeID: nil, source: source,
                                tags: ["disk-xxh3=\(XXH3.hash128(disk).hex)"], stats: stats, diskMap: mapID)
    try writer.commit(record)
    return record
}

/// The v1 fixture's two disks: 16 full 4 KiB chunks and a 1536-byte partial last chunk.
/// Disk 1 has zero chunks (4, 5, 12), a compressible chunk (6) and a duplicate (7 = 0).
/// Disk 2 changes chunk 2, fills chunk 4 and zeroes chunk 9.
func fixtureDisks() -> ([UInt8], [UInt8]) {
    let chunkSize = 4096
    var g = SplitMix64(state: 0x7E55_E4A1)
    var disk1: [UInt8] = []
    for i in 0..<16 {
        switch i {
        case 4, 5, 12: disk1 += [UInt8](repeating: 0, count: chunkSize)
        case 6: disk1 += (0..<chunkSize).map { UInt8(truncatingIfNeeded: $0 / 64) }
        case 7: disk1 += disk1[0..<chunkSize]
        default: disk1 += g.bytes(chunkSize)
        }
    }
    disk1 += g.bytes(1536)
    var disk2 = disk1
    disk2.replaceSubrange(2 * chunkSize..<3 * chunkSize, with: g.bytes(chunkSize))
    disk2.replaceSubrange(4 * chunkSize..<5 * chunkSize, with: g.bytes(chunkSize))
    disk2.replaceSubrange(9 * chunkSize..<10 * chunkSize, with: [UInt8](repeating: 0, count: chunkSize))
    return (disk1, disk2)
}

func makeRepositoryV1(at path: String) throws {
    guard !FileManager.default.fileExists(atPath: path) else {
        throw RepositoryError(.alreadyExists, "\(path) exists; the v1 fixture is frozen. Remove it only if you really mean to regenerate it")
    }
    let repo = try Repository.initialize(at: path, chunkSize: 4096, compressionLevel: 3,
                                         id: "7e55e4a0000000000000000000000001",
                                         created: Date(timeIntervalSince1970: 1_767_225_600)) // 2026-01-01T00:00:00Z
    let (disk1, disk2) = fixtureDisks()
    let first = try backUp(disk1, into: repo, chunkSize: 4096, id: "5a000000000000000000000000000001", name: "fixture-disk",
                           time: Date(timeIntervalSince1970: 1_767_229_200), parent: nil, source: .full, packTargetSize: 16 << 20)
    let second = try backUp(disk2, into: repo, chunkSize: 4096, id: "5a000000000000000000000000000002", name: "fixture-disk",
                            time: Date(timeIntervalSince1970: 1_767_315_600), parent: first.id, source: .scan, packTargetSize: 16 << 20)
    print("wrote \(path): snapshots \(first.id) (disk \(XXH3.hash128(disk1).hex)), \(second.id) (disk \(XXH3.hash128(disk2).hex))")
}

func stressWriter(repoPath: String, seed: UInt64, rounds: Int?) throws {
    let repo: Repository
    if FileManager.default.fileExists(atPath: "\(repoPath)/config") {
        repo = try Repository.open(at: repoPath)
    } else {
        repo = try Repository.initialize(at: repoPath, chunkSize: 4096)
    }
    var round = 0
    while rounds.map({ round < $0 }) ?? true {
        var g = SplitMix64(state: seed &* 1_000_003 &+ UInt64(round))
        var disk: [UInt8] = []
        for _ in 0..<96 {
            switch g.next() % 4 {
            case 0: disk += [UInt8](repeating: 0, count: 4096)
            case 1: disk += [UInt8](repeating: UInt8(truncatingIfNeeded: g.next()), count: 4096)
            default: disk += g.bytes(4096)
            }
        }
        let lock = try repo.lock(.shared)
        let r = try backUp(disk, into: repo, chunkSize: 4096, id: SnapshotRecord.newID(), name: "stress-\(seed)", time: Date(),
                           parent: nil, source: .full, packTargetSize: 48 << 10)
        try lock.release()
        FileHandle.standardOutput.write(Data("committed \(r.id)\n".utf8))
        round += 1
    }
}

let args = Array(CommandLine.arguments.dropFirst())
do {
    switch args.first {
    case "repository-v1":
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        try makeRepositoryV1(at: args.count > 1 ? args[1] : root.appendingPathComponent("Fixtures/repository-v1").path)
    case "stress-writer" where args.count >= 3:
        guard let seed = UInt64(args[2]) else { throw RepositoryError(.invalidArgument, "SEED must be a number") }
        try stressWriter(repoPath: args[1], seed: seed, rounds: args.count > 3 ? Int(args[3]) : nil)
    default:
        print("usage: make-fixtures repository-v1 [DIR] | stress-writer REPO SEED [ROUNDS]")
        exit(2)
    }
} catch {
    FileHandle.standardError.write(Data("make-fixtures: \(error)\n".utf8))
    exit(1)
}
