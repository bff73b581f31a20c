import Foundation
import Testing
import TestSupport

/// The checker and the oracle on ext4 images made on the host with `mke2fs -d` in the
/// guest's layout (no VM needed): a clean image passes; a changed byte, a missing file, a
/// damaged inode, no file system, and a manifest outside the window are each caught.
@Suite(.enabled(if: ExternalTool.available("mke2fs", "e2fsck", "debugfs", "dumpe2fs")))
struct GuestDiskCheckerTests {
    /// An image holding /data/e1 (4 files), /data/e2 (2 files) and /manifests/1 (e1),
    /// /manifests/2 (e1 and e2), as Tools/guest/init leaves them.
    static func makeImage(in dir: TemporaryDirectory) throws -> String {
        let root = dir.file("root")
        var generator = SeededGenerator(seed: 7)
        var listed: [String] = []
        for (epoch, count) in [(1, 4), (2, 2)] {
            try FileManager.default.createDirectory(atPath: "\(root)/data/e\(epoch)", withIntermediateDirectories: true)
            for i in 0..<count {
                let path = "data/e\(epoch)/f\(i)"
                try Data(generator.bytes(4096 * (1 + i * 3) + 100)).write(to: URL(fileURLWithPath: "\(root)/\(path)"))
                listed.append(path)
            }
        }
        try FileManager.default.createDirectory(atPath: "\(root)/manifests", withIntermediateDirectories: true)
        let sums = try runCommand("sh", ["-c", "cd '\(root)' && sha256sum " + listed.joined(separator: " ")])
        let lines = sums.stdout.split(separator: "\n").map(String.init)
        try (lines.filter { $0.contains("data/e1/") }.joined(separator: "\n") + "\n").write(toFile: "\(root)/manifests/1", atomically: false, encoding: .utf8)
        try (lines.joined(separator: "\n") + "\n").write(toFile: "\(root)/manifests/2", atomically: false, encoding: .utf8)
        let image = dir.file("disk.raw")
        let made = try runCommand("mke2fs", ["-q", "-F", "-t", "ext4", "-b", "4096", "-d", root, image, "32M"])
        guard made.succeeded else { throw GuestError("mke2fs -d: \(made.stderr)") }
        return image
    }

    static func debugfs(_ image: String, write: Bool = false, _ request: String) throws -> CommandResult {
        try runCommand("debugfs", (write ? ["-w"] : []) + ["-R", request, image])
    }

    @Test func aCleanImagePassesAgainstItsNewestManifest() throws {
        let dir = try TemporaryDirectory("guest-check")
        let image = try Self.makeImage(in: dir)
        let check = try GuestDiskChecker.check(image: image, scratch: dir.path)
        #expect(check.passed, "\(check)")
        #expect(check.manifest == 2)
        #expect(check.filesChecked == 6)
        #expect(!check.neededRecovery)
        let older = try GuestDiskChecker.check(image: image, scratch: dir.path, manifest: 1)
        #expect(older.passed && older.filesChecked == 4, "\(older)")
    }

    @Test func aChangedByteInAListedFileIsFound() throws {
        let dir = try TemporaryDirectory("guest-check")
        let image = try Self.makeImage(in: dir)
        let bmap = try Self.debugfs(image, "bmap /data/e2/f1 1")
        let block = try #require(UInt64(bmap.stdout.trimmingCharacters(in: .whitespacesAndNewlines)), "bmap: \(bmap.stdout) \(bmap.stderr)")
        let handle = try #require(FileHandle(forUpdatingAtPath: image))
        try handle.seek(toOffset: block * 4096 + 17)
        let old = try #require(try handle.read(upToCount: 1)).first!
        try handle.seek(toOffset: block * 4096 + 17)
        try handle.write(contentsOf: [old ^ 0x01])
        try handle.close()
        let check = try GuestDiskChecker.check(image: image, scratch: dir.path)
        #expect(check.problems.count == 1, "\(check.problems)")
        #expect(check.problems.first?.hasPrefix("manifest 2: data/e2/f1 differs") == true, "\(check.problems)")
    }

    @Test func aMissingListedFileIsFound() throws {
        let dir = try TemporaryDirectory("guest-check")
        let image = try Self.makeImage(in: dir)
        _ = try Self.debugfs(image, write: true, "rm /data/e1/f2")
        let check = try GuestDiskChecker.check(image: image, scratch: dir.path)
        #expect(check.problems == ["manifest 2: data/e1/f2 is missing"], "\(check)")
    }

    @Test func aDamagedFileSystemFailsBeforeAnyFileIsRead() throws {
        let dir = try TemporaryDirectory("guest-check")
        let image = try Self.makeImage(in: dir)
        _ = try Self.debugfs(image, write: true, "clri /data/e1/f1")
        let check = try GuestDiskChecker.check(image: image, scratch: dir.path)
        #expect(!check.passed)
        #expect(check.problems.first?.hasPrefix("e2fsck -fn exited") == true, "\(check.problems)")
        #expect(check.filesChecked == 0)
        // The image itself is left alone: the checker works on a copy.
        #expect(try GuestDiskChecker.check(image: image, scratch: dir.path).problems.first?.hasPrefix("e2fsck -fn exited") == true)
    }

    @Test func noFileSystemFails() throws {
        let dir = try TemporaryDirectory("guest-check")
        let image = dir.file("zero.raw")
        try Data(count: 1 << 20).write(to: URL(fileURLWithPath: image))
        let check = try GuestDiskChecker.check(image: image, scratch: dir.path)
        #expect(check.problems.first?.hasPrefix("no ext4 file system") == true, "\(check.problems)")
    }

    @Test func theWindowWantsTheManifestAnnouncedBeforeTheCheckpoint() {
        var check = GuestDiskCheck()
        check.manifest = 5
        let window = ManifestWindow(announcedBefore: 5, announcedAfter: 6)
        #expect(window.problems(of: check, quiesced: false).isEmpty)
        check.manifest = 7   // renamed into place, not announced yet when the backup ended
        #expect(window.problems(of: check, quiesced: false).isEmpty)
        check.manifest = 8
        #expect(window.problems(of: check, quiesced: false).count == 1)
        check.manifest = 4
        #expect(window.problems(of: check, quiesced: false).count == 1)
        check.manifest = nil
        #expect(window.problems(of: check, quiesced: false).count == 1)
        check.manifest = 5
        check.neededRecovery = true
        #expect(window.problems(of: check, quiesced: false).isEmpty)
        #expect(window.problems(of: check, quiesced: true) == ["quiesced, yet the journal needed recovery"])
        #expect(ManifestWindow(announcedBefore: 0, announcedAfter: 0).problems(of: GuestDiskCheck(), quiesced: false).isEmpty)
    }
}
