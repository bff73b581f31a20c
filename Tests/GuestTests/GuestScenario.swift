import Foundation
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// A snapshot taken of the running guest and what its restore must show.
struct GuestSnapshot {
    enum Kind: String {
        /// Taken while the guest wrote: the journal may need replaying.
        case crashConsistent = "crash"
        /// Taken with the guest's file systems frozen by the guest agent: a clean journal.
        case quiesced
        /// Checkpointed while frozen, read after the thaw while the guest writes on: a clean journal.
        case quiescedCheckpoint = "frozen ckpt"
        /// Taken with the VM paused (QMP stop): the restore equals the disk file byte for byte.
        case paused
        /// Taken after the guest unmounted and powered off: clean, and exactly the last manifest.
        case shutDown = "shut down"
    }

    var id: String
    var kind: Kind
    var window: ManifestWindow
    var mode: String
    var fullReason: String?
    var bytesRead: UInt64
    var seconds: Double
    var note = ""
    var check: GuestDiskCheck?

    /// The journal must be clean: the file systems were frozen (or unmounted) at the checkpoint.
    var quiesced: Bool { kind == .quiesced || kind == .quiescedCheckpoint || kind == .shutDown }
}

/// The pieces of a VM test: a fresh sparse disk served by a restartable filter, a repository,
/// the guest writing on the disk, and the snapshots taken so far with the manifest window
/// each must satisfy. A test drives the steps; `verifyAll` restores and checks every snapshot.
/// (A variant that backs up with `tessera run` instead of `tessera backup` reuses all but the
/// backup step: give it the window and the kind, append a `GuestSnapshot`.)
final class GuestScenario {
    let scratch: TemporaryDirectory
    let diskPath: String
    let repository: String
    let filter: RestartableFilter
    let vm: GuestVM
    let started = Date()
    var snapshots: [GuestSnapshot] = []
    var events: [(seconds: Double, text: String)] = []

    static let diskName = "vm"

    init(diskBytes: Int64 = 512 << 20, workload: GuestWorkload) throws {
        let image = try GuestImage.locate()
        _ = try GuestImage.qemu()
        scratch = try TemporaryDirectory("guest")
        diskPath = scratch.file("disk.raw")
        repository = scratch.file("repo")
        guard FileManager.default.createFile(atPath: diskPath, contents: nil),
              truncate(diskPath, off_t(diskBytes)) == 0 else { throw GuestError("cannot create \(diskPath)") }
        filter = RestartableFilter(directory: scratch.path, disk: Self.diskName, path: diskPath)
        try filter.start()
        try Tessera.ok(["init", "--repo", repository])
        vm = try GuestVM(image: image, nbdSocket: filter.nbdSocket, export: Self.diskName, directory: scratch.path,
                         workload: workload)
        log("QEMU started (pid \(vm.qemu.pid)), filter pid \(filter.command?.pid ?? 0), in \(scratch.path)")
    }

    var elapsed: Double { Date().timeIntervalSince(started) }

    func log(_ text: String) {
        events.append((elapsed, text))
        print(String(format: "[guest %6.1fs] ", elapsed) + text)
    }

    /// Times a step and logs it.
    @discardableResult
    func step<T>(_ what: String, _ body: () throws -> T) rethrows -> T {
        let t = Date()
        let value = try body()
        log(String(format: "%@ (%.2f s)", what, Date().timeIntervalSince(t)))
        return value
    }

    /// Waits for a manifest newer than those announced so far.
    @discardableResult
    func nextManifest(timeout: Double = 120) throws -> Int {
        let now = vm.console.newestManifest
        return try step("manifest after \(now)") { try vm.waitForManifest(after: now, timeout: timeout) }
    }

    /// `tessera backup --filter` of the disk, recorded with the manifest window around it.
    @discardableResult
    func backup(_ kind: GuestSnapshot.Kind, note: String = "") throws -> GuestSnapshot {
        try backup(kind, note: note, arguments: ["--disk", Self.diskName, "--filter", filter.control])
    }

    /// `tessera backup ARGUMENTS --json`, recorded with the manifest window around it (or `window`).
    @discardableResult
    func backup(_ kind: GuestSnapshot.Kind, note: String = "", arguments: [String], window: ManifestWindow? = nil) throws -> GuestSnapshot {
        let before = vm.console.newestManifest
        let t = Date()
        let r = try Tessera.ok(["backup", "--repo", repository, "--json"] + arguments)
        let seconds = Date().timeIntervalSince(t)
        let s = try Tessera.summary(r)
        guard let id = s["snapshot"] as? String else { throw GuestError("no snapshot in \(s)") }
        let snapshot = GuestSnapshot(
            id: id, kind: kind,
            window: window ?? ManifestWindow(announcedBefore: before, announcedAfter: vm.console.newestManifest),
            mode: s["mode"] as? String ?? "?", fullReason: s["full_reason"] as? String,
            bytesRead: (s["bytes_read"] as? NSNumber)?.uint64Value ?? 0, seconds: seconds, note: note)
        snapshots.append(snapshot)
        log(String(format: "backup %@ %@ (%@%@), read %.1f MiB, %.2f s, manifests %@",
                   String(id.prefix(8)), kind.rawValue, snapshot.mode, snapshot.fullReason.map { ": \($0)" } ?? "",
                   Double(snapshot.bytesRead) / 1048576, seconds, snapshot.window.description))
        return snapshot
    }

    /// A backup with the guest's file systems frozen for the whole backup. `tessera backup`
    /// takes and releases its own checkpoint and its CLI cannot adopt one taken by
    /// `tessera filter checkpoint`, so freeze → checkpoint → thaw → read is not possible from
    /// the command line; the guest stays frozen while the backup reads.
    @discardableResult
    func quiescedBackup() throws -> GuestSnapshot {
        let t = Date()
        var frozenFor = 0.0
        let snapshot = try vm.whileFrozen {
            let status = try vm.withGuestAgent { try $0.freezeStatus() }
            guard status == "frozen" else { throw GuestError("guest-fsfreeze-status says \(status)") }
            let s = try backup(.quiesced, note: "frozen for the whole backup")
            frozenFor = Date().timeIntervalSince(t)
            return s
        }
        log(String(format: "guest frozen for %.2f s (freeze, backup, thaw)", frozenFor))
        return snapshot
    }

    /// Runs `body` (anything that takes snapshots of the guest: `tessera run`, a script) and
    /// returns the manifest window a snapshot taken inside it must satisfy.
    func window<T>(_ body: () throws -> T) rethrows -> (value: T, window: ManifestWindow) {
        let before = vm.console.newestManifest
        let value = try body()
        return (value, ManifestWindow(announcedBefore: before, announcedAfter: vm.console.newestManifest))
    }

    /// Records a snapshot taken by other means (`tessera run`...), for `verifyAll` to restore and check.
    func record(_ id: String, kind: GuestSnapshot.Kind, window: ManifestWindow, mode: String = "?", note: String = "") {
        snapshots.append(GuestSnapshot(id: id, kind: kind, window: window, mode: mode, fullReason: nil, bytesRead: 0,
                                       seconds: 0, note: note))
        log("recorded snapshot \(id.prefix(8)) \(kind.rawValue), manifests \(window)")
    }

    /// Freeze, `tessera filter checkpoint`, thaw; then, while the guest writes on, the frozen
    /// checkpoint is read with the pull-mode reader (`backup --nbd NAME@checkpoint --full`) and
    /// released (commit). The snapshot goes to a disk of its own in the repository (`vm-pull`):
    /// a pull-mode bitmap chain must not interleave with the `--filter` chain, and `--full`
    /// reads only what `base:allocation` says is allocated. This is the order `tessera run`
    /// follows (short freeze, long read), with today's commands.
    /// - Parameter killingTheFilter: SIGKILL and restart the filter while the checkpoint is open
    ///   and the guest writes into the overlay (the checkpoint is reopened on restart).
    @discardableResult
    func quiescedCheckpointBackup(killingTheFilter: Bool = false) throws -> GuestSnapshot {
        let before = vm.console.newestManifest
        let t = Date()
        try vm.whileFrozen {
            _ = try Tessera.ok(["filter", "checkpoint", "--control", filter.control, "--disk", Self.diskName,
                                "--owner-pid", "\(getpid())"])
        }
        let frozenFor = Date().timeIntervalSince(t)
        let window = ManifestWindow(announcedBefore: before, announcedAfter: vm.console.newestManifest)
        log(String(format: "guest frozen for %.2f s (freeze, filter checkpoint, thaw)", frozenFor))
        if killingTheFilter {
            try nextManifest()
            try killFilter(outage: 1)
        }
        let uri = "nbd+unix:///\(Self.diskName)@checkpoint?socket=\(filter.nbdSocket)"
        let snapshot: GuestSnapshot
        do {
            snapshot = try backup(.quiescedCheckpoint, note: killingTheFilter ? "read after the thaw and a SIGKILL" : "read after the thaw",
                                  arguments: ["--disk", "\(Self.diskName)-pull", "--nbd", uri, "--full"], window: window)
        } catch {
            _ = try? Tessera.run(["filter", "release", "--control", filter.control, "--disk", Self.diskName, "--abort"])
            throw error
        }
        try step("filter release (commit)") {
            _ = try Tessera.ok(["filter", "release", "--control", filter.control, "--disk", Self.diskName])
        }
        return snapshot
    }

    /// One night of `tessera run` over this VM, as an operator would have it: the guest agent
    /// freezes the guest for the group checkpoint only (quiesce required), the backup reads
    /// while the guest writes on, and a verification slice re-reads stored data. The snapshot
    /// must then restore like every quiesced one: a clean journal, the last manifest before the
    /// checkpoint.
    @discardableResult
    /// - Parameter quiesced: false runs it with `quiesce = "off"`: crash-consistent, taken while
    ///   the guest writes (its journal may need replaying).
    func nightlyRun(note: String = "tessera run", quiesced: Bool = true) throws -> GuestSnapshot {
        let config = scratch.file("nightly.toml")
        try """
            repository = "\(repository)"
            [filter]
            control = "\(filter.control)"
            socket = "\(filter.nbdSocket)"
            state-dir = "\(filter.stateDirectory)"
            [run]
            retries = 0
            freeze-timeout = "60s"
            report = "\(scratch.file("last-run.json"))"
            metrics = "\(scratch.file("tessera.prom"))"
            [verify]
            read-data-every = 2
            [[vm]]
            name = "guest"
            guest-agent = "\(vm.guestAgentSocket)"
            quiesce = "\(quiesced ? "required" : "off")"
            [[vm.disk]]
            name = "\(Self.diskName)"
            path = "\(diskPath)"
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let t = Date()
        let (r, window) = try self.window { try Tessera.run(["run", "--config", config, "--json"]) }
        let seconds = Date().timeIntervalSince(t)
        guard r.status == 0 else { throw GuestError("tessera run exited \(r.status): \(r.stdout.suffix(2000)) \(r.stderr.suffix(2000))") }
        let report = try Tessera.summary(r)
        let vm = (report["vms"] as? [[String: Any]])?.first ?? [:]
        guard vm["consistency"] as? String == (quiesced ? "application" : "crash") else {
            throw GuestError("tessera run: consistency is not what quiesce = \(quiesced ? "required" : "off") promises: \(vm)")
        }
        guard let disk = (vm["disks"] as? [[String: Any]])?.first, let id = disk["snapshot"] as? String else {
            throw GuestError("tessera run: no snapshot in \(report)")
        }
        guard (report["verify"] as? [String: Any])?["findings"] as? [String] == [] else { throw GuestError("verification: \(report)") }
        var snapshot = GuestSnapshot(id: id, kind: quiesced ? .quiescedCheckpoint : .crashConsistent, window: window, mode: disk["mode"] as? String ?? "?",
                                     fullReason: disk["full_reason"] as? String,
                                     bytesRead: (disk["bytes_read"] as? NSNumber)?.uint64Value ?? 0, seconds: seconds, note: note)
        snapshot.note = note
        snapshots.append(snapshot)
        log(String(format: "tessera run: snapshot %@ %@, read %.1f MiB, %.2f s, manifests %@", String(id.prefix(8)),
                   snapshot.mode, Double(snapshot.bytesRead) / 1048576, seconds, window.description))
        return snapshot
    }

    /// SIGKILLs the filter under the running guest, leaves it down `outage` seconds (the guest's
    /// I/O waits, QEMU reconnects), starts it again and waits for the guest to announce a
    /// manifest, which proves its writes went through.
    func killFilter(outage: Double) throws {
        let before = vm.console.newestManifest
        step("filter SIGKILLed") { filter.kill() }
        // The outage itself is what is tested: no marker to wait for.
        Thread.sleep(forTimeInterval: outage)
        try step("filter restarted") { try filter.start() }
        try step("guest wrote on: manifest after \(before)") { try vm.waitForManifest(after: before, timeout: 180) }
    }

    /// Waits until no overlay merge runs (the disk file then holds every acknowledged write).
    func waitForMerge(timeout: Double = 60) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let r = try Tessera.ok(["filter", "status", "--control", filter.control, "--json"])
            let disks = (try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]]) ?? []
            if disks.allSatisfy({ ($0["merging"] as? Bool) != true && $0["checkpoint"] == nil }) { return }
            if Date() >= deadline { throw GuestError("the overlay still merges after \(Int(timeout)) s: \(r.stdout)") }
            usleep(50_000)
        }
    }

    /// With the VM paused (QMP stop drains its I/O): a backup, its restore compared byte for
    /// byte with the disk file, then `cont`.
    func pausedComparison(note: String = "") throws {
        try step("QMP stop") { try vm.pause() }
        defer { try? step("QMP cont") { try vm.resume() } }
        let snapshot = try backup(.paused, note: note)
        try waitForMerge()
        let target = scratch.file("paused-\(snapshot.id.prefix(8)).raw")
        try step("restore of the paused snapshot") {
            _ = try Tessera.ok(["restore", "--repo", repository, snapshot.id, "--to", target])
        }
        let cmp = try step("cmp with the disk file") { try runCommand("cmp", [diskPath, target]) }
        try? FileManager.default.removeItem(atPath: target)
        #expect(cmp.succeeded, "the restore of the paused guest differs from the disk file: \(cmp.stdout)\(cmp.stderr)")
    }

    /// Restores every snapshot and checks it against its kind and manifest window.
    func verifyAll(lastManifest: Int?) throws {
        for i in snapshots.indices {
            let s = snapshots[i]
            let target = scratch.file("restore-\(i).raw")
            let t = Date()
            try Tessera.ok(["restore", "--repo", repository, s.id, "--to", target])
            let restoreSeconds = Date().timeIntervalSince(t)
            let check = try GuestDiskChecker.check(image: target, scratch: scratch.path)
            try? FileManager.default.removeItem(atPath: target)
            snapshots[i].check = check
            var problems = s.window.problems(of: check, quiesced: s.quiesced)
            if s.kind == .shutDown, let lastManifest, check.manifest != lastManifest {
                problems.append("shut down after manifest \(lastManifest), but holds \(check.manifest.map(String.init) ?? "none")")
            }
            log(String(format: "snapshot %d %@ %@: restore %.2f s, check %.2f s: %@%@", i, String(s.id.prefix(8)),
                       s.kind.rawValue, restoreSeconds, check.seconds, check.description,
                       check.fsckNotes.isEmpty ? "" : " (e2fsck -fn noted: \(check.fsckNotes.joined(separator: " | ")))"))
            for problem in problems {
                Issue.record("snapshot \(i) \(s.id) (\(s.kind.rawValue), \(s.window)): \(problem)")
            }
        }
    }

    /// One line per snapshot, for the end of the log.
    var table: String {
        func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }
        func left(_ s: String, _ n: Int) -> String { s.count >= n ? s : String(repeating: " ", count: n - s.count) + s }
        var out = "#   snapshot  kind        mode  read MiB  backup s  manifests before/after/held  journal   files  result\n"
        for (i, s) in snapshots.enumerated() {
            let c = s.check
            out += pad("\(i)", 4) + pad(String(s.id.prefix(8)), 10) + pad(s.kind.rawValue, 12) + pad(s.mode, 6)
                + left(String(format: "%.1f", Double(s.bytesRead) / 1048576), 8) + left(String(format: "%.2f", s.seconds), 10)
                + "  " + pad("\(s.window.announcedBefore)/\(s.window.announcedAfter)/\(c?.manifest.map(String.init) ?? "-")", 28)
                + pad(c.map { $0.neededRecovery ? "replayed" : "clean" } ?? "-", 10) + left("\(c?.filesChecked ?? 0)", 5)
                + "  " + (c.map { $0.passed ? "ok" : "FAILED" } ?? "unchecked") + (s.note.isEmpty ? "" : "  (\(s.note))") + "\n"
        }
        return out
    }
}
