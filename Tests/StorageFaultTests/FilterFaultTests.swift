import Foundation
import Testing
import TestSupport

/// A fault at every file-system step the filter takes in its state directory while a VM
/// writes and a backup checkpoints and releases: the activity log's appends and syncs (mark
/// before acknowledging), the state file's persist at checkpoint and release, the overlay.
///
/// Whatever fails: the filter keeps serving, every write it acknowledged is on the disk, a
/// backup once the fault is gone restores to the disk byte for byte (so no change was lost
/// from the tracker), and so does one after a SIGKILL and restart (so what reached the state
/// directory is consistent).
@Suite("Storage faults under the filter's state directory", .serialized)
struct FilterFaultTests {
    struct Write {
        let offset: Int, length: Int, value: UInt8, fua: Bool
    }

    /// What one run of the scenario saw.
    struct Outcome {
        var counts: [String: Int] = [:]
        var fired: String?
    }

    /// The writes of the armed window: distinct 64 KiB blocks, some FUA, some in the same
    /// activity-log extent, some not.
    static let before: [Write] = (0..<4).map { Write(offset: $0 * 320 << 10 + $0 * 4096, length: 8192, value: UInt8(0x40 + $0), fua: $0 % 2 == 1) }
    static let during: [Write] = [Write(offset: (1 << 20) + 12288, length: 8192, value: 0x70, fua: true),
                                  Write(offset: (5 << 19) + 4096, length: 4096, value: 0x71, fua: false)]
    static let after: [Write] = (0..<2).map { Write(offset: (3 << 20) + $0 * (128 << 10), length: 4096, value: UInt8(0x60 + $0), fua: $0 == 0) }

    /// Runs the scenario under `fault` (nil: counting run, every step must succeed).
    static func scenario(_ fault: FaultInjection.Fault?, label: String) throws -> Outcome {
        let dir = try TemporaryDirectory(label)
        let disk = dir.file("disk.raw"), repo = dir.file("repo"), arm = dir.file("armed"), report = dir.file("report")
        var rng = SeededGenerator(seed: 11)
        try Data(rng.bytes(2 << 20) + [UInt8](repeating: 0, count: 2 << 20)).write(to: URL(fileURLWithPath: disk))
        try Tessera.ok(["init", "--repo", repo])
        let injector = FaultInjection(path: dir.file("state"), report: report)
        let launcher = ["env"] + injector.environment(fault, arm: arm).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        let filter = FilterProcess(directory: dir, diskPath: disk, launcher: launcher)
        try filter.start()
        defer { if filter.isRunning { filter.kill() } }
        let backup = ["backup", "--repo", repo, "--disk", filter.diskName, "--filter", filter.controlPath, "--json"]
        try Tessera.ok(backup)

        // The armed window: a VM writing, a backup's checkpoint and release between its writes.
        _ = FileManager.default.createFile(atPath: arm, contents: nil)
        var acknowledged: [Write] = []
        func write(_ w: Write) throws {
            let r = try runCommand("qemu-io", ["-f", "raw", "-c", "write \(w.fua ? "-f " : "")-P \(w.value) \(w.offset) \(w.length)", filter.uri])
            if r.succeeded && !r.stderr.contains("failed") && !r.stdout.contains("failed") {
                acknowledged.append(w)
            } else if fault == nil {
                throw CommandError(description: "a write failed without a fault: \(r.stdout) \(r.stderr)")
            }
        }
        for w in before { try write(w) }
        // A pull-mode checkpoint: writes go to its overlay (copy-on-write) while NAME@checkpoint
        // is read, then the release merges them back.
        let atCheckpoint = dir.file("at-checkpoint.raw"), pulled = dir.file("pulled.raw")
        try TestSupport.run("nbdcopy", [filter.uri, atCheckpoint])
        let taken = try filter.cli(["checkpoint", "--disk", filter.diskName])
        if !taken.succeeded {
            guard let fault else { throw CommandError(description: "checkpoint failed without a fault: \(taken.stderr)") }
            FaultInjection.expectCleanFailure(taken, fault, fired: injector.fired())
        }
        for w in during { try write(w) }
        if taken.succeeded {
            let copy = try runCommand("nbdcopy", [filter.checkpointURI, pulled])
            if copy.succeeded {
                #expect(try Data(contentsOf: URL(fileURLWithPath: pulled)) == Data(contentsOf: URL(fileURLWithPath: atCheckpoint)),
                        "\(filter.diskName)@checkpoint is not the disk at its checkpoint under \(fault.map(\.description) ?? "no fault")")
            } else if fault == nil {
                throw CommandError(description: "reading the checkpoint failed without a fault: \(copy.stderr)")
            }
            let released = try filter.cli(["release", "--disk", filter.diskName])
            if !released.succeeded {
                guard let fault else { throw CommandError(description: "release failed without a fault: \(released.stderr)") }
                FaultInjection.expectCleanFailure(released, fault, fired: injector.fired())
                // What an admin does next: the same release again (the fault fired once).
                let again = try filter.cli(["release", "--disk", filter.diskName])
                #expect(again.succeeded, "a release retried after \(fault) failed: \(again.stderr)")
            }
        }
        let middle = try Tessera.run(backup)
        for w in after { try write(w) }
        try FileManager.default.removeItem(atPath: arm)

        var outcome = Outcome(fired: injector.fired())
        let context = "\(fault.map(\.description) ?? "no fault") fired as \(outcome.fired ?? "nothing")"
        if !middle.succeeded {
            if let fault { FaultInjection.expectCleanFailure(middle, fault, fired: outcome.fired) } else {
                throw CommandError(description: "the backup failed without a fault: \(middle.stderr)")
            }
        }
        #expect(filter.isRunning, "the filter must keep serving after \(context): \(filter.log)")
        guard filter.isRunning else { return outcome }

        // Every acknowledged write is on the disk, as the VM sees it (a checkpoint a failed
        // release left open keeps new writes in its overlay, not yet in the file).
        let live = dir.file("live.raw")
        try TestSupport.run("nbdcopy", [filter.uri, live])
        let bytes = try Data(contentsOf: URL(fileURLWithPath: live))
        for w in acknowledged {
            #expect(bytes[w.offset..<w.offset + w.length].allSatisfy { $0 == w.value },
                    "an acknowledged write at \(w.offset) is not on the disk after \(context)")
        }
        // The fault is gone: a backup restores to the disk, so the tracker lost no change.
        let id = try Tessera.summary(try Tessera.ok(backup))["snapshot"] as? String ?? ""
        #expect(try Tessera.restore(repo: repo, snapshot: id, scratch: dir.path) == bytes, "the backup after \(context) differs from the disk")

        // What reached the state directory is consistent: a crash now, a restart, a backup.
        if fault == nil { filter.stop() } else { filter.kill() }
        try filter.start()
        let afterCrash = try Tessera.summary(try Tessera.ok(backup))["snapshot"] as? String ?? ""
        #expect(try Tessera.restore(repo: repo, snapshot: afterCrash, scratch: dir.path) == bytes,
                "the backup after a SIGKILL following \(context) differs from the disk")
        let check = try Tessera.run(["check", "--repo", repo, "--read-data"])
        #expect(check.succeeded, "check after \(context): \(check.stdout)")
        filter.stop()
        #expect(try Data(contentsOf: URL(fileURLWithPath: disk)) == bytes, "the disk file after a clean stop (\(context))")
        outcome.counts = try injector.counts()
        return outcome
    }

    @Test("the filter survives a fault at every state-directory step of writes, a checkpoint and a release",
          arguments: FaultInjection.Kind.all)
    func stateDirectory(kind: FaultInjection.Kind) throws {
        let counts = try Self.scenario(nil, label: "fault-filter-count-\(kind.name)").counts
        var fired = 0, tried = 0
        // Each fault here costs a filter start, a restart and four backups: the default suite
        // samples 6 steps per kind (every step with TESSERA_LONG=1).
        for fault in FaultInjection.plan(counts, kinds: [kind], sample: 6) {
            if try Self.scenario(fault, label: "fault-filter-\(kind.name)").fired != nil { fired += 1 }
            tried += 1
        }
        print("\(kind.name): \(tried) faults (\(fired) fired) over \(counts[kind.name] ?? 0) steps of the filter's state directory")
    }
}
