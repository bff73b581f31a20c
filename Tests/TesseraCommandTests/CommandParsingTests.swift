import ArgumentParser
import Foundation
import Testing
@testable import tessera

/// Every command and subcommand of `tessera`, parsed in-process as `tessera` parses it
/// (`Tessera.parseAsRoot`, which also runs each command's `validate()`): a valid command line
/// gives the options it says, a wrong one fails with exit code 64 and a message that names
/// what is wrong. Nothing runs: no repository, no filter, no socket.
struct CommandParsingTests {
    // MARK: - Helpers

    /// Parses `arguments` as `tessera ARGUMENTS` and expects a command of type `C`.
    func parse<C: ParsableCommand>(_ arguments: [String], as type: C.Type = C.self,
                                   sourceLocation: SourceLocation = #_sourceLocation) throws -> C {
        let command = try Tessera.parseAsRoot(arguments)
        return try #require(command as? C, "\(arguments) parsed as \(Swift.type(of: command)), not \(C.self)",
                            sourceLocation: sourceLocation)
    }

    /// Expects `tessera ARGUMENTS` to be refused as a wrong command line (exit 64) with a
    /// message that contains every one of `fragments`.
    func expectRejected(_ arguments: [String], _ fragments: String..., sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            let command = try Tessera.parseAsRoot(arguments)
            Issue.record("\(arguments) parsed (as \(type(of: command))); it must be refused", sourceLocation: sourceLocation)
        } catch {
            let message = Tessera.message(for: error)
            #expect(Tessera.exitCode(for: error).rawValue == ExitCodes.usage,
                    "\(arguments): exit \(Tessera.exitCode(for: error).rawValue) (\(message))", sourceLocation: sourceLocation)
            for fragment in fragments {
                #expect(message.contains(fragment), "\(arguments): the message does not say '\(fragment)': \(message)",
                        sourceLocation: sourceLocation)
            }
        }
    }

    /// The path of every command that runs (a leaf of the tree), e.g. "filter serve".
    static func leafCommands(_ command: any ParsableCommand.Type = Tessera.self, _ path: [String] = []) -> [String] {
        let subcommands = command.configuration.subcommands
        if subcommands.isEmpty { return [path.joined(separator: " ")] }
        return subcommands.flatMap { leafCommands($0, path + [$0._commandName]) }
    }

    /// The commands this file tests; `everyCommandIsTested` keeps it in step with the tree.
    static let tested: Set<String> = [
        "init", "snapshots", "backup", "restore", "diff", "serve", "check", "forget", "prune", "unlock",
        "repair index", "repair snapshots",
        "filter serve", "filter status", "filter checkpoint", "filter changes", "filter release", "filter reset",
        "filter attach", "filter detach",
        "run", "config check", "internal-thaw-guard",
    ]

    /// Commands that take the repository from `--repo` fail without it, unless the
    /// environment names one.
    static var repositoryFromEnvironment: Bool { ProcessInfo.processInfo.environment["TESSERA_REPOSITORY"] != nil }

    // MARK: - The tree

    @Test func everyCommandIsTested() {
        let leaves = Set(Self.leafCommands())
        #expect(leaves.subtracting(Self.tested).isEmpty, "commands without parsing tests: \(leaves.subtracting(Self.tested).sorted())")
        #expect(Self.tested.subtracting(leaves).isEmpty, "tested commands that no longer exist: \(Self.tested.subtracting(leaves).sorted())")
    }

    @Test(arguments: CommandParsingTests.leafCommands())
    func everyCommandHasAnAbstractAndHelp(_ path: String) throws {
        let words = path.split(separator: " ").map(String.init)
        var command: any ParsableCommand.Type = Tessera.self
        for word in words {
            command = try #require(command.configuration.subcommands.first { $0._commandName == word })
        }
        #expect(!command.configuration.abstract.isEmpty, "\(path) has no abstract")
        let help = Tessera.helpMessage(for: command)
        #expect(help.contains("USAGE: tessera \(path)"), "\(help)")
    }

    /// (With options after it, argument-parser names the first option instead:
    /// `tessera bakup --repo R` says "Unknown option '--repo'".)
    @Test func aCommandThatDoesNotExistIsRefused() {
        expectRejected(["bakup"], "bakup")
        expectRejected(["filter", "stat"], "stat")
        expectRejected(["repair", "everything"], "everything")
    }

    @Test func anUnknownOptionIsNamed() {
        expectRejected(["init", "--repo", "/r", "--chunksize", "64K"], "--chunksize")
        expectRejected(["backup", "--repo", "/r", "--disk", "d", "--source", "/s", "--incremental"], "--incremental")
    }

    // MARK: - Repository commands

    @Test func initTakesAChunkSizeAndACompressionLevel() throws {
        let plain = try parse(["init", "--repo", "/r"], as: InitCommand.self)
        #expect(plain.repository.path == "/r" && plain.chunkSize.bytes == 65536 && plain.compressionLevel == 1)
        let custom = try parse(["init", "-r", "/r", "--chunk-size", "1M", "--compression", "zstd:19"], as: InitCommand.self)
        #expect(custom.chunkSize.bytes == 1 << 20 && custom.compressionLevel == 19)
        #expect(try parse(["init", "--repo", "/r", "--chunk-size", "4096"], as: InitCommand.self).chunkSize.bytes == 4096)
        #expect(try parse(["init", "--repo", "/r", "--chunk-size", "4MiB"], as: InitCommand.self).chunkSize.bytes == 4 << 20)

        expectRejected(["init", "--repo", "/r", "--chunk-size", "12Q"], "12Q", "--chunk-size")
        expectRejected(["init", "--repo", "/r", "--chunk-size", "48K"], "--chunk-size", "power of two", "48K")
        expectRejected(["init", "--repo", "/r", "--chunk-size", "8M"], "--chunk-size", "4K to 4M")
        expectRejected(["init", "--repo", "/r", "--chunk-size", "2K"], "--chunk-size")
        expectRejected(["init", "--repo", "/r", "--compression", "lz4"], "--compression", "zstd:LEVEL", "lz4")
        expectRejected(["init", "--repo", "/r", "--compression", "zstd:20"], "--compression", "1 to 19")
        expectRejected(["init", "--repo", "/r", "--compression", "zstd:0"], "--compression")
        expectRejected(["init", "--repo", "/r", "--chunk-size"], "--chunk-size")
    }

    @Test(.enabled(if: !CommandParsingTests.repositoryFromEnvironment, "TESSERA_REPOSITORY is set"),
          arguments: [["init"], ["snapshots"], ["check"], ["prune"], ["unlock"], ["repair", "index"], ["repair", "snapshots"],
                      ["forget", "--keep-last", "1"], ["backup", "--disk", "d", "--source", "/s"],
                      ["restore", "latest", "--disk", "d", "--to", "/t"], ["diff", "a", "b"], ["serve", "a", "--socket", "/s"]])
    func aRepositoryCommandWithoutARepositoryIsRefused(_ arguments: [String]) {
        expectRejected(arguments, "--repo PATH", "TESSERA_REPOSITORY")
    }

    @Test func snapshotsFiltersByDiskAndGroup() throws {
        let all = try parse(["snapshots", "--repo", "/r"], as: SnapshotsCommand.self)
        #expect(all.disk == nil && all.group == nil && !all.json)
        let some = try parse(["snapshots", "--repo", "/r", "--disk", "d", "--group", "vm1", "--json"], as: SnapshotsCommand.self)
        #expect(some.disk == "d" && some.group == "vm1" && some.json)
        expectRejected(["snapshots", "--repo", "/r", "--disk"], "--disk")
    }

    @Test func unlockRemovesStaleLocksOrAll() throws {
        #expect(try !parse(["unlock", "--repo", "/r"], as: UnlockCommand.self).removeAll)
        #expect(try parse(["unlock", "--repo", "/r", "--remove-all"], as: UnlockCommand.self).removeAll)
        expectRejected(["unlock", "--repo", "/r", "--all"], "--all")
    }

    // MARK: - backup

    @Test func backupTakesOneSourceOfChanges() throws {
        let scan = try parse(["backup", "--repo", "/r", "--disk", "d", "--source", "/d.raw"], as: BackupCommand.self)
        #expect(scan.disk == "d" && scan.source == "/d.raw" && scan.filter == nil && scan.nbd == nil && !scan.full && scan.tag.isEmpty)
        let filter = try parse(["backup", "--repo", "/r", "--disk", "d", "--filter", "/c.sock", "--full", "--tag", "a", "--tag", "b", "--json"],
                               as: BackupCommand.self)
        #expect(filter.filter == "/c.sock" && filter.source == nil && filter.full && filter.tag == ["a", "b"] && filter.json)
        let filterAndPath = try parse(["backup", "--repo", "/r", "--disk", "d", "--filter", "/c", "--source", "/d.vmdk"], as: BackupCommand.self)
        #expect(filterAndPath.source == "/d.vmdk" && !filterAndPath.noConverge)
        let held = try parse(["backup", "--repo", "/r", "--disk", "d", "--filter", "/c", "--no-converge"], as: BackupCommand.self)
        #expect(held.noConverge)
        let nbd = try parse(["backup", "--repo", "/r", "--disk", "d", "--nbd", "nbd+unix:///d?socket=/s", "--bitmap", "b0"],
                            as: BackupCommand.self)
        #expect(nbd.nbd == "nbd+unix:///d?socket=/s" && nbd.bitmap == "b0")
    }

    @Test func backupRefusesMissingOrConflictingSources() {
        expectRejected(["backup", "--repo", "/r", "--source", "/d.raw"], "--disk")
        expectRejected(["backup", "--repo", "/r", "--disk", "d"], "--filter", "--nbd", "--source", "disk d")
        expectRejected(["backup", "--repo", "/r", "--disk", "d", "--filter", "/c", "--nbd", "nbd://h/e"], "--filter and --nbd")
        expectRejected(["backup", "--repo", "/r", "--disk", "d", "--source", "/s", "--bitmap", "b"], "--bitmap", "--nbd")
        expectRejected(["backup", "--repo", "/r", "--disk", "d", "--nbd", "nbd://h/e", "--source", "/s"], "--nbd", "--source")
        expectRejected(["backup", "--repo", "/r", "--disk", "d", "--source", "/s", "extra"], "extra")
    }

    // MARK: - restore, diff, serve

    @Test func restoreTakesASnapshotATargetAndAMode() throws {
        let r = try parse(["restore", "--repo", "/r", "0123abcd", "--to", "/t.raw"], as: RestoreCommand.self)
        #expect(r.snapshot == "0123abcd" && r.to == "/t.raw" && r.format == "raw" && !r.onlyChanged && !r.force && !r.keepGoing)
        #expect(!r.lockOptions.noLock)
        let latest = try parse(["restore", "--repo", "/r", "latest", "--disk", "d", "--to", "/t.vmdk", "--format", "vmdk",
                                "--force", "--keep-going", "--no-lock", "--json"], as: RestoreCommand.self)
        #expect(latest.snapshot == "latest" && latest.disk == "d" && latest.format == "vmdk" && latest.force && latest.keepGoing)
        #expect(latest.lockOptions.noLock && latest.json)
        #expect(try parse(["restore", "--repo", "/r", "x", "--to", "/t", "--only-changed"], as: RestoreCommand.self).onlyChanged)

        expectRejected(["restore", "--repo", "/r", "--to", "/t"], "snapshot")
        expectRejected(["restore", "--repo", "/r", "x"], "--to")
        expectRejected(["restore", "--repo", "/r", "x", "--to", "/t", "--format", "qcow2"], "--format", "raw or vmdk", "qcow2")
        expectRejected(["restore", "--repo", "/r", "x", "--to", "/t", "--only-changed", "--force"], "--only-changed", "--force")
    }

    @Test func diffTakesTwoSnapshots() throws {
        let d = try parse(["diff", "--repo", "/r", "aaaa", "bbbb", "--json", "--no-lock"], as: DiffCommand.self)
        #expect(d.a == "aaaa" && d.b == "bbbb" && d.disk == nil && d.json && d.lockOptions.noLock)
        #expect(try parse(["diff", "--repo", "/r", "aaaa", "latest", "--disk", "d"], as: DiffCommand.self).disk == "d")
        expectRejected(["diff", "--repo", "/r", "aaaa"], "<b>")
        expectRejected(["diff", "--repo", "/r", "a", "b", "c"], "c")
    }

    @Test func serveTakesASnapshotASocketAndOptionallyLoopbackTCP() throws {
        let s = try parse(["serve", "--repo", "/r", "latest", "--disk", "d", "--socket", "/s.sock"], as: ServeCommand.self)
        #expect(s.snapshot == "latest" && s.disk == "d" && s.socket == "/s.sock" && s.tcp == nil && !s.tcpAllowRemote && s.name == nil)
        let tcp = try parse(["serve", "--repo", "/r", "x", "--socket", "/s", "--tcp", "[::1]:10809", "--name", "snap", "--no-lock"],
                            as: ServeCommand.self)
        #expect(tcp.tcp == "[::1]:10809" && tcp.name == "snap" && tcp.lockOptions.noLock)
        #expect(try parse(["serve", "--repo", "/r", "x", "--socket", "/s", "--tcp", "0.0.0.0:10809", "--tcp-allow-remote"],
                          as: ServeCommand.self).tcpAllowRemote)

        expectRejected(["serve", "--repo", "/r", "x"], "--socket")
        expectRejected(["serve", "--repo", "/r", "--socket", "/s"], "snapshot")
        expectRejected(["serve", "--repo", "/r", "x", "--socket", "/s", "--tcp", "10809"], "--tcp", "HOST:PORT", "10809")
        expectRejected(["serve", "--repo", "/r", "x", "--socket", "/s", "--tcp", "localhost:port"], "--tcp")
        expectRejected(["serve", "--repo", "/r", "x", "--socket", "/s", "--tcp-allow-remote"], "--tcp-allow-remote", "--tcp HOST:PORT")
    }

    // MARK: - check, forget, prune, repair

    @Test func checkReadsAllDataOrASubset() throws {
        let c = try parse(["check", "--repo", "/r"], as: CheckCommand.self)
        #expect(!c.readData && c.readDataSubset == nil && !c.noSetAside && !c.lockOptions.noLock && !c.json)
        #expect(try parse(["check", "--repo", "/r", "--read-data", "--no-set-aside", "--json"], as: CheckCommand.self).readData)
        for subset in ["10%", "100%", "2/7", "1/1", "0.5%"] {
            #expect(try parse(["check", "--repo", "/r", "--read-data-subset", subset], as: CheckCommand.self).readDataSubset == subset)
        }
        for bad in ["0%", "101%", "0/3", "4/3", "half", "1/0"] {
            expectRejected(["check", "--repo", "/r", "--read-data-subset", bad], "--read-data-subset", "N%", "K/M")
        }
        expectRejected(["check", "--repo", "/r", "--read-data", "--read-data-subset", "10%"], "--read-data", "not both")
    }

    @Test func forgetNeedsAKeepRule() throws {
        let f = try parse(["forget", "--repo", "/r", "--keep-daily", "7", "--keep-weekly", "4", "--keep-tag", "gold", "--keep-tag", "x"],
                          as: ForgetCommand.self)
        #expect(f.keepDaily == 7 && f.keepWeekly == 4 && f.keepTag == ["gold", "x"] && f.keepLast == 0)
        #expect(!f.dryRun && !f.prune && f.wait == 0 && f.disk == nil)
        let g = try parse(["forget", "--repo", "/r", "--disk", "d", "--keep-last", "3", "--keep-hourly", "1", "--keep-monthly", "2",
                           "--keep-yearly", "1", "--dry-run", "--prune", "--wait", "30", "--json"], as: ForgetCommand.self)
        #expect(g.disk == "d" && g.keepLast == 3 && g.keepHourly == 1 && g.keepMonthly == 2 && g.keepYearly == 1)
        #expect(g.dryRun && g.prune && g.wait == 30 && g.json)

        expectRejected(["forget", "--repo", "/r"], "--keep-")
        expectRejected(["forget", "--repo", "/r", "--dry-run"], "--keep-")
        expectRejected(["forget", "--repo", "/r", "--keep-last=-1"], "--keep-last", "0 or more")
        expectRejected(["forget", "--repo", "/r", "--keep-daily", "seven"], "seven", "--keep-daily")
        expectRejected(["forget", "--repo", "/r", "--keep-last", "1", "--wait=-5"], "--wait", "0 or more")
    }

    @Test func pruneTakesAThresholdAndAWait() throws {
        let p = try parse(["prune", "--repo", "/r"], as: PruneCommand.self)
        #expect(p.repackThreshold == 20 && p.wait == 0 && !p.dryRun && !p.json)
        let q = try parse(["prune", "--repo", "/r", "--repack-threshold", "0", "--wait", "2.5", "--dry-run", "--json"], as: PruneCommand.self)
        #expect(q.repackThreshold == 0 && q.wait == 2.5 && q.dryRun && q.json)
        expectRejected(["prune", "--repo", "/r", "--repack-threshold", "101"], "--repack-threshold", "0 to 100")
        expectRejected(["prune", "--repo", "/r", "--repack-threshold=-1"], "--repack-threshold")
        expectRejected(["prune", "--repo", "/r", "--wait=-1"], "--wait", "0 or more")
        expectRejected(["prune", "--repo", "/r", "--wait", "soon"], "soon", "--wait")
    }

    @Test func repairRebuildsTheIndexOrListsDamagedSnapshots() throws {
        let index = try parse(["repair", "index", "--repo", "/r", "--wait", "10", "--json"], as: RepairCommand.RepairIndex.self)
        #expect(index.wait == 10 && index.json)
        let snapshots = try parse(["repair", "snapshots", "--repo", "/r"], as: RepairCommand.RepairSnapshots.self)
        #expect(!snapshots.forget && snapshots.wait == 0 && !snapshots.json)
        #expect(try parse(["repair", "snapshots", "--repo", "/r", "--forget"], as: RepairCommand.RepairSnapshots.self).forget)
        expectRejected(["repair", "index", "--repo", "/r", "--wait=-1"], "--wait", "0 or more")
        expectRejected(["repair", "snapshots", "--repo", "/r", "--wait=-1"], "--wait", "0 or more")
        expectRejected(["repair", "index", "--repo", "/r", "--forget"], "--forget")
    }

    // MARK: - filter

    @Test func filterServeTakesDisksSocketsAndTracking() throws {
        let s = try parse(["filter", "serve", "--disk", "a=/a.raw", "--disk", "b=rel/b.vmdk", "--socket", "/n.sock",
                           "--control", "/c.sock", "--state-dir", "/state"], as: FilterServe.self)
        #expect(s.disks == ["a=/a.raw", "b=rel/b.vmdk"] && s.socket == "/n.sock" && s.control == "/c.sock" && s.stateDir == "/state")
        #expect(s.granularity == nil && s.tcp == nil && !s.tcpAllowRemote && s.payloadBudget.bytes >= 32 << 20)
        #expect(s.activityLogExtent.bytes == 4 << 20 && s.activityLogSlots == 1024)
        let t = try parse(["filter", "serve", "--disk", "a=/a", "--socket", "/n", "--control", "/c", "--state-dir", "/s",
                           "--granularity", "4K", "--tcp", "127.0.0.1:10809", "--payload-budget", "64M", "--payload-stall-timeout", "5",
                           "--activity-log-extent", "1M", "--activity-log-slots", "64", "--persist-interval", "10",
                           "--control-idle-timeout", "60"], as: FilterServe.self)
        #expect(t.granularity?.bytes == 4096 && t.tcp == "127.0.0.1:10809" && t.payloadBudget.bytes == 64 << 20)
        #expect(t.payloadStallTimeout == 5 && t.activityLogExtent.bytes == 1 << 20 && t.activityLogSlots == 64)
        #expect(t.persistInterval == 10 && t.controlIdleTimeout == 60)
    }

    @Test func filterServeRefusesWhatCannotServe() {
        let base = ["filter", "serve", "--disk", "a=/a", "--socket", "/n", "--control", "/c", "--state-dir", "/s"]
        expectRejected(["filter", "serve", "--socket", "/n", "--control", "/c", "--state-dir", "/s"], "--disk")
        expectRejected(["filter", "serve", "--disk", "a", "--socket", "/n", "--control", "/c", "--state-dir", "/s"], "NAME=PATH", "'a'")
        expectRejected(["filter", "serve", "--disk", "a=/a", "--control", "/c", "--state-dir", "/s"], "--socket")
        expectRejected(["filter", "serve", "--disk", "a=/a", "--socket", "/n", "--state-dir", "/s"], "--control")
        expectRejected(["filter", "serve", "--disk", "a=/a", "--socket", "/n", "--control", "/c"], "--state-dir")
        expectRejected(base + ["--granularity", "3000"], "granularity 3000", "power of two")
        expectRejected(base + ["--granularity", "32M"], "granularity", "16 MiB")
        expectRejected(base + ["--granularity", "big"], "big", "--granularity")
        expectRejected(base + ["--activity-log-extent", "16K"], "activity log extent size")
        expectRejected(base + ["--activity-log-slots", "2"], "activity log slot count 2")
        expectRejected(base + ["--payload-budget", "1M"], "--payload-budget", "32M")
        expectRejected(base + ["--payload-stall-timeout", "0"], "--payload-stall-timeout")
        expectRejected(base + ["--control-idle-timeout", "0"], "--control-idle-timeout")
        expectRejected(base + ["--persist-interval", "0"], "--persist-interval")
        expectRejected(base + ["--tcp", "nohost"], "--tcp", "HOST:PORT")
        expectRejected(base + ["--tcp-allow-remote"], "--tcp-allow-remote", "--tcp HOST:PORT")
    }

    @Test func filterControlCommandsNeedTheControlSocket() throws {
        let status = try parse(["filter", "status", "--control", "/c"], as: FilterStatus.self)
        #expect(status.options.control == "/c" && !status.options.json && status.disk == nil)
        let one = try parse(["filter", "status", "--control", "/c", "--disk", "d", "--json"], as: FilterStatus.self)
        #expect(one.disk == "d" && one.options.json)
        for command in [["status"], ["checkpoint", "--disk", "d"], ["changes", "--disk", "d", "--since", "x/1"],
                        ["release", "--disk", "d"], ["reset", "--disk", "d"], ["attach", "--disk", "d", "--path", "/p"],
                        ["detach", "--disk", "d"]] {
            expectRejected(["filter"] + command, "--control")
        }
    }

    @Test func filterCheckpointTakesOneDiskOrAGroup() throws {
        let one = try parse(["filter", "checkpoint", "--control", "/c", "--disk", "d"], as: FilterCheckpoint.self)
        #expect(one.disk == ["d"] && one.group == nil && one.lease.seconds == 3600 && one.ownerPid == nil)
        let group = try parse(["filter", "checkpoint", "--control", "/c", "--disk", "a", "--disk", "b", "--group", "vm1",
                               "--owner-pid", "4242", "--json"], as: FilterCheckpoint.self)
        #expect(group.disk == ["a", "b"] && group.group == "vm1" && group.ownerPid == 4242 && group.options.json)
        for (text, seconds) in [("90", 90.0), ("90s", 90), ("30m", 1800), ("2h", 7200), ("1d", 86400), ("1.5h", 5400)] {
            let c = try parse(["filter", "checkpoint", "--control", "/c", "--disk", "d", "--lease", text], as: FilterCheckpoint.self)
            #expect(c.lease.seconds == seconds, "--lease \(text)")
        }

        expectRejected(["filter", "checkpoint", "--control", "/c"], "--disk")
        expectRejected(["filter", "checkpoint", "--control", "/c", "--disk", "d", "--group", "g"], "--group", "more than once")
        expectRejected(["filter", "checkpoint", "--control", "/c", "--disk", "d", "--lease", "0"], "--lease", "longer than 0")
        for bad in ["-5m", "5x", "m", "soon"] {
            expectRejected(["filter", "checkpoint", "--control", "/c", "--disk", "d", "--lease=\(bad)"], "--lease", bad)
        }
        expectRejected(["filter", "checkpoint", "--control", "/c", "--disk", "d", "--owner-pid", "0"], "--owner-pid", "process ID")
        expectRejected(["filter", "checkpoint", "--control", "/c", "--disk", "d", "--owner-pid", "me"], "--owner-pid", "me")
    }

    @Test func filterChangesReleaseResetAttachDetach() throws {
        let changes = try parse(["filter", "changes", "--control", "/c", "--disk", "d", "--since", "u/3", "--json"], as: FilterChanges.self)
        #expect(changes.disk == "d" && changes.since == "u/3" && changes.options.json)
        expectRejected(["filter", "changes", "--control", "/c", "--disk", "d"], "--since")
        expectRejected(["filter", "changes", "--control", "/c", "--since", "u/3"], "--disk")

        #expect(try !parse(["filter", "release", "--control", "/c", "--disk", "d"], as: FilterRelease.self).abort)
        #expect(try parse(["filter", "release", "--control", "/c", "--disk", "d", "--abort"], as: FilterRelease.self).abort)
        expectRejected(["filter", "release", "--control", "/c"], "--disk")
        expectRejected(["filter", "release", "--control", "/c", "--disk", "d", "--commit"], "--commit")

        #expect(try parse(["filter", "reset", "--control", "/c", "--disk", "d"], as: FilterReset.self).disk == "d")
        expectRejected(["filter", "reset", "--control", "/c"], "--disk")

        let attach = try parse(["filter", "attach", "--control", "/c", "--disk", "d", "--path", "disk.raw"], as: FilterAttach.self)
        #expect(attach.disk == "d" && attach.path == "disk.raw")
        expectRejected(["filter", "attach", "--control", "/c", "--disk", "d"], "--path")
        expectRejected(["filter", "attach", "--control", "/c", "--path", "/p"], "--disk")

        #expect(try parse(["filter", "detach", "--control", "/c", "--disk", "d"], as: FilterDetach.self).disk == "d")
        expectRejected(["filter", "detach", "--control", "/c"], "--disk")
    }

    // MARK: - Values

    @Test(arguments: [("65536", UInt64(65536)), ("64K", 65536), ("64k", 65536), ("64KiB", 65536), ("64KB", 65536),
                      ("4M", 4 << 20), ("1G", 1 << 30), ("2T", 2 << 40), ("0", 0)])
    func byteCountsParse(_ text: String, _ bytes: UInt64) {
        #expect(ByteCount(argument: text)?.bytes == bytes)
    }

    @Test(arguments: ["", "K", "-1", "1.5M", "12Q", "64 K", "99999999999999999999", "17179869184G"])
    func byteCountsRefuse(_ text: String) {
        #expect(ByteCount(argument: text) == nil, "'\(text)' parsed as \(ByteCount(argument: text)?.bytes ?? 0)")
    }

    @Test(arguments: ["", "s", "-1", "1w", "inf", "nan", "1e400"])
    func durationsRefuse(_ text: String) {
        #expect(Seconds(argument: text) == nil, "'\(text)' parsed as \(Seconds(argument: text)?.seconds ?? 0)")
    }

    // MARK: - the nightly run

    @Test func runTakesAConfigAndOptionallyVMs() throws {
        let r = try parse(["run", "--config", "/etc/tessera/nightly.toml"], as: RunCommand.self)
        #expect(r.config == "/etc/tessera/nightly.toml" && r.vm.isEmpty && !r.dryRun && !r.json && !r.verbose)
        let some = try parse(["run", "--config", "/c.toml", "--vm", "web1", "--vm", "db1", "--dry-run", "--json"], as: RunCommand.self)
        #expect(some.vm == ["web1", "db1"] && some.dryRun && some.json)
        expectRejected(["run"], "--config")
        expectRejected(["run", "--config", "/c.toml", "--vm"], "--vm")
    }

    @Test func configCheckTakesTheFile() throws {
        #expect(try parse(["config", "check", "/c.toml"], as: ConfigCommand.Check.self).file == "/c.toml")
        #expect(try parse(["config", "check", "/c.toml", "--json"], as: ConfigCommand.Check.self).json)
        expectRejected(["config", "check"], "file")
    }

    @Test func theThawGuardTakesItsSocketAndDeadline() throws {
        let g = try parse(["internal-thaw-guard", "--socket", "/q.sock", "--seconds", "60"], as: ThawGuardCommand.self)
        #expect(g.socket == "/q.sock" && g.seconds == 60)
        expectRejected(["internal-thaw-guard", "--socket", "/q.sock"], "--seconds")
    }

    @Test func aGroupIsRestoredOrServedWhole() throws {
        let r = try parse(["restore", "--repo", "/r", "--group", "3BB7D8C7", "--to", "/restore/vm"], as: RestoreCommand.self)
        #expect(r.group == "3BB7D8C7" && r.snapshot == nil && r.to == "/restore/vm")
        expectRejected(["restore", "--repo", "/r", "latest", "--group", "3BB7", "--to", "/t"], "--group")
        expectRejected(["restore", "--repo", "/r", "--group", "3BB7", "--disk", "a", "--to", "/t"], "--disk")
        let v = try parse(["serve", "--repo", "/r", "--group", "3BB7", "--socket", "/s"], as: ServeCommand.self)
        #expect(v.group == "3BB7" && v.snapshot == nil)
        expectRejected(["serve", "--repo", "/r", "--socket", "/s"], "snapshot", "--group")
        expectRejected(["serve", "--repo", "/r", "--group", "3BB7", "--name", "x", "--socket", "/s"], "--group")
    }

    @Test func filterServeTakesTheNightlyConfigInsteadOfOptions() throws {
        let s = try parse(["filter", "serve", "--config", "/c.toml"], as: FilterServe.self)
        #expect(s.config == "/c.toml" && s.disks.isEmpty && s.socket == nil)
        expectRejected(["filter", "serve", "--config", "/c.toml", "--disk", "a=/a"], "--disk", "config")
        expectRejected(["filter", "serve", "--config", "/c.toml", "--state-dir", "/s"], "--state-dir", "config")
        expectRejected(["filter", "serve"], "--socket", "--config")
    }
}
