import BackupRepository
import Foundation

/// What a run will do, from the config alone (`tessera config check`, `tessera run
/// --dry-run`, which adds `problems` from asking the repository, the filter and the agents).
public struct RunPlan: Codable, Sendable {
    public var type = "plan"
    public var config: String
    public var repository: String
    public var control: String?
    public var parallelVMs: Int
    public var window: Double?
    public var vms: [VM]
    public var retention: String?
    public var prune: Bool
    /// Tonight's verification slice, `K/N`.
    public var verify: String?
    public var metrics: String?
    public var report: String?
    public var problems: [String]?

    public struct VM: Codable, Sendable {
        public var name: String
        public var disks: [Disk]
        public var quiesce: String
        public var guestAgent: String?
        public var freezeTimeout: Double
        /// application or crash: what the backups will be if everything answers.
        public var consistency: String
        public var retries: Int
        public var retryDelay: Double
        public var hooks: [String: [[String]]]
        public var warnings: [String]
    }

    public struct Disk: Codable, Sendable {
        public var name: String
        public var changes: String
        public var path: String?
        public var nbd: String?
        public var bitmap: String?
    }

    enum CodingKeys: String, CodingKey {
        case type, config, repository, control, window, vms, retention, prune, verify, metrics, report, problems
        case parallelVMs = "parallel_vms"
    }

    init(_ config: RunConfig, vms: [RunConfig.VM], now: Date) {
        self.config = config.file
        repository = config.repository
        control = config.filter?.control
        parallelVMs = config.run.parallelVMs
        window = config.run.window
        metrics = config.run.metrics
        report = config.run.report
        prune = config.retention?.prune ?? false
        retention = config.retention.map { Self.describe($0.policy) }
        verify = config.verify.map { "\(NightlyRun.verifySlice(day: now, every: $0.readDataEvery))/\($0.readDataEvery)" }
        self.vms = vms.map { vm in
            let hooks = vm.settings.hooks
            let quiesce = vm.guestAgent != nil && vm.settings.quiesce != .off
            var warnings = NightlyRun.consistencyWarnings(vm)
            if vm.guestAgent == nil && vm.settings.quiesce == .required {
                warnings.append("quiesce = \"required\" but the VM has no guest-agent socket: every backup of it would fail")
            }
            return VM(name: vm.name,
                      disks: vm.disks.map { d in
                          switch d.changes {
                          case .nbd(let uri, let bitmap): Disk(name: d.name, changes: "nbd", nbd: uri, bitmap: bitmap)
                          default: Disk(name: d.name, changes: d.changes.name, path: d.path)
                          }
                      },
                      quiesce: vm.settings.quiesce.rawValue, guestAgent: vm.guestAgent, freezeTimeout: vm.settings.freezeTimeout,
                      consistency: quiesce ? "application" : "crash", retries: vm.settings.retries, retryDelay: vm.settings.retryDelay,
                      hooks: Dictionary(uniqueKeysWithValues: hooks.commands.map { ($0.key.rawValue, $0.value) }),
                      warnings: warnings)
        }
    }

    static func describe(_ p: RetentionPolicy) -> String {
        var parts: [String] = []
        for (n, what) in [(p.keepLast, "last"), (p.keepHourly, "hourly"), (p.keepDaily, "daily"), (p.keepWeekly, "weekly"),
                          (p.keepMonthly, "monthly"), (p.keepYearly, "yearly")] where n > 0 {
            parts.append("\(n) \(what)")
        }
        if let w = p.keepWithin { parts.append("all within \(HookRunner.duration(w))") }
        return "keep " + parts.joined(separator: ", ")
    }

    public func text() -> String {
        var out = ["config \(config): \(RunReport.count(vms.count, "VM")) to \(repository)"]
        out.append("  \(parallelVMs) at once" + (window.map { ", none started after \(HookRunner.duration($0))" } ?? ""))
        for vm in vms {
            var line = "VM \(vm.name): \(vm.consistency)-consistent"
            if let agent = vm.guestAgent { line += " (quiesce \(vm.quiesce) through \(agent), thawed within \(HookRunner.duration(vm.freezeTimeout)))" }
            line += ", \(vm.retries) retr\(vm.retries == 1 ? "y" : "ies")"
            out.append(line)
            for d in vm.disks {
                out.append("  disk \(d.name): changes from \(d.changes)" + (d.path.map { ", \($0)" } ?? "") +
                           (d.nbd.map { ", \($0)" } ?? "") + (d.bitmap.map { ", bitmap \($0)" } ?? ""))
            }
            for (phase, commands) in vm.hooks.sorted(by: { $0.key < $1.key }) {
                for argv in commands { out.append("  hook \(phase): \(argv.joined(separator: " "))") }
            }
            for w in vm.warnings { out.append("  warning: \(w)") }
        }
        if let retention { out.append("retention: \(retention)\(prune ? ", then prune" : ", no prune")") }
        if let verify { out.append("verify: tonight re-reads slice \(verify) of the packs") }
        if let metrics { out.append("metrics: \(metrics)") }
        if let report { out.append("report: \(report)") }
        if let problems {
            out.append(problems.isEmpty ? "checked: the repository, the filter and the guest agents answer" : "problems:")
            for p in problems { out.append("  \(p)") }
        }
        return out.joined(separator: "\n")
    }
}
