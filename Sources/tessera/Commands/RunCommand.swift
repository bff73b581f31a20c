import Agent
import ArgumentParser
import Foundation
import Logging
import Nightly
import Workers

/// `tessera run`: the nightly run over every VM of a config.
struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "The nightly run: every VM of the config, quiesced, checkpointed at one instant, backed up, reported.",
        discussion: """
            Per VM: hooks, a freeze through the QEMU guest agent, one checkpoint of all its disks, \
            the thaw, a backup of each disk, with retries; then retention, prune and the night's \
            slice of the verification. One VM failing does not stop the others. The morning \
            report is printed (--json: as the last line), kept in [run] report, and metrics go to \
            [run] metrics for node_exporter. Ctrl-C or SIGTERM stops the run cleanly: open \
            checkpoints are aborted (nothing is lost) and a frozen guest is thawed.
            Exit codes: 0 every VM backed up, 2 the config is wrong, 3 some VM (or retention, \
            prune, the verification) failed, 11 the repository is locked, 130/143 cancelled.
            """)

    @Option(help: "The run's config (TOML; see Fixtures/nightly.toml).") var config: String
    @Option(help: "Only this VM (repeatable).") var vm: [String] = []
    @Flag(help: "Check the repository, the filter and the guest agents, print what would happen, change nothing.") var dryRun = false
    @Flag(help: "Print events as JSON lines; the last is the report, {\"type\":\"report\", ...}.") var json = false
    @Flag(help: ArgumentHelp("Also print informational events (freeze, thaw, hooks).", discussion: """
        Events (one line each, with event= keys) go to stderr when it is not a terminal (the \
        journal, a log file); at a terminal only warnings and errors, then the report.
        """)) var verbose = false

    func run() throws {
        let runConfig = try loadConfig(config, json: json)
        var options = NightlyRun.Options()
        options.vms = vm
        options.thawGuard = [Self.executablePath(), "internal-thaw-guard"]
        let signals = JobSignals()
        // At a terminal the report says it all; for the journal (or a log file) every event.
        let level: Logger.Level = verbose || json ? .info : isatty(2) == 1 ? .warning : .notice
        let logger = CommandLogHandler.logger("tessera.run", json: json, level: level)
        let night = NightlyRun(config: runConfig, options: options, logger: logger, cancellation: signals.cancellation)
        if dryRun {
            let plan: RunPlan
            do { plan = try night.dryRun() } catch let e as ConfigError {
                fail("\(e)", code: NightlyRun.Exit.config, json: json)
            }
            if json { Output.json(plan) } else { print(plan.text()) }
            if plan.problems?.isEmpty == false { throw ExitCode(NightlyRun.Exit.someFailed) }
            return
        }
        let report: RunReport
        do {
            report = try night.run()
        } catch let e as ConfigError {
            fail("\(e)", code: NightlyRun.Exit.config, json: json)
        } catch let e as NightlyRun.AlreadyRunning {
            fail(e.message, code: NightlyRun.Exit.locked, json: json)
        } catch {
            fail(tessera.message(of: error), code: ExitCodes.code(for: error), json: json)
        }
        if json {
            Output.json(report)
        } else {
            print(report.text())
        }
        if let reason = signals.cancellation.reason {
            Output.error("the run was cancelled by \(reason); open checkpoints were aborted (nothing is lost)")
            throw ExitCode(reason == "SIGTERM" ? ExitCodes.terminated : ExitCodes.interrupted)
        }
        if report.exitCode != 0 { throw ExitCode(report.exitCode) }
    }

    /// This program, for the thaw guard (a second process of the same binary).
    static func executablePath() -> String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }
}

/// Loads the config or ends the command with its error (`FILE:LINE: KEY: MESSAGE`) and exit 2.
func loadConfig(_ path: String, json: Bool) throws -> RunConfig {
    do {
        return try RunConfig.load(path)
    } catch let e as ConfigError {
        fail("\(e)", code: NightlyRun.Exit.config, json: json)
    }
}

/// `tessera config check FILE`.
struct ConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config",
        abstract: "Check a nightly run's config.",
        subcommands: [Check.self])

    struct Check: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "check",
            abstract: "Read the config and print what `tessera run` would do (exit 2 if it is wrong).",
            discussion: """
                Reads the file only: nothing is contacted. `tessera run --dry-run` also checks that \
                the repository opens, the filter serves the disks and the guest agents answer.
                """)
        @Argument(help: "The config file.") var file: String
        @Flag(help: "Print the plan as JSON.") var json = false

        func run() throws {
            let config = try loadConfig(file, json: json)
            let night = NightlyRun(config: config, options: NightlyRun.Options(), logger: CommandLogHandler.logger("tessera.config", json: json))
            let plan = try night.plan()
            if json { Output.json(plan); return }
            print(plan.text())
        }
    }
}

/// The thaw guard's process (see `ThawGuard`): started by `tessera run` before it freezes a
/// guest; not for people.
struct ThawGuardCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "internal-thaw-guard",
        abstract: "Thaw a frozen guest if the run dies or the freeze timeout passes (started by `tessera run`).",
        shouldDisplay: false)
    @Option var socket: String
    @Option var seconds: Double

    func run() throws {
        let status = ThawGuard.watch(socket: socket, seconds: seconds) { Output.note("thaw guard: \($0)") }
        throw ExitCode(status)
    }
}
