import Agent
import BackupRepository
import Foundation
import Logging
import TrackerControl
import Workers

/// One VM's night: hooks, the freeze, one checkpoint of all its filter disks, the thaw, a
/// backup of each disk, retried as a whole (a retry takes a new group checkpoint, so the
/// disks of a VM always come from one instant).
struct VMBackup {
    let run: NightlyRun
    let vm: RunConfig.VM
    let repository: Repository

    var settings: RunConfig.VMSettings { vm.settings }
    var logger: Logger {
        var l = run.logger
        l[metadataKey: "vm"] = "\(vm.name)"
        return l
    }
    /// The global hooks and then the VM's own (the config merged them).
    var hooks: RunConfig.Hooks { settings.hooks }

    func runWithRetries(deadline: Date?) -> RunReport.VMReport {
        let started = Date()
        var attempt = 0
        while true {
            attempt += 1
            var report = RunReport.VMReport(name: vm.name, status: .ok)
            report.attempts = attempt
            do {
                try self.attempt(&report)
                report.seconds = Date().timeIntervalSince(started)
                logger.notice("VM \(vm.name) backed up", metadata: ["event": "vm-done", "consistency": "\(report.consistency?.rawValue ?? "")",
                                                                    "seconds": "\(String(format: "%.1f", report.seconds))"])
                return report
            } catch {
                report.status = .failed
                report.error = NightlyRun.message(error)
                report.seconds = Date().timeIntervalSince(started)
                logger.error("VM \(vm.name) failed: \(report.error!)", metadata: ["event": "vm-failed", "attempt": "\(attempt)"])
                let retryAt = Date().addingTimeInterval(settings.retryDelay)
                guard attempt <= settings.retries, !run.cancellation.isCancelled, !(error is Cancelled),
                      deadline.map({ retryAt < $0 }) ?? true else {
                    if attempt <= settings.retries && !run.cancellation.isCancelled && !(error is Cancelled) {
                        report.warnings.append("not retried: the backup window closes before the retry would start")
                    }
                    return report
                }
                logger.notice("VM \(vm.name) will be retried in \(HookRunner.duration(settings.retryDelay))",
                              metadata: ["event": "vm-retry", "attempt": "\(attempt)"])
                // A cancellable wait: Ctrl-C during the delay ends the run, not the wait.
                while Date() < retryAt && !run.cancellation.isCancelled { usleep(100_000) }
                if run.cancellation.isCancelled { return report }
            }
        }
    }

    /// One attempt. Fills `report` as it goes, so a failure still shows what was done.
    func attempt(_ report: inout RunReport.VMReport) throws {
        let disks = vm.disks.map(\.name)
        let hooks = self.hooks
        let runner = HookRunner(timeout: settings.hookTimeout, logger: logger, cancellation: run.cancellation)
        report.disks = vm.disks.map { RunReport.DiskReport(name: $0.name, changes: $0.changes.name) }
        report.warnings += NightlyRun.consistencyWarnings(vm)
        var checkpoints: [String: ControlProtocol.CheckpointReply] = [:]
        /// Filter disks read live before the checkpoint (converging), waiting for it.
        var prepared: [String: PreparedBackup] = [:]
        defer { for p in prepared.values { p.abandon() } }
        /// Filter disks whose checkpoint is still open: a failure releases them with abort.
        var open: Set<String> = []
        do {
            try run.cancellation.check()
            try runner.run(hooks.commands[.backupStart] ?? [], .init(phase: .backupStart, vm: vm.name, disks: disks))
            // Converging: each filter disk is read live first, so the group checkpoint (taken
            // while the guest is frozen) is held only for what was written meanwhile.
            for disk in vm.disks where disk.changes == .filter {
                try run.cancellation.check()
                prepared[disk.name] = try job(disk, adopting: nil).prepare()
            }
            try runner.run(hooks.commands[.preCheckpoint] ?? [], .init(phase: .preCheckpoint, vm: vm.name, disks: disks))
            let filterDisks = vm.disks.filter { $0.changes == .filter }.map(\.name)
            if !filterDisks.isEmpty {
                let taken = try checkpointQuiesced(filterDisks, report: &report)
                report.group = taken.group
                for c in taken.checkpoints { checkpoints[c.disk] = c; open.insert(c.disk) }
            } else {
                report.consistency = .crash
                if vm.settings.quiesce == .required {
                    throw GuestAgent.Failure(message: "quiesce is required, but no disk of the VM is served by the filter, so there is no checkpoint to take while it is frozen")
                }
            }
            do {
                try runner.run(hooks.commands[.postCheckpoint] ?? [], .init(phase: .postCheckpoint, vm: vm.name, disks: disks))
            } catch let c as Cancelled {
                throw c
            } catch {
                // The checkpoint is taken: a failing post-checkpoint hook does not undo it.
                report.warnings.append("\(error)")
            }
            var firstError: (any Error)?
            for (index, disk) in vm.disks.enumerated() {
                do {
                    try run.cancellation.check()
                    let summary = try backup(disk, adopting: checkpoints[disk.name], prepared: prepared.removeValue(forKey: disk.name))
                    open.remove(disk.name)
                    report.disks[index].snapshot = summary.snapshot
                    report.disks[index].mode = summary.mode.rawValue
                    report.disks[index].fullReason = summary.fullReason
                    report.disks[index].diskSize = summary.diskSize
                    report.disks[index].bytesRead = summary.bytesRead
                    report.disks[index].bytesStored = summary.bytesStored
                    report.disks[index].seconds = summary.seconds
                    report.disks[index].passes = summary.passes.isEmpty ? nil : summary.passes.map(\.bytes)
                    report.disks[index].checkpointSeconds = summary.checkpointSeconds
                    report.warnings += summary.warnings
                } catch {
                    // The job aborted its session (the checkpoint released with abort) unless it
                    // failed before taking it over; `releaseOpen` below covers that case.
                    report.disks[index].error = NightlyRun.message(error)
                    if firstError == nil { firstError = error }
                    if error is Cancelled { break }
                }
            }
            if let firstError {
                let failed = report.disks.filter { $0.error != nil }.map(\.name)
                if firstError is Cancelled { throw firstError }
                throw NightlyFailure(message: "the backup of disk\(failed.count == 1 ? "" : "s") \(failed.joined(separator: ", ")) failed: \(NightlyRun.message(firstError))")
            }
        } catch {
            releaseOpen(open)
            var context = HookRunner.Context(phase: .backupAbort, vm: vm.name, disks: disks)
            context.error = NightlyRun.message(error)
            // Clean-up hooks run even after Ctrl-C (bounded by their time limit).
            var cleanup = runner
            cleanup.cancellation = nil
            do { try cleanup.run(hooks.commands[.backupAbort] ?? [], context) } catch {
                report.warnings.append("\(error)")
            }
            throw error
        }
        var context = HookRunner.Context(phase: .backupEnd, vm: vm.name, disks: disks)
        context.snapshots = report.disks.compactMap { d in d.snapshot.map { "\(d.name)=\($0)" } }
        do { try runner.run(hooks.commands[.backupEnd] ?? [], context) } catch {
            report.warnings.append("\(error)")
        }
    }

    /// Freezes the guest if it can and should, checkpoints the disks as one group, thaws.
    /// Sets the report's consistency: application only if the checkpoint completed while
    /// the guest was surely frozen (before the thaw guard's earliest moment).
    func checkpointQuiesced(_ disks: [String], report: inout RunReport.VMReport) throws -> ControlProtocol.CheckpointGroupReply {
        guard let filter = run.config.filter else {
            throw NightlyFailure(message: "the VM's disks are tracked by the filter, but the config has no [filter] section")
        }
        report.consistency = .crash
        var agent: GuestAgent?
        var guardProcess: ThawGuard?
        if let socket = vm.guestAgent, settings.quiesce != .off {
            do {
                if let command = run.options.thawGuard {
                    guardProcess = try ThawGuard(command: command, socket: socket, seconds: settings.freezeTimeout)
                }
                let a = GuestAgent(socket: socket, timeout: min(30, settings.freezeTimeout))
                agent = a
                let frozen = try a.freeze()
                logger.info("guest frozen", metadata: ["event": "freeze", "file_systems": "\(frozen)"])
            } catch {
                // A freeze that failed may still have frozen some file systems: thaw to be sure.
                if let agent { _ = try? agent.thaw() }
                guardProcess?.disarm()
                agent = nil
                guardProcess = nil
                if settings.quiesce == .required {
                    throw NightlyFailure(message: "the guest could not be frozen and quiesce is required: \(error)")
                }
                report.warnings.append("crash-consistent: the guest could not be frozen (\(error))")
            }
        }
        let taken: ControlProtocol.CheckpointGroupReply
        let completed: Date
        do {
            taken = try groupCheckpoint(disks, control: filter.control)
            completed = Date()
        } catch {
            thaw(agent, guardProcess, report: &report)
            throw error
        }
        if agent != nil {
            let thawed = thaw(agent, guardProcess, report: &report)
            if guardProcess.map({ !$0.isBeforeDeadline(completed) }) ?? false {
                report.warnings.append("crash-consistent: the checkpoint took longer than the freeze timeout (\(HookRunner.duration(settings.freezeTimeout))), so the guest may have been thawed before it")
            } else if thawed || guardProcess != nil {
                report.consistency = .application
            }
            if report.consistency != .application && settings.quiesce == .required {
                throw NightlyFailure(message: "quiesce is required but the checkpoint was not taken while the guest was frozen")
            }
        }
        return taken
    }

    /// Thaws now; if that fails the guard keeps trying. Returns whether the thaw succeeded.
    @discardableResult
    func thaw(_ agent: GuestAgent?, _ guardProcess: ThawGuard?, report: inout RunReport.VMReport) -> Bool {
        guard let agent else { return false }
        do {
            try agent.thaw()
            guardProcess?.disarm()
            logger.info("guest thawed", metadata: ["event": "thaw"])
            return true
        } catch {
            report.warnings.append("the thaw failed (\(error))\(guardProcess == nil ? "; thaw the guest by hand (guest-fsfreeze-thaw)" : "; the thaw guard keeps trying")")
            if let guardProcess {
                // Without waiting for it: the guard may retry for minutes.
                Thread.detachNewThread { guardProcess.thawNow() }
            }
            return false
        }
    }

    /// One checkpoint of all the disks; checkpoints left open by a run that died are
    /// released with abort first (nothing is lost: the next incremental covers their changes).
    func groupCheckpoint(_ disks: [String], control: String) throws -> ControlProtocol.CheckpointGroupReply {
        do {
            let client = try ControlClient(path: control)
            do {
                return try client.checkpointGroup(disks: disks)
            } catch let e as FilterError where e.code == .checkpointOpen {
                try FilterChangeSource.releaseIfStale(client, disks: disks, control: control, logger: logger)
                return try client.checkpointGroup(disks: disks)
            }
        } catch let e as FilterError {
            throw AgentError(.filter, e.message, cause: e)
        }
    }

    func backup(_ disk: RunConfig.Disk, adopting checkpoint: ControlProtocol.CheckpointReply?,
                prepared: PreparedBackup?) throws -> BackupSummary {
        let summary = try job(disk, adopting: checkpoint).run(prepared: prepared)
        logger.notice("disk \(disk.name) backed up: snapshot \(summary.snapshot)",
                      metadata: ["event": "disk-done", "snapshot": "\(summary.snapshot)", "mode": "\(summary.mode.rawValue)",
                                 "bytes_read": "\(summary.bytesRead)", "bytes_stored": "\(summary.bytesStored)"])
        return summary
    }

    /// The backup job of one disk; a filter disk's adopts the VM's group checkpoint (nil: the
    /// job would take its own, which `prepare` uses to converge before that checkpoint).
    func job(_ disk: RunConfig.Disk, adopting checkpoint: ControlProtocol.CheckpointReply?) -> BackupJob {
        let source: any ChangeSource
        switch disk.changes {
        case .filter:
            source = FilterChangeSource(control: run.config.filter?.control ?? "", disk: disk.name, adopting: checkpoint)
        case .nbd(let uri, let bitmap):
            source = NBDBitmapChangeSource(uri: uri, bitmap: bitmap)
        case .scan:
            source = ScanChangeSource(path: disk.path ?? "")
        }
        var settings = BackupSettings(disk: disk.name)
        settings.tags = ["nightly"]
        var logger = self.logger
        logger[metadataKey: "disk"] = "\(disk.name)"
        return BackupJob(repository: repository, source: source, settings: settings, logger: logger, cancellation: run.cancellation)
    }

    /// Releases with abort the checkpoints a failed attempt left open (a job that failed
    /// before it took over its checkpoint). One already released is no error.
    func releaseOpen(_ disks: Set<String>) {
        guard !disks.isEmpty, let control = run.config.filter?.control else { return }
        for disk in disks.sorted() {
            do {
                _ = try ControlClient(path: control).release(disk: disk, commit: false)
            } catch let e as FilterError where e.code == .noCheckpoint {
            } catch {
                logger.warning("could not release the checkpoint of disk \(disk) with abort: \(error); the next run releases it when it sees its holder is gone")
            }
        }
    }
}

struct NightlyFailure: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}
