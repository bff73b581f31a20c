import BlockIO
import Foundation
import Testing
import TestSupport

/// Bad input gets a clear error and the documented exit code; nothing is written.
struct BadInputTests {
    func expectFailure(_ args: [String], exit: Int32 = 1, mentions words: [String],
                       sourceLocation: SourceLocation = #_sourceLocation) throws {
        let r = try Tessera.run(args)
        #expect(r.status == exit, "exit \(r.status) for \(args): \(r.stderr)", sourceLocation: sourceLocation)
        for w in words {
            #expect(r.stderr.lowercased().contains(w.lowercased()), "'\(w)' not in: \(r.stderr)", sourceLocation: sourceLocation)
        }
    }

    @Test func missingTruncatedAndGarbageSources() throws {
        let dir = try TemporaryDirectory("badsource")
        let repo = dir.file("repo")
        try Tessera.ok(["init", "--repo", repo])
        try expectFailure(["backup", "--repo", repo, "--disk", "d", "--source", dir.file("missing.raw")], mentions: ["missing.raw"])
        // A VMDK descriptor with garbage, one whose extent is missing, one whose extent is short.
        try Data("# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"x-flat.vmdk\" 0\n@@@@garbage\n".utf8)
            .write(to: URL(fileURLWithPath: dir.file("garbage.vmdk")))
        try expectFailure(["backup", "--repo", repo, "--disk", "d", "--source", dir.file("garbage.vmdk")], mentions: ["garbage.vmdk"])
        try Data("# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"gone-flat.vmdk\" 0\n".utf8)
            .write(to: URL(fileURLWithPath: dir.file("missing-extent.vmdk")))
        try expectFailure(["backup", "--repo", repo, "--disk", "d", "--source", dir.file("missing-extent.vmdk")], mentions: ["gone-flat.vmdk"])
        try Data("# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"short-flat.vmdk\" 0\n".utf8)
            .write(to: URL(fileURLWithPath: dir.file("short.vmdk")))
        try Data(count: 4096).write(to: URL(fileURLWithPath: dir.file("short-flat.vmdk")))
        try expectFailure(["backup", "--repo", repo, "--disk", "d", "--source", dir.file("short.vmdk")], mentions: ["truncated"])
        let snapshots = try Tessera.ok(["snapshots", "--repo", repo, "--json"])
        #expect(snapshots.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "[]", "a failed backup left a snapshot")
    }

    @Test func noRepositoryAndAmbiguousSnapshot() throws {
        let dir = try TemporaryDirectory("badrepo")
        try expectFailure(["snapshots", "--repo", dir.file("nothing-here")], exit: 10, mentions: ["nothing-here"])
        try expectFailure(["backup", "--repo", dir.path, "--disk", "d", "--source", "/dev/null"], exit: 10, mentions: [])
        let repo = dir.file("repo"), disk = dir.file("d.raw")
        try Tessera.ok(["init", "--repo", repo])
        try Data(count: 65536).write(to: URL(fileURLWithPath: disk))
        // Back up until two snapshot ids share their first hex digit: that prefix is ambiguous.
        var ids: [String] = []
        var prefix: String?
        while prefix == nil && ids.count < 40 {
            let s = try Tessera.summary(try Tessera.ok(["backup", "--repo", repo, "--disk", "d", "--source", disk, "--json"]))
            let id = s["snapshot"] as! String
            if let twin = ids.first(where: { $0.first == id.first }) { prefix = String(twin.prefix(1)) }
            ids.append(id)
        }
        let p = try #require(prefix)
        try expectFailure(["restore", "--repo", repo, p, "--to", dir.file("out.raw")], mentions: ["matches 2", "more digits"])
        #expect(!FileManager.default.fileExists(atPath: dir.file("out.raw")))
        // An existing non-empty target is refused without --force.
        try expectFailure(["restore", "--repo", repo, ids[0], "--to", disk], mentions: ["--force"])
    }

    @Test func restoreToAFullFileSystemFailsClearly() throws {
        let dir = try TemporaryDirectory("fullfs")
        let mount = dir.file("small")
        try FileManager.default.createDirectory(atPath: mount, withIntermediateDirectories: true)
        // A 1 MiB tmpfs is a full disk for a 4 MiB restore (needs root, as under CI).
        let mounted = try runCommand("mount", ["-t", "tmpfs", "-o", "size=1m", "tmpfs", mount])
        try #require(mounted.succeeded, "cannot mount a tmpfs: \(mounted.stderr)")
        defer { _ = try? runCommand("umount", [mount]) }
        let repo = dir.file("repo"), disk = dir.file("d.raw")
        var rng = SeededGenerator(seed: 3)
        try Data(rng.bytes(4 << 20)).write(to: URL(fileURLWithPath: disk))
        try Tessera.ok(["init", "--repo", repo])
        try Tessera.ok(["backup", "--repo", repo, "--disk", "d", "--source", disk])
        try expectFailure(["restore", "--repo", repo, "latest", "--disk", "d", "--to", "\(mount)/out.raw"], mentions: ["no space"])
    }
}
