import Foundation
import Testing
import TestSupport

/// A seeded disk image: random (incompressible, so stored raw) 64 KiB chunks, every
/// fourth chunk zero (written, not a hole). A stored chunk's payload is then its bytes on the
/// disk, which lets a test find which disk range a damaged envelope held without any
/// repository code.
func makeDisk(at path: String, chunks: Int, seed: UInt64) throws -> Data {
    let model = DiskModel.seeded(size: chunks * 65536, seed: seed) { i, _ in i % 4 == 3 ? .zero : .random }
    try model.write(to: path, holes: false)
    return model.data
}

/// Every pack file of a repository.
func packFiles(_ repo: String) -> [String] {
    let e = FileManager.default.enumerator(atPath: "\(repo)/packs")
    var out: [String] = []
    while let p = e?.nextObject() as? String {
        if p.hasSuffix(".pack") { out.append("\(repo)/packs/\(p)") }
    }
    return out.sorted()
}

func hex(_ bytes: some Collection<UInt8>) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

/// Flips one byte of chunk `index` of a `makeDisk` disk where it is stored (random chunks are
/// stored raw, so its bytes can be found in a pack without repository code).
/// - Returns: the ID of the pack that held it.
@discardableResult
func damageChunk(_ index: Int, of disk: Data, in repo: String) throws -> String {
    let needle = disk.subdata(in: index * 65536..<(index * 65536 + 64))
    for pack in packFiles(repo) {
        var bytes = try Data(contentsOf: URL(fileURLWithPath: pack))
        if let r = bytes.range(of: needle) {
            bytes[r.lowerBound + 100] ^= 0x01
            try bytes.write(to: URL(fileURLWithPath: pack))
            return URL(fileURLWithPath: pack).deletingPathExtension().lastPathComponent
        }
    }
    throw CommandError(description: "chunk \(index) was not found stored raw in any pack")
}

/// A file of `mebibytes` MiB of random bytes (from /dev/urandom: fast, and incompressible,
/// so a backup or restore of it takes long enough to be interrupted on purpose).
func makeRandomFile(at path: String, mebibytes: Int) throws {
    let r = try runCommand("/bin/sh", ["-c", "head -c \(mebibytes)M /dev/urandom > '\(path)'"])
    guard r.succeeded else { throw CommandError(description: "cannot write \(path): \(r.stderr)") }
}

/// Names in a directory, sorted ("." and ".." left out).
func names(in directory: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted()
}

/// Lock files and temp files (`.tmp-`) anywhere in a repository: what a command that ended
/// must not leave behind.
func locksAndTempFiles(_ repo: String) -> [String] {
    let e = FileManager.default.enumerator(atPath: repo)
    var out: [String] = []
    while let p = e?.nextObject() as? String {
        if p.hasPrefix("locks/") && p.hasSuffix(".lock") || p.contains(".tmp-") { out.append(p) }
    }
    return out.sorted()
}

/// True when a progress line (`--json`) shows bytes done: the command is working.
func isWorkingProgressLine(_ line: String) -> Bool {
    guard line.contains("\"type\":\"progress\""),
          let json = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
          let done = json["bytes_done"] as? Int else { return false }
    return done > 0
}
