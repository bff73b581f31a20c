import Foundation
import Testing
import TestSupport

/// A restore is as sparse as its source: a 64 KiB chunk that holds one 4 KiB write in an
/// otherwise empty region is restored as that 4 KiB block, not 64 KiB of mostly zeroes.
struct SparseRestoreCLITests {
    func allocated(_ path: String) -> Int {
        var st = stat()
        return stat(path, &st) == 0 ? Int(st.st_blocks) * 512 : -1
    }

    @Test func zeroBlocksInsideAChunkStayHoles() throws {
        let dir = try TemporaryDirectory("sparse-restore")
        let repo = dir.file("repo"), source = dir.file("disk.raw"), restored = dir.file("restored.raw")
        try Tessera.ok(["init", "--repo", repo])
        // 16 MiB sparse; a 4 KiB write in each of 32 chunks, and one whole chunk of data.
        let disk = try FileHandle(forWritingTo: URL(fileURLWithPath: { _ = FileManager.default.createFile(atPath: source, contents: nil); return source }()))
        try disk.truncate(atOffset: 16 << 20)
        for k in 0..<32 {
            try disk.seek(toOffset: UInt64(k) * 256 * 1024 + 8192)
            try disk.write(contentsOf: Data(repeating: UInt8(k + 1), count: 4096))
        }
        try disk.seek(toOffset: 12 << 20)
        try disk.write(contentsOf: Data((0..<65536).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 1) }))
        try disk.close()
        _ = try Tessera.backup(repo: repo, source: source)
        try Tessera.ok(["restore", "--repo", repo, "latest", "--disk", "d", "--to", restored])
        #expect(try Data(contentsOf: URL(fileURLWithPath: restored)) == Data(contentsOf: URL(fileURLWithPath: source)))
        // 32 × 4 KiB + 64 KiB of data; a chunk-sparse restore would allocate 33 × 64 KiB.
        // (An extent-tree block or two of the file system may come on top.)
        #expect(allocated(restored) <= allocated(source) + 16384, "restored \(allocated(restored)) B allocated, source \(allocated(source)) B")
        #expect(allocated(restored) < 33 * 65536 / 2)
    }
}
