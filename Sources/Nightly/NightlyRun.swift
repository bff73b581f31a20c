import Agent
import BackupRepository
import BlockIO
import Foundation
import Logging
import Synchronization
import TrackerControl
import Workers

/// `tessera run`: one night for every VM of the config.
///
/// The order, per VM (several VMs at once up to `parallel-vms`): backup-start hooks →
/// pre-checkpoint hooks → freeze through the guest agent → one checkpoint of all the VM's
/// filter disks (a consistency group) → thaw at once → post-checkpoint hooks → a backup of
/// each disk adopting its checkpoint → backup-end hooks (backup-abort on failure), with
/// retries of the whole VM. Then, for the VMs that succeeded, retention and prune, then the
/// night's slice of the verification. A VM that fails never stops the others.
public final class NightlyRun: Sendable {
    public struct Options: Sendable {
        /// Only these VMs (empty: all).
        public var vms: [String] = []
        /// The thaw guard's program and first arguments (`tessera internal-thaw-guard`);
        /// without one, a freeze is bounded only by this process's own thaw.
        public var thawGuard: [String]?

        public init() {}
    }

    /// The exit codes of a run (the CLI's table has them too).
    public enum Exit {
        public static let ok: Int32 = 0
        public static let config: Int32 = 2
        /// Some VM failed or was skipped, or retention, prune or the verification failed or
        /// found damage.
        public static let someFailed: Int32 = 3
        public static let locked: Int32 = 11
    }

    /// Another run holds the config (exit 11, like a locked repository).
    public struct AlreadyRunning: Error, CustomStringConvertible, Sendable {
        public var message: String
        public var description: String { message }
    }

    public let config: RunConfig
    public let options: Options
    let logger: Logger
    let cancellation: Cancellation

    public init(config: RunConfig, options: Options, logger: Logger, cancellation: Cancellation = Cancellation()) {
        self.config = config
        self.options = options
        self.logger = logger
        self.cancellation = cancellation
    }

    /// The VMs the run covers, in config order.
    /// - Throws: `ConfigError` for a `--vm` name the config does not have.
    public func selectedVMs() throws -> [RunConfig.VM] {
        for name in options.vms where !config.vms.contains(where: { $0.name == name }) {
            throw ConfigError(file: config.file, line: nil, key: nil,
                              message: "no VM named \(name) in the config; it has \(config.vms.map(\.name).joined(separator: ", "))")
        }
        return config.vms.filter { options.vms.isEmpty || options.vms.contains($0.name) }
    }

    /// Runs the night. Failures of VMs and of maintenance are in the report (and its exit
    /// code); only a repository that cannot be opened or locked at all throws.
    public func run() throws -> RunReport {
        let started = Date()
        var report = RunReport(config: config.file, repository: config.repository, started: started)
        let vms = try selectedVMs()
        // One run per config at a time (a timer's run and one started by hand): a second run
        // would find every checkpoint held and fail every VM. flock, so a dead run holds nothing.
        let runLock: FileLock
        do { runLock = try FileLock.acquire(config.file) } catch let held as FileLock.Held {
            throw AlreadyRunning(message: "another tessera run\(held.pid.map { " (process \($0))" } ?? "") is running with \(config.file); wait for it to finish")
        }
        defer { withExtendedLifetime(runLock) {} }
        logger.notice("run started", metadata: ["event": "run-start", "vms": "\(vms.count)", "config": "\(config.file)"])
        let repository = try RepositoryAccess.open(config.repository)
        let hooks = HookRunner(timeout: config.run.vm.hookTimeout, logger: logger, cancellation: cancellation)
        var jobStartFailure: String?
        do {
            try hooks.run(config.run.vm.hooks.commands[.jobStart] ?? [], HookRunner.Context(phase: .jobStart, disks: vms.flatMap { $0.disks.map(\.name) }))
        } catch {
            jobStartFailure = "\(error)"
            report.errors.append("the job-start hook failed, so no VM was backed up: \(error)")
        }
        let results = Mutex<[Int: RunReport.VMReport]>([:])
        if jobStartFailure == nil {
            let lock = try RepositoryAccess.lock(repository, .shared)
            let deadline = config.run.window.map { started.addingTimeInterval($0) }
            // Each VM's failures are caught in its report, so nothing here ends the group early.
            try? WorkerGroup.forEach(vms.count, workers: config.run.parallelVMs) { index in
                let vm = vms[index]
                let result: RunReport.VMReport
                if let reason = self.cancellation.reason {
                    result = Self.skipped(vm, because: "the run was cancelled by \(reason) before it started")
                } else if let deadline, Date() > deadline {
                    result = Self.skipped(vm, because: "the backup window (\(HookRunner.duration(self.config.run.window!))) had closed before it could start")
                } else {
                    result = VMBackup(run: self, vm: vm, repository: repository).runWithRetries(deadline: deadline)
                }
                results.withLock { $0[index] = result }
            }
            lock.release()
        } else {
            for index in vms.indices {
                var failed = Self.skipped(vms[index], because: "the job-start hook failed")
                failed.status = .failed
                results.withLock { $0[index] = failed }
            }
        }
        report.vms = vms.indices.map { results.withLock { $0 }[$0]! }
        if jobStartFailure == nil && !cancellation.isCancelled {
            maintain(repository, succeeded: report.vms.filter { $0.status == .ok }.map(\.name), into: &report)
        }
        report.repositoryBytes = try? Self.repositoryBytes(repository)
        var endContext = HookRunner.Context(phase: .jobEnd, disks: vms.flatMap { $0.disks.map(\.name) })
        let failed = !report.failedVMs.isEmpty || !report.errors.isEmpty
        if failed { endContext.error = (report.errors + report.failedVMs.map { "VM \($0.name): \($0.error ?? "failed")" }).joined(separator: "; ") }
        do {
            // Runs even after Ctrl-C (bounded by its time limit): it is where people notify.
            try HookRunner(timeout: config.run.vm.hookTimeout, logger: logger).run(config.run.vm.hooks.commands[.jobEnd] ?? [], endContext)
        } catch {
            report.errors.append("the job-end hook failed: \(error)")
        }
        report.seconds = Date().timeIntervalSince(started)
        // A VM skipped (the window closed) has no backup tonight either: that is not "all done".
        let allDone = report.vms.allSatisfy { $0.status == .ok } && report.errors.isEmpty && (report.verify?.findings.isEmpty ?? true)
        report.exitCode = allDone && !cancellation.isCancelled ? Exit.ok : Exit.someFailed
        save(&report)
        logger.notice("run finished", metadata: ["event": "run-end", "exit_code": "\(report.exitCode)",
                                                 "seconds": "\(String(format: "%.1f", report.seconds))",
                                                 "failed_vms": "\(report.failedVMs.count)"])
        return report
    }

    // MARK: - After the backups

    /// Retention (for the disks of the VMs that succeeded tonight: a VM that keeps failing
    /// keeps its history), prune, then tonight's slice of the verification.
    func maintain(_ repository: Repository, succeeded: [String], into report: inout RunReport) {
        let disks = config.vms.filter { succeeded.contains($0.name) }.flatMap { $0.disks.map(\.name) }
        if let retention = config.retention, !disks.isEmpty {
            do {
                let lock = try RepositoryAccess.lock(repository, .exclusive)
                defer { lock.release() }
                var outcome = RunReport.RetentionOutcome()
                for disk in disks {
                    let decisions = try Retention.forget(retention.policy, in: repository, disk: disk)
                    outcome.kept += decisions.filter(\.keep).count
                    outcome.forgotten += decisions.filter { !$0.keep }.map(\.snapshot.id)
                }
                report.retention = outcome
                logger.notice("retention applied", metadata: ["event": "retention", "forgotten": "\(outcome.forgotten.count)", "kept": "\(outcome.kept)"])
                if retention.prune {
                    let pruned = try Pruner.prune(repository, cancellation: cancellation, logger: logger)
                    report.prune = pruned
                    logger.notice("prune done", metadata: ["event": "prune", "bytes_freed": "\(pruned.bytesFreed)"])
                }
            } catch {
                report.errors.append("retention and prune failed: \(Self.message(error)); the backups are saved, run `tessera forget` and `tessera prune` by hand once the cause is fixed")
            }
        }
        if let verify = config.verify {
            let k = Self.verifySlice(day: Date(), every: verify.readDataEvery)
            var outcome = RunReport.VerifyOutcome(slice: "\(k)/\(verify.readDataEvery)")
            do {
                let lock = try RepositoryAccess.lock(repository, .shared)
                defer { lock.release() }
                let checked = try RepositoryChecker.check(repository, options: CheckOptions(readData: .slice(k, of: verify.readDataEvery)),
                                                          cancellation: cancellation)
                outcome.packsRead = checked.summary.packsRead
                outcome.bytesRead = checked.summary.bytesRead
                outcome.seconds = checked.summary.seconds
                outcome.findings = checked.findings.map { "\($0.object): \($0.problem)" }
                logger.notice("verification done", metadata: ["event": "verify", "slice": "\(outcome.slice)", "findings": "\(outcome.findings.count)"])
            } catch {
                report.errors.append("the verification (slice \(outcome.slice)) failed: \(Self.message(error))")
            }
            report.verify = outcome
        }
    }

    /// Tonight's slice `K` of `N`: day D since the epoch (UTC) reads slice `D mod N + 1`, so
    /// any N nights in a row read every pack once.
    public static func verifySlice(day: Date, every n: Int) -> Int {
        Int((day.timeIntervalSince1970 / 86400).rounded(.down)) % max(1, n) + 1
    }

    static func repositoryBytes(_ repository: Repository) throws -> UInt64 {
        var total: UInt64 = 0
        for kind in [ObjectKind.config, .pack, .index, .mapPage, .diskMap, .snapshot] {
            for key in try repository.store.list(kind) { total += (try? repository.store.size(key)) ?? 0 }
        }
        return total
    }

    /// The report file and the metrics; their failures are the report's errors.
    func save(_ report: inout RunReport) {
        let finished = Date()
        if let path = config.run.metrics {
            do { try RunMetrics.write(report, finished: finished, to: path) } catch {
                report.errors.append("cannot write the metrics to \(path): \(error)")
                if report.exitCode == Exit.ok { report.exitCode = Exit.someFailed }
            }
        }
        if let path = config.run.report {
            do {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                try DurableFile.write(Array(try encoder.encode(report)), to: path)
            } catch {
                report.errors.append("cannot write the report to \(path): \(error)")
                if report.exitCode == Exit.ok { report.exitCode = Exit.someFailed }
            }
        }
    }

    // MARK: - Dry run

    /// What the run would do, from the config alone.
    public func plan() throws -> RunPlan {
        RunPlan(config, vms: try selectedVMs(), now: Date())
    }

    /// The plan and what stands in its way (`--dry-run`): nothing is changed.
    public func dryRun() throws -> RunPlan {
        var plan = try self.plan()
        plan.problems = probe(try selectedVMs())
        return plan
    }

    /// Checks, without changing anything, what the night needs: the repository, the filter
    /// and its disks, the guest agents.
    func probe(_ vms: [RunConfig.VM]) -> [String] {
        var problems: [String] = []
        do { _ = try RepositoryAccess.open(config.repository) } catch {
            problems.append("the repository: \(Self.message(error))")
        }
        let filterDisks = vms.flatMap { $0.disks.filter { $0.changes == .filter } }
        if let filter = config.filter, !filterDisks.isEmpty {
            do {
                let served = try ControlClient(path: filter.control).status()
                for disk in filterDisks where !served.contains(where: { $0.name == disk.name }) {
                    problems.append("the filter at \(filter.control) does not serve disk \(disk.name); start it with `tessera filter serve --config \(config.file)`")
                }
            } catch {
                problems.append("the filter: \(Self.message(error))")
            }
        }
        for vm in vms {
            guard let socket = vm.guestAgent, vm.settings.quiesce != .off else { continue }
            do { _ = try GuestAgent(socket: socket, timeout: 5).status() } catch {
                problems.append("VM \(vm.name): \(error)\(vm.settings.quiesce == .required ? " (quiesce is required: its backup would fail)" : " (its backup would be crash-consistent)")")
            }
        }
        return problems
    }

    /// Disks a freeze and a group checkpoint cannot cover.
    static func consistencyWarnings(_ vm: RunConfig.VM) -> [String] {
        let filter = vm.disks.filter { $0.changes == .filter }
        var warnings: [String] = []
        for disk in vm.disks where disk.changes == .scan {
            warnings.append("disk \(disk.name) is scanned while the VM runs (changes = \"scan\"): its snapshot is not taken at one instant; serve it through the filter for a consistent one")
        }
        if !filter.isEmpty, vm.disks.contains(where: { if case .nbd = $0.changes { true } else { false } }) {
            warnings.append("the VM's NBD-bitmap disks are not checkpointed with its filter disks: they are consistent each on its own, not with the others")
        }
        return warnings
    }

    static func skipped(_ vm: RunConfig.VM, because reason: String) -> RunReport.VMReport {
        var report = RunReport.VMReport(name: vm.name, status: .skipped)
        report.error = reason
        report.disks = vm.disks.map { RunReport.DiskReport(name: $0.name, changes: $0.changes.name) }
        return report
    }

    static func message(_ error: any Error) -> String {
        switch error {
        case let e as AgentError: e.message
        case let e as RepositoryError: e.message
        case let e as FilterError: e.message
        default: "\(error)"
        }
    }
}

extension RunConfig.Changes {
    var name: String {
        switch self {
        case .filter: "filter"
        case .nbd: "nbd"
        case .scan: "scan"
        }
    }
}
