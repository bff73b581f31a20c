import Foundation

/// What `GuestDiskChecker.check` found in a disk image the test guest wrote.
public struct GuestDiskCheck: Sendable, CustomStringConvertible {
    /// The ext4 journal had to be replayed (`needs_recovery`): a crash-consistent image.
    public var neededRecovery = false
    /// The newest manifest the image holds (nil: none yet).
    public var manifest: Int?
    /// Files of that manifest compared by sha256.
    public var filesChecked = 0
    /// What `e2fsck -fn` reported after the journal replay (free counts are fixed afterwards).
    public var fsckNotes: [String] = []
    /// Everything wrong; empty when the image passed.
    public var problems: [String] = []
    public var seconds = 0.0

    public init() {}

    public var passed: Bool { problems.isEmpty }

    public var description: String {
        let state = passed ? "passed" : "FAILED: " + problems.joined(separator: "; ")
        return "manifest \(manifest.map(String.init) ?? "none"), \(filesChecked) files, "
            + (neededRecovery ? "journal replayed" : "clean") + ", \(state)"
    }
}

/// Checks a restored (or copied) disk image of the test guest (Tools/guest/init), without
/// mounting it: on a sparse copy it replays the ext4 journal, requires `e2fsck -fn` to find
/// nothing but the free counts a mounted ext4 does not keep, fixes those, requires
/// `e2fsck -fn` to pass, then reads the newest manifest and every file it lists with
/// `debugfs` and compares their sha256.
///
/// Throws only when a tool cannot run; everything wrong with the image is a problem in the result.
public enum GuestDiskChecker {
    /// `e2fsck -fn` messages a crash-consistent ext4 may show after its journal is replayed
    /// (ext4 does not keep the superblock's free totals up to date while mounted).
    static let toleratedFsckLines = ["Free blocks count wrong (", "Free inodes count wrong ("]

    /// - Parameters:
    ///   - image: the raw image; it is not modified.
    ///   - scratch: a folder for the copy and the extracted files (removed afterwards).
    ///   - manifest: a manifest to check instead of the newest.
    public static func check(image: String, scratch: String, manifest wanted: Int? = nil) throws -> GuestDiskCheck {
        let started = Date()
        var result = try checkWithoutTiming(image: image, scratch: scratch, manifest: wanted)
        result.seconds = Date().timeIntervalSince(started)
        return result
    }

    private static func checkWithoutTiming(image: String, scratch: String, manifest wanted: Int?) throws -> GuestDiskCheck {
        var result = GuestDiskCheck()
        let work = "\(scratch)/check-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer {
            if ProcessInfo.processInfo.environment["TESSERA_KEEP_TEST_FILES"] == nil {
                try? FileManager.default.removeItem(atPath: work)
            }
        }
        let copy = "\(work)/disk.raw"
        try require(runCommand("cp", ["--sparse=always", image, copy]), "cp \(image)")

        // 1. The journal: replayed if the image needs it, nothing else touched yet.
        let header = try runCommand("dumpe2fs", ["-h", copy])
        guard header.succeeded, let features = header.stdout.split(separator: "\n")
            .first(where: { $0.hasPrefix("Filesystem features:") }) else {
            result.problems.append("no ext4 file system: dumpe2fs -h: \(header.stderr.trimmingCharacters(in: .whitespacesAndNewlines))")
            return result
        }
        result.neededRecovery = features.contains("needs_recovery")
        if result.neededRecovery {
            let replay = try runCommand("e2fsck", ["-y", "-E", "journal_only", copy])
            if replay.status > 1 {
                result.problems.append("journal replay (e2fsck -E journal_only) exited \(replay.status): \(replay.stdout) \(replay.stderr)")
                return result
            }
        }

        // 2. Nothing wrong but the free totals.
        let first = try runCommand("e2fsck", ["-fn", copy])
        let complaints = fsckComplaints(first.stdout)
        result.fsckNotes = complaints
        let serious = complaints.filter { line in !toleratedFsckLines.contains(where: { line.hasPrefix($0) }) }
        if !serious.isEmpty || first.status > 4 {
            result.problems.append("e2fsck -fn exited \(first.status): \(serious.joined(separator: " | ")) \(first.stderr)")
            return result
        }
        let fix = try runCommand("e2fsck", ["-fy", copy])
        if fix.status > 1 {
            result.problems.append("e2fsck -fy exited \(fix.status): \(fix.stdout)")
            return result
        }
        let clean = try runCommand("e2fsck", ["-fn", copy])
        if !clean.succeeded {
            result.problems.append("e2fsck -fn after e2fsck -fy exited \(clean.status): \(fsckComplaints(clean.stdout).joined(separator: " | "))")
            return result
        }

        // 3. The manifest and its files, read with debugfs.
        let listing = try runCommand("debugfs", ["-R", "ls -p /manifests", copy])
        let numbers = listing.stdout.split(separator: "\n").compactMap { entry -> Int? in
            // /inode/mode/uid/gid/name/size/
            let fields = entry.split(separator: "/", omittingEmptySubsequences: false)
            return fields.count > 5 ? Int(fields[5]) : nil
        }
        guard let newest = wanted ?? numbers.max() else { return result }
        result.manifest = newest
        guard numbers.contains(newest) else {
            result.problems.append("manifest \(newest) is not on the disk (it holds \(numbers.sorted()))")
            return result
        }
        let manifest = try runCommand("debugfs", ["-R", "cat /manifests/\(newest)", copy])
        let entries = manifest.stdout.split(separator: "\n").compactMap { line -> (hash: String, path: String)? in
            let parts = line.split(separator: " ", maxSplits: 1)
            guard parts.count == 2 else { return nil }
            return (String(parts[0]), parts[1].trimmingCharacters(in: .whitespaces))
        }
        let files = "\(work)/files"
        try FileManager.default.createDirectory(atPath: files, withIntermediateDirectories: true)
        try require(runCommand("debugfs", ["-R", "rdump /data \(files)", copy]), "debugfs rdump /data")
        var actual: [String: String] = [:]
        let present = entries.map(\.path).filter { FileManager.default.fileExists(atPath: "\(files)/\($0)") }
        for batch in stride(from: 0, to: present.count, by: 200).map({ Array(present[$0..<min($0 + 200, present.count)]) }) {
            let sums = try runCommand("sha256sum", batch.map { "\(files)/\($0)" })
            for line in sums.stdout.split(separator: "\n") {
                let parts = line.split(separator: " ", maxSplits: 1)
                guard parts.count == 2 else { continue }
                let path = parts[1].trimmingCharacters(in: .whitespaces)
                actual[String(path.dropFirst(files.count + 1))] = String(parts[0])
            }
        }
        for entry in entries {
            guard let hash = actual[entry.path] else {
                result.problems.append("manifest \(newest): \(entry.path) is missing")
                continue
            }
            if hash != entry.hash { result.problems.append("manifest \(newest): \(entry.path) differs (sha256 \(hash), listed \(entry.hash))") }
            result.filesChecked += 1
        }
        return result
    }

    /// The lines of an e2fsck run that report something (not its pass headers, prompts or summary).
    static func fsckComplaints(_ output: String) -> [String] {
        output.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { line in
            !(line.isEmpty || line.hasPrefix("Pass ") || line.hasPrefix("e2fsck ") || line.hasPrefix("Fix? ")
              || line.contains(" files (") || line.hasPrefix("WARNING: Filesystem still has errors")
              || line.hasSuffix("***** FILE SYSTEM WAS MODIFIED *****") || line.hasPrefix("Warning: skipping journal recovery"))
        }
    }

    private static func require(_ result: CommandResult, _ what: String) throws {
        guard result.succeeded else { throw GuestError("\(what) exited \(result.status): \(result.stderr)") }
    }
}

/// Which manifest a snapshot of the running guest must hold: every manifest announced before
/// the backup's checkpoint was fsync'd by then, so the image holds it or a newer one; and
/// none newer than those announced by the time the backup ended (plus one the guest may
/// have renamed into place but not yet announced).
public struct ManifestWindow: Sendable, CustomStringConvertible {
    /// The newest manifest announced before the backup started (0: none).
    public var announcedBefore: Int
    /// The newest manifest announced once the backup ended.
    public var announcedAfter: Int

    public init(announcedBefore: Int, announcedAfter: Int) {
        self.announcedBefore = announcedBefore
        self.announcedAfter = announcedAfter
    }

    public var description: String { "announced \(announcedBefore) before, \(announcedAfter) after" }

    /// What is wrong with a check of the snapshot, against this window.
    /// - Parameter quiesced: the snapshot was taken with the guest's file systems frozen
    ///   (or the guest shut down), so its journal must not need replaying.
    public func problems(of check: GuestDiskCheck, quiesced: Bool) -> [String] {
        var problems = check.problems
        if quiesced && check.neededRecovery { problems.append("quiesced, yet the journal needed recovery") }
        let held = check.manifest ?? 0
        if held < announcedBefore {
            problems.append("holds manifest \(check.manifest.map(String.init) ?? "none"), but \(announcedBefore) was announced before the checkpoint")
        }
        if held > announcedAfter + 1 {
            problems.append("holds manifest \(held), newer than any announced by the end of the backup (\(announcedAfter))")
        }
        return problems
    }
}
