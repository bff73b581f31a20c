import BackupRepository
import Foundation

/// The nightly run's config (one TOML file, `Fixtures/nightly.toml` is a commented example):
/// the repository, the filter, retention, verification, how the run behaves, and the VMs with
/// their disks, guest agents and hooks.
public struct RunConfig: Sendable, Equatable {
    public var file: String
    public var repository: String
    public var filter: FilterSettings?
    public var run: RunSettings
    public var retention: RetentionSettings?
    public var verify: VerifySettings?
    public var vms: [VM]

    public struct FilterSettings: Sendable, Equatable {
        public var control: String
        public var socket: String
        public var stateDirectory: String
        public var tcp: String?
        public var granularity: UInt64?
    }

    /// Settings a VM may override.
    public struct VMSettings: Sendable, Equatable {
        public var quiesce: Quiesce = .try
        /// Retries of a VM whose backup failed, and the wait between them.
        public var retries = 1
        public var retryDelay: Double = 300
        public var hookTimeout: Double = 600
        /// The longest a guest stays frozen: the thaw comes by then even if Tessera is killed.
        public var freezeTimeout: Double = 60
        public var hooks: Hooks = Hooks()
    }

    public struct RunSettings: Sendable, Equatable {
        public var parallelVMs = 1
        /// After this many seconds from the start of the run, no new VM starts.
        public var window: Double?
        /// A Prometheus textfile (node_exporter's textfile collector reads it).
        public var metrics: String?
        /// Where the JSON report of the last run is kept.
        public var report: String?
        public var vm = VMSettings()
    }

    public enum Quiesce: String, Sendable, Equatable, CaseIterable {
        /// Crash-consistent: no freeze.
        case off
        /// Freeze through the guest agent if the VM has one and it answers; otherwise
        /// crash-consistent, with a warning in the report.
        case `try`
        /// Without a freeze the VM's backup fails.
        case required
    }

    /// Programs run at the phases of a run, without a shell (argv), with the phase, VM and
    /// disks in environment variables and a time limit each.
    public struct Hooks: Sendable, Equatable {
        public enum Phase: String, Sendable, CaseIterable {
            case jobStart = "job-start", backupStart = "backup-start", preCheckpoint = "pre-checkpoint"
            case postCheckpoint = "post-checkpoint", backupEnd = "backup-end", backupAbort = "backup-abort", jobEnd = "job-end"
        }
        public var commands: [Phase: [[String]]] = [:]

        public init() {}

        /// The hooks of a VM run after the global ones of the same phase.
        func adding(_ other: Hooks) -> Hooks {
            var out = self
            for (phase, list) in other.commands { out.commands[phase, default: []] += list }
            return out
        }
    }

    public struct RetentionSettings: Sendable, Equatable {
        public var policy: RetentionPolicy
        /// Prune after forgetting (frees the data).
        public var prune = true
    }

    public struct VerifySettings: Sendable, Equatable {
        /// All data is re-read once per this many nights: each night checks one N-th of it
        /// (`check --read-data-subset K/N`), like Proxmox Backup Server's verify jobs.
        public var readDataEvery: Int
    }

    public struct VM: Sendable, Equatable {
        public var name: String
        public var disks: [Disk]
        /// The QEMU guest agent's socket (virtio-serial `org.qemu.guest_agent.0`).
        public var guestAgent: String?
        public var settings: VMSettings
    }

    public struct Disk: Sendable, Equatable {
        public var name: String
        /// The flat file or VMDK descriptor (for `.filter` and `.scan`).
        public var path: String?
        public var changes: Changes
    }

    public enum Changes: Sendable, Equatable {
        /// Tessera's filter tracks the disk (it serves it).
        case filter
        /// An NBD export with a QEMU dirty bitmap (libvirt pull mode).
        case nbd(uri: String, bitmap: String?)
        /// No tracking: a scan, deduplicated.
        case scan
    }
}
