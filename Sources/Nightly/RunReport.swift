import Agent
import BackupRepository
import BlockIO
import Foundation

/// The morning report: what the run did for every VM and disk, and for the repository.
/// `tessera run --json` prints it as its last line; `[run] report` keeps the last one.
public struct RunReport: Codable, Sendable {
    public var type = "report"
    public var config: String
    public var repository: String
    /// When the run started (ISO 8601, UTC) and how long it took.
    public var started: String
    public var seconds: Double = 0
    public var vms: [VMReport] = []
    public var retention: RetentionOutcome?
    public var prune: PruneReport?
    public var verify: VerifyOutcome?
    /// Bytes of everything in the repository after the run (packs, indexes, maps, records).
    public var repositoryBytes: UInt64?
    /// Problems that are not one VM's: a job hook that failed, retention or prune or the
    /// verification that failed, the metrics file that could not be written.
    public var errors: [String] = []
    public var warnings: [String] = []
    public var exitCode: Int32 = 0

    public init(config: String, repository: String, started: Date) {
        self.config = config
        self.repository = repository
        self.started = ISO8601DateFormatter().string(from: started)
    }

    public enum Status: String, Codable, Sendable {
        case ok
        case failed
        /// Not started: the backup window had closed, or the run was cancelled first.
        case skipped
    }

    public enum Consistency: String, Codable, Sendable {
        /// The guest's file systems were frozen through its agent at the checkpoint.
        case application
        /// The disks as a power cut would leave them (all at one instant for a VM).
        case crash
    }

    public struct VMReport: Codable, Sendable {
        public var name: String
        public var status: Status
        public var consistency: Consistency?
        /// The consistency group of the disks the filter tracks.
        public var group: String?
        public var attempts = 0
        public var seconds: Double = 0
        public var disks: [DiskReport] = []
        public var warnings: [String] = []
        /// Why the VM failed, and what to do.
        public var error: String?

        public init(name: String, status: Status) {
            self.name = name
            self.status = status
        }

        enum CodingKeys: String, CodingKey {
            case name, status, consistency, group, attempts, seconds, disks, warnings, error
        }
    }

    public struct DiskReport: Codable, Sendable {
        public var name: String
        /// filter, nbd or scan: where the changes came from.
        public var changes: String
        public var snapshot: String?
        /// cbt, nbd-bitmap, scan or full: how the backup read the disk.
        public var mode: String?
        public var fullReason: String?
        public var diskSize: UInt64 = 0
        public var bytesRead: UInt64 = 0
        public var bytesStored: UInt64 = 0
        public var seconds: Double = 0
        /// Converging: the passes over the live disk before the checkpoint (bytes each).
        public var passes: [UInt64]?
        /// How long the disk's checkpoint was held, from the group checkpoint to its release.
        public var checkpointSeconds: Double?
        public var error: String?

        public init(name: String, changes: String) {
            self.name = name
            self.changes = changes
        }

        enum CodingKeys: String, CodingKey {
            case name, changes, snapshot, mode, seconds, error, passes
            case fullReason = "full_reason", diskSize = "disk_size", bytesRead = "bytes_read", bytesStored = "bytes_stored"
            case checkpointSeconds = "checkpoint_seconds"
        }
    }

    public struct RetentionOutcome: Codable, Sendable {
        public var kept = 0
        public var forgotten: [String] = []
    }

    public struct VerifyOutcome: Codable, Sendable {
        /// `K/N`: tonight's slice of the packs.
        public var slice: String
        public var packsRead = 0
        public var bytesRead: UInt64 = 0
        public var findings: [String] = []
        public var seconds: Double = 0

        enum CodingKeys: String, CodingKey { case slice, findings, seconds, packsRead = "packs_read", bytesRead = "bytes_read" }
    }

    enum CodingKeys: String, CodingKey {
        case type, config, repository, started, seconds, vms, retention, prune, verify, errors, warnings
        case repositoryBytes = "repository_bytes", exitCode = "exit_code"
    }

    public var failedVMs: [VMReport] { vms.filter { $0.status == .failed } }
}

extension RunReport {
    /// The report as a person reads it in the morning (or in the journal).
    public func text() -> String {
        var out: [String] = []
        let failed = failedVMs.count, skipped = vms.filter { $0.status == .skipped }.count
        let head = failed == 0 && skipped == 0 && errors.isEmpty ? "all \(Self.count(vms.count, "VM")) backed up" :
            "\(Self.count(vms.count - failed - skipped, "VM")) backed up, \(failed) failed, \(skipped) skipped"
        out.append("tessera run \(started): \(head) in \(Self.seconds(seconds))")
        for vm in vms {
            var line = "VM \(vm.name): \(vm.status.rawValue)"
            if let c = vm.consistency { line += ", \(c.rawValue)-consistent" }
            if vm.attempts > 1 { line += ", \(vm.attempts) attempts" }
            if vm.status != .skipped { line += ", \(Self.seconds(vm.seconds))" }
            if let g = vm.group { line += ", group \(g)" }
            out.append(line)
            for d in vm.disks {
                var l = "  disk \(d.name) (\(d.changes))"
                if let s = d.snapshot {
                    l += ": snapshot \(s) \(d.mode ?? ""), read \(Self.bytes(d.bytesRead)) of \(Self.bytes(d.diskSize)), stored \(Self.bytes(d.bytesStored)), \(Self.seconds(d.seconds))"
                } else if let e = d.error {
                    l += ": \(e)"
                }
                out.append(l)
                if let r = d.fullReason { out.append("    full read because \(r)") }
            }
            for w in vm.warnings { out.append("  warning: \(w)") }
            if let e = vm.error { out.append("  error: \(e)") }
        }
        if let r = retention {
            out.append("retention: \(Self.count(r.forgotten.count, "snapshot")) forgotten, \(r.kept) kept")
        }
        if let p = prune {
            out.append("prune: freed \(Self.bytes(p.bytesFreed)) (\(Self.count(p.packsDeleted, "pack")) deleted, \(p.packsRepacked) repacked)")
        }
        if let v = verify {
            out.append("verify: slice \(v.slice), \(Self.count(v.packsRead, "pack")) (\(Self.bytes(v.bytesRead))) re-read, " +
                       (v.findings.isEmpty ? "no damage" : "\(Self.count(v.findings.count, "problem")) found"))
            for f in v.findings { out.append("  damage: \(f)") }
        }
        if let b = repositoryBytes { out.append("repository: \(Self.bytes(b))") }
        for w in warnings { out.append("warning: \(w)") }
        for e in errors { out.append("error: \(e)") }
        return out.joined(separator: "\n")
    }

    static func count(_ n: Int, _ noun: String) -> String { "\(n) \(noun)\(n == 1 ? "" : "s")" }

    static func seconds(_ s: Double) -> String {
        s < 60 ? String(format: "%.1f s", s) : String(format: "%dm%02ds", Int(s) / 60, Int(s) % 60)
    }

    static func bytes(_ n: UInt64) -> String { Units.bytes(n) }
}
