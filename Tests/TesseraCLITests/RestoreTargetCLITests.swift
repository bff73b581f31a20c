import BlockIO
import Foundation
import Testing
import TestSupport

/// What a restore may do to its target: never write to a disk a filter serves, never
/// destroy the old target when it fails or is interrupted, never leave a partial file under
/// the final name.
struct RestoreTargetCLITests {
    /// A disk file the filter serves is held with an exclusive flock (the filter holds one on
    /// every disk file for its lifetime); this test holds one itself to stand in for it.
    @Test func aTargetThatAFilterHoldsIsRefused() throws {
        let dir = try TemporaryDirectory("restore-held")
        let repo = dir.file("repo"), source = dir.file("disk.raw")
        try Tessera.ok(["init", "--repo", repo])
        let disk = try makeDisk(at: source, chunks: 8, seed: 61)
        let snapshot = try Tessera.backup(repo: repo, source: source)

        let served = dir.file("served.raw")
        var old = disk
        old[0] ^= 0xff
        try old.write(to: URL(fileURLWithPath: served))
        let hold = try FileLock.acquire(served)
        for mode in [["--only-changed"], ["--force"]] {
            let r = try Tessera.run(["restore", "--repo", repo, snapshot, "--to", served] + mode)
            #expect(r.status == 1, "restore \(mode) into a held disk exited \(r.status): \(r.stdout) \(r.stderr)")
            #expect(r.stderr.contains("process \(getpid())") && r.stderr.contains("filter"),
                    "the refusal must name the holder's pid and say why: \(r.stderr)")
            #expect(try Data(contentsOf: URL(fileURLWithPath: served)) == old, "restore \(mode) wrote to a held disk")
        }
        withExtendedLifetime(hold) {}

        // A VMDK: the filter serves its flat extent; that one is checked too.
        let vmdk = dir.file("vm.vmdk"), extent = dir.file("vm-flat.vmdk")
        try Tessera.ok(["restore", "--repo", repo, snapshot, "--to", vmdk, "--format", "vmdk"])
        var extentBytes = try Data(contentsOf: URL(fileURLWithPath: extent))
        extentBytes[0] ^= 0xff
        try extentBytes.write(to: URL(fileURLWithPath: extent))
        let descriptor = try Data(contentsOf: URL(fileURLWithPath: vmdk))
        let holdExtent = try FileLock.acquire(extent)
        for mode in [["--only-changed"], ["--force"]] {
            let r = try Tessera.run(["restore", "--repo", repo, snapshot, "--to", vmdk, "--format", "vmdk"] + mode)
            #expect(r.status == 1, "restore \(mode) into a VMDK whose extent is held exited \(r.status): \(r.stderr)")
            #expect(r.stderr.contains("vm-flat.vmdk") && r.stderr.contains("process \(getpid())"), "\(r.stderr)")
            #expect(try Data(contentsOf: URL(fileURLWithPath: extent)) == extentBytes)
            #expect(try Data(contentsOf: URL(fileURLWithPath: vmdk)) == descriptor)
        }
        withExtendedLifetime(holdExtent) {}
    }

    /// While a restore writes, its target is held, so a filter cannot start serving it
    /// mid-restore; SIGINT stops a restore cleanly and leaves the old target as it was.
    @Test func aRestoreHoldsItsTargetAndSIGINTLeavesTheOldTarget() throws {
        let dir = try TemporaryDirectory("restore-lock")
        let repo = dir.file("repo"), source = dir.file("disk.raw"), target = dir.file("target.raw")
        try Tessera.ok(["init", "--repo", repo])
        // Large enough that a restore runs for seconds in a debug build.
        try makeRandomFile(at: source, mebibytes: 512)
        _ = try Tessera.backup(repo: repo, source: source)
        try makeRandomFile(at: target, mebibytes: 512)

        for mode in [["--only-changed"], ["--force"]] {
            let restore = try ChildProcess(tessera: ["restore", "--repo", repo, "latest", "--disk", "d", "--to", target, "--json"] + mode)
            let held = waitUntilHeld(target, by: restore)
            let (r, _) = restore.wait()
            #expect(r.status == 0, "restore \(mode): \(r.stderr)")
            #expect(held, "restore \(mode) did not hold its target: a filter could start on it mid-restore")
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: target)) == Data(contentsOf: URL(fileURLWithPath: source)))

        try makeRandomFile(at: target, mebibytes: 512)
        let old = try Data(contentsOf: URL(fileURLWithPath: target))
        let before = names(in: dir.path)
        let restore = try ChildProcess(tessera: ["restore", "--repo", repo, "latest", "--disk", "d", "--to", target, "--force", "--json"])
        // Once it writes, the restore holds its target (and its signal handling is set up).
        let started = waitUntilHeld(target, by: restore)
        restore.signal(SIGINT)
        let (r, _) = restore.wait()
        try #require(started, "the restore ended before it held its target")
        #expect(r.status == 130, "a restore stopped by SIGINT exits 130, not \(r.status): \(r.stderr)")
        #expect(r.stderr.contains("cancelled by SIGINT"), "\(r.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: target)) == old, "an interrupted restore changed the old target")
        #expect(names(in: dir.path) == before, "an interrupted restore left files behind")
    }

    /// Waits until `restore` shows progress (its first `--json` progress line comes once it has
    /// written), then tells whether it holds `path` at that moment; false if it ended first.
    private func waitUntilHeld(_ path: String, by restore: ChildProcess) -> Bool {
        guard restore.waitForLine(timeout: 120, isWorkingProgressLine) else { return false }
        guard let held = try? FileLock.holder(ifLocked: path) else { return false }
        return held.pid == restore.pid
    }

    /// `--force` over an existing target: the target is replaced whole when the restore
    /// succeeds and left exactly as it was when it fails (a damaged chunk), for raw files and
    /// for a VMDK's descriptor and extent; a new target that fails leaves nothing.
    @Test func aFailedRestoreLeavesTheOldTargetAsItWas() throws {
        let dir = try TemporaryDirectory("restore-force")
        let repo = dir.file("repo"), source = dir.file("disk.raw")
        try Tessera.ok(["init", "--repo", repo])
        let disk = try makeDisk(at: source, chunks: 40, seed: 62)
        let snapshot = try Tessera.backup(repo: repo, source: source)

        // Success: an existing file (an older restore, changed since) is replaced.
        let earlier = dir.file("earlier.raw")
        try Data(repeating: 0x5a, count: 3 * 65536).write(to: URL(fileURLWithPath: earlier))
        try Tessera.ok(["restore", "--repo", repo, snapshot, "--to", earlier, "--force"])
        #expect(try Data(contentsOf: URL(fileURLWithPath: earlier)) == disk)
        let vmdk = dir.file("vm.vmdk"), extent = dir.file("vm-flat.vmdk")
        try Tessera.ok(["restore", "--repo", repo, snapshot, "--to", vmdk, "--format", "vmdk"])
        try Tessera.ok(["restore", "--repo", repo, snapshot, "--to", vmdk, "--format", "vmdk", "--force"])
        #expect(try Data(contentsOf: URL(fileURLWithPath: extent)) == disk)

        // A directory is no target: say what to give.
        let folder = dir.file("folder")
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let intoDirectory = try Tessera.run(["restore", "--repo", repo, snapshot, "--to", folder + "/", "--force"])
        #expect(intoDirectory.status == 1 && intoDirectory.stderr.contains("is a directory") && intoDirectory.stderr.contains("\(folder)/"),
                "\(intoDirectory.stderr)")
        #expect(!intoDirectory.stderr.contains("open failed"), "\(intoDirectory.stderr)")

        // Failure: a damaged chunk without --keep-going.
        let system = dir.file("os-release")
        // Its content, not the symlink /etc/os-release is on Debian.
        try Data(contentsOf: URL(fileURLWithPath: "/etc/os-release")).write(to: URL(fileURLWithPath: system))
        let kept = try [earlier, system, vmdk, extent].map { ($0, try Data(contentsOf: URL(fileURLWithPath: $0))) }
        try damageChunk(33, of: disk, in: repo)
        let before = names(in: dir.path)
        for (target, format) in [(earlier, "raw"), (system, "raw"), (vmdk, "vmdk")] {
            let r = try Tessera.run(["restore", "--repo", repo, snapshot, "--to", target, "--format", format, "--force"])
            #expect(r.status == 1 && r.stderr.contains("--keep-going"), "restore --force to \(target): \(r.stderr)")
        }
        for (path, bytes) in kept {
            #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == bytes, "a failed restore --force changed \(path)")
        }
        let fresh = dir.file("fresh.raw")
        let r = try Tessera.run(["restore", "--repo", repo, snapshot, "--to", fresh])
        #expect(r.status == 1)
        #expect(!FileManager.default.fileExists(atPath: fresh), "a failed restore left a file under the final name")
        #expect(names(in: dir.path) == before, "a failed restore left files behind")
    }

    /// No space left: the old target stays, and nothing else is left in the file system.
    @Test func aRestoreThatRunsOutOfSpaceKeepsTheOldTarget() throws {
        let dir = try TemporaryDirectory("restore-enospc")
        let mount = dir.file("small")
        try FileManager.default.createDirectory(atPath: mount, withIntermediateDirectories: true)
        let mounted = try runCommand("mount", ["-t", "tmpfs", "-o", "size=2m", "tmpfs", mount])
        try #require(mounted.succeeded, "cannot mount a tmpfs (needs root): \(mounted.stderr)")
        defer { _ = try? runCommand("umount", [mount]) }
        let repo = dir.file("repo"), source = dir.file("disk.raw")
        try makeRandomFile(at: source, mebibytes: 4)
        try Tessera.ok(["init", "--repo", repo])
        _ = try Tessera.backup(repo: repo, source: source)
        let target = "\(mount)/old.raw"
        try makeRandomFile(at: target, mebibytes: 1)
        let old = try Data(contentsOf: URL(fileURLWithPath: target))
        let r = try Tessera.run(["restore", "--repo", repo, "latest", "--disk", "d", "--to", target, "--force"])
        #expect(r.status == 1 && r.stderr.contains("no space"), "\(r.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: target)) == old, "a restore that ran out of space destroyed the old target")
        #expect(names(in: mount) == ["old.raw"])
    }

    /// SIGKILL at random instants: the final name holds the old target or the whole restored
    /// disk, never part of it. A kill can leave only the staging folder (documented).
    @Test func aKilledRestoreNeverLeavesAPartialFileUnderTheFinalName() throws {
        let dir = try TemporaryDirectory("restore-kill")
        let repo = dir.file("repo"), source = dir.file("disk.raw"), target = dir.file("target.raw")
        try Tessera.ok(["init", "--repo", repo])
        try makeRandomFile(at: source, mebibytes: 64)
        _ = try Tessera.backup(repo: repo, source: source)
        let new = try Data(contentsOf: URL(fileURLWithPath: source))
        var g = SeededGenerator(seed: 63)
        for round in 0..<6 {
            try makeRandomFile(at: target, mebibytes: 8)
            let old = try Data(contentsOf: URL(fileURLWithPath: target))
            let restore = try ChildProcess(tessera: ["restore", "--repo", repo, "latest", "--disk", "d", "--to", target, "--force"])
            // A kill at a seeded instant (not a wait for anything).
            Thread.sleep(forTimeInterval: Double(g.next() % 400_000) / 1_000_000)
            restore.signal(SIGKILL)
            _ = restore.wait()
            let now = try Data(contentsOf: URL(fileURLWithPath: target))
            #expect(now == old || now == new, "round \(round): the target holds \(now.count) bytes that are neither the old file nor the restored disk")
            let others = names(in: dir.path).filter { !["repo", "disk.raw", "target.raw"].contains($0) }
            #expect(others.allSatisfy { $0.hasPrefix(".tessera-restore-") }, "round \(round): \(others)")
            for o in others { try FileManager.default.removeItem(atPath: dir.file(o)) }
        }
    }
}
