import Foundation
import Testing
import TestSupport

/// A FIFO, a symlink or a directory named like a repository object is refused as damage
/// naming its path; no command hangs on it (each runs under a timeout).
struct ForeignObjectCLITests {
    @Test func aFIFOOrSymlinkNamedLikeAnObjectIsDamageNotAHang() throws {
        let dir = try TemporaryDirectory("fifo")
        let repo = dir.file("repo"), source = dir.file("disk.raw")
        try Tessera.ok(["init", "--repo", repo])
        let disk = try makeDisk(at: source, chunks: 6, seed: 71)
        let snapshot = try Tessera.backup(repo: repo, source: source)
        let realPack = try #require(packFiles(repo).first)

        let fifoPack = "\(repo)/packs/ab/\(String(repeating: "ab", count: 16)).pack"
        let linkPack = "\(repo)/packs/cd/\(String(repeating: "cd", count: 16)).pack"
        let fifoIndex = "\(repo)/index/\(String(repeating: "ef", count: 16)).idx"
        for d in ["\(repo)/packs/ab", "\(repo)/packs/cd"] { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) }
        #expect(mkfifo(fifoPack, 0o600) == 0 && mkfifo(fifoIndex, 0o600) == 0)
        #expect(symlink(realPack, linkPack) == 0)

        for args in [["check"], ["check", "--read-data"]] {
            // A hang on a FIFO is killed after 120 s and throws.
            let r = try Tessera.run(args + ["--repo", repo], timeout: 120)
            #expect(r.status == 1, "\(args) exited \(r.status): \(r.stdout) \(r.stderr)")
            for path in [fifoPack, linkPack, fifoIndex] {
                #expect(r.stdout.contains(path), "\(args) does not name \(path): \(r.stdout)")
            }
            #expect(r.stdout.contains("not a regular file"), "\(r.stdout)")
        }
        let repair = try Tessera.run(["repair", "index", "--repo", repo], timeout: 120)
        #expect(repair.status == 0, "\(repair.stdout) \(repair.stderr)")
        #expect(repair.stderr.contains(fifoPack) && repair.stderr.contains(linkPack), "repair index does not name what it skipped: \(repair.stderr)")
        // The rest of the repository is intact and restores.
        let restore = try Tessera.run(["restore", "--repo", repo, snapshot, "--to", dir.file("out.raw")], timeout: 120)
        #expect(restore.status == 0, "\(restore.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: dir.file("out.raw"))) == disk)
    }
}
