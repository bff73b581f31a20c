import BackupRepository
import BlockIO
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The run's metrics in the Prometheus text format, for node_exporter's textfile collector
/// (the way operators already watch their backups): written whole to a temporary name and
/// renamed, so the collector never reads half a file (it ignores names not ending in .prom).
///
/// A VM's last success time must survive a night it fails (that is the alert people set:
/// "no success for 36 hours"), so it is carried over from the previous file.
public enum RunMetrics {
    public static func write(_ report: RunReport, finished: Date, to path: String) throws {
        let previous = (try? String(contentsOfFile: path, encoding: .utf8)).map(lastSuccesses) ?? [:]
        let text = render(report, finished: finished, previousSuccesses: previous)
        try DurableFile.write(Array(text.utf8), to: path)
        // Readable by the collector, which runs as another user; nothing in it is secret.
        chmod(path, 0o644)
    }

    static func render(_ report: RunReport, finished: Date, previousSuccesses: [String: Double]) -> String {
        var lines: [String] = []
        func metric(_ name: String, _ help: String, _ samples: [(labels: String, value: String)]) {
            lines.append("# HELP tessera_\(name) \(help)")
            lines.append("# TYPE tessera_\(name) gauge")
            for s in samples { lines.append("tessera_\(name)\(s.labels) \(s.value)") }
        }
        let now = String(format: "%.0f", finished.timeIntervalSince1970)
        let ok = report.exitCode == 0
        metric("run_last_timestamp_seconds", "When the last nightly run ended.", [("", now)])
        metric("run_success", "1 if the last run backed up every VM without errors.", [("", ok ? "1" : "0")])
        metric("run_duration_seconds", "How long the last run took.", [("", String(format: "%.3f", report.seconds))])
        var successes = previousSuccesses
        for vm in report.vms where vm.status == .ok { successes[vm.name] = finished.timeIntervalSince1970 }
        let vms = report.vms
        metric("vm_success", "1 if the VM was backed up in the last run.", vms.map { (labels(vm: $0.name), $0.status == .ok ? "1" : "0") })
        metric("vm_last_success_timestamp_seconds", "When the VM was last backed up successfully.",
               successes.keys.sorted().map { (labels(vm: $0), String(format: "%.0f", successes[$0]!)) })
        metric("vm_duration_seconds", "How long the VM's backup took.", vms.map { (labels(vm: $0.name), String(format: "%.3f", $0.seconds)) })
        metric("vm_application_consistent", "1 if the guest was frozen through its agent at the checkpoint.",
               vms.filter { $0.status == .ok }.map { (labels(vm: $0.name), $0.consistency == .application ? "1" : "0") })
        let disks = vms.flatMap { vm in vm.disks.map { (vm.name, $0) } }
        metric("disk_bytes_read", "Bytes the disk's backup read.", disks.map { (labels(vm: $0.0, disk: $0.1.name), "\($0.1.bytesRead)") })
        metric("disk_bytes_stored", "Bytes the disk's backup added to the repository.", disks.map { (labels(vm: $0.0, disk: $0.1.name), "\($0.1.bytesStored)") })
        metric("disk_size_bytes", "The disk's size.", disks.map { (labels(vm: $0.0, disk: $0.1.name), "\($0.1.diskSize)") })
        if let bytes = report.repositoryBytes {
            metric("repository_bytes", "Bytes the repository holds after the run.", [("", "\(bytes)")])
        }
        if let prune = report.prune {
            metric("prune_bytes_freed", "Bytes the last run's prune freed.", [("", "\(prune.bytesFreed)")])
        }
        if let verify = report.verify {
            metric("verify_findings", "Damage found by the last run's verification.", [("", "\(verify.findings.count)")])
            metric("verify_bytes_read", "Bytes the last run's verification re-read.", [("", "\(verify.bytesRead)")])
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// The `vm_last_success_timestamp_seconds` samples of a previous file.
    static func lastSuccesses(_ text: String) -> [String: Double] {
        var out: [String: Double] = [:]
        let prefix = "tessera_vm_last_success_timestamp_seconds{vm=\""
        for line in text.split(separator: "\n") where line.hasPrefix(prefix) {
            let rest = line.dropFirst(prefix.count)
            guard let close = rest.range(of: "\"} ") else { continue }
            let name = unescape(String(rest[..<close.lowerBound]))
            if let value = Double(rest[close.upperBound...]) { out[name] = value }
        }
        return out
    }

    static func labels(vm: String, disk: String? = nil) -> String {
        "{vm=\"\(escape(vm))\"" + (disk.map { ",disk=\"\(escape($0))\"" } ?? "") + "}"
    }

    /// The exposition format's escapes for a label value.
    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"").replacingOccurrences(of: "\n", with: "\\n")
    }

    static func unescape(_ s: String) -> String {
        s.replacingOccurrences(of: "\\n", with: "\n").replacingOccurrences(of: "\\\"", with: "\"").replacingOccurrences(of: "\\\\", with: "\\")
    }
}
