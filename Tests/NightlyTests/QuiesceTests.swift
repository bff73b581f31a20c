import Foundation
import Logging
import Nightly
import Testing
import TestSupport
import Workers

/// The guest agent client against a peer that behaves like QEMU's chardev and qemu-ga, and
/// the thaw guard that bounds a freeze even when the run dies.
struct QuiesceTests {
    @Test func freezeStatusAndThawGoThroughTheAgent() throws {
        let dir = try TemporaryDirectory("qga")
        let peer = try FakeGuestAgent(path: dir.file("qga.sock"))
        let agent = GuestAgent(socket: peer.path, timeout: 5)
        #expect(try agent.status() == "thawed")
        #expect(try agent.freeze() == 2)
        #expect(peer.frozen)
        #expect(try agent.status() == "frozen")
        #expect(try agent.thaw() == 2)
        #expect(!peer.frozen)
        // Each exchange synchronises first, on its own connection.
        #expect(peer.commands() == ["guest-sync-delimited", "guest-fsfreeze-status", "guest-sync-delimited", "guest-fsfreeze-freeze",
                                    "guest-sync-delimited", "guest-fsfreeze-status", "guest-sync-delimited", "guest-fsfreeze-thaw"])
    }

    /// A reply left over from an earlier client comes before the 0xFF marker and is skipped.
    @Test func bytesBeforeTheSyncMarkerAreIgnored() throws {
        let dir = try TemporaryDirectory("qga")
        let peer = try FakeGuestAgent(path: dir.file("qga.sock"), staleBytes: "{\"return\": 2}\n{\"return\": 12345}\n")
        #expect(try GuestAgent(socket: peer.path, timeout: 5).freeze() == 2)
    }

    @Test func aRefusedFreezeSaysWhatTheGuestSaid() throws {
        let dir = try TemporaryDirectory("qga")
        let peer = try FakeGuestAgent(path: dir.file("qga.sock"), behaviour: .freezeFails)
        let error = #expect(throws: GuestAgent.Failure.self) { try GuestAgent(socket: peer.path, timeout: 5).freeze() }
        #expect(error?.message.contains("Operation not supported") == true)
        #expect(!peer.frozen)
    }

    @Test func anAgentThatNeverAnswersTimesOut() throws {
        let dir = try TemporaryDirectory("qga")
        let peer = try FakeGuestAgent(path: dir.file("qga.sock"), behaviour: .silent)
        let started = Date()
        let error = #expect(throws: GuestAgent.Failure.self) { try GuestAgent(socket: peer.path, timeout: 1).status() }
        #expect(error?.message.contains("did not answer within 1 s") == true)
        #expect(Date().timeIntervalSince(started) < 30, "bounded by the exchange timeout")
    }

    @Test func aMissingSocketSaysSo() throws {
        let dir = try TemporaryDirectory("qga")
        let error = #expect(throws: GuestAgent.Failure.self) { try GuestAgent(socket: dir.file("none.sock"), timeout: 1).status() }
        #expect(error?.message.contains("cannot reach the guest agent") == true)
    }

    static var guardCommand: [String] { [BuiltProducts.executable("tessera"), "internal-thaw-guard"] }

    /// The run thawed the guest itself: the guard leaves it alone.
    @Test func aDisarmedGuardDoesNothing() throws {
        let dir = try TemporaryDirectory("qga")
        let peer = try FakeGuestAgent(path: dir.file("qga.sock"))
        let guardProcess = try ThawGuard(command: Self.guardCommand, socket: peer.path, seconds: 30)
        _ = try GuestAgent(socket: peer.path).freeze()
        try GuestAgent(socket: peer.path).thaw()
        guardProcess.disarm()
        #expect(peer.commands().filter { $0 == "guest-fsfreeze-thaw" }.count == 1)
    }

    /// The run ended without disarming (killed): the guard thaws at once.
    @Test func aGuardWhoseRunEndsThawsAtOnce() throws {
        let dir = try TemporaryDirectory("qga")
        let peer = try FakeGuestAgent(path: dir.file("qga.sock"))
        let guardProcess = try ThawGuard(command: Self.guardCommand, socket: peer.path, seconds: 600)
        _ = try GuestAgent(socket: peer.path).freeze()
        guardProcess.thawNow()
        #expect(!peer.frozen, "the guard thawed the guest long before its deadline")
    }

    /// Nobody thaws: the guard does when the freeze timeout has passed, and not before.
    @Test func aGuardThawsWhenTheFreezeTimeoutPasses() throws {
        let dir = try TemporaryDirectory("qga")
        let peer = try FakeGuestAgent(path: dir.file("qga.sock"))
        let guardProcess = try ThawGuard(command: Self.guardCommand, socket: peer.path, seconds: 2)
        _ = try GuestAgent(socket: peer.path).freeze()
        let frozenAt = Date()
        #expect(peer.wait(for: "guest-fsfreeze-thaw", timeout: 60))
        let thaw = try #require(peer.log.last { $0.command == "guest-fsfreeze-thaw" })
        #expect(thaw.at.timeIntervalSince(guardProcess.started) >= 2, "not before the timeout")
        #expect(thaw.at.timeIntervalSince(frozenAt) < 30)
        #expect(!peer.frozen)
        #expect(guardProcess.isBeforeDeadline(guardProcess.started.addingTimeInterval(1.9)))
        #expect(!guardProcess.isBeforeDeadline(guardProcess.started.addingTimeInterval(2)))
        guardProcess.disarm()
    }
}

/// Hooks run without a shell, with the phase, VM and disks in their environment, bounded in time.
struct HookRunnerTests {
    let logger = Logger(label: "test")

    func script(_ dir: TemporaryDirectory, _ name: String, _ body: String) throws -> String {
        let path = dir.file(name)
        try ("#!/bin/sh\n" + body + "\n").write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, 0o755)
        return path
    }

    @Test func aHookSeesThePhaseTheVMAndItsDisksAndNoShellExpandsItsArguments() throws {
        let dir = try TemporaryDirectory("hooks")
        let out = dir.file("env")
        let hook = try script(dir, "h", "echo \"$TESSERA_PHASE|$TESSERA_VM|$TESSERA_DISKS|$1\" > \(out)")
        var context = HookRunner.Context(phase: .preCheckpoint, vm: "web1", disks: ["root", "data"])
        context.error = nil
        try HookRunner(timeout: 10, logger: logger).run([[hook, "$(touch \(dir.file("pwned")))"]], context)
        #expect(try String(contentsOfFile: out, encoding: .utf8) == "pre-checkpoint|web1|root data|$(touch \(dir.file("pwned")))\n")
        #expect(!FileManager.default.fileExists(atPath: dir.file("pwned")))
    }

    @Test func aFailingHookNamesItselfItsStatusAndWhatItPrinted() throws {
        let dir = try TemporaryDirectory("hooks")
        let hook = try script(dir, "h", "echo cannot flush the cache >&2; exit 3")
        let error = #expect(throws: HookRunner.Failure.self) {
            try HookRunner(timeout: 10, logger: logger).run([[hook]], .init(phase: .backupStart, vm: "a"))
        }
        #expect(error?.message.contains("backup-start hook \(hook) failed with exit status 3") == true)
        #expect(error?.message.contains("cannot flush the cache") == true)
    }

    @Test func aHookOverItsTimeLimitIsStopped() throws {
        let dir = try TemporaryDirectory("hooks")
        let hook = try script(dir, "h", "exec sleep 60")
        let started = Date()
        let error = #expect(throws: HookRunner.Failure.self) {
            try HookRunner(timeout: 1, logger: logger).run([[hook]], .init(phase: .jobStart))
        }
        #expect(error?.message.contains("did not finish within 1 s") == true)
        #expect(Date().timeIntervalSince(started) < 30)
    }

    @Test func aCancelledRunStopsItsHook() throws {
        let dir = try TemporaryDirectory("hooks")
        let hook = try script(dir, "h", "exec sleep 60")
        let cancellation = Cancellation()
        DispatchQueue.global().asyncAfter(deadline: .now() + 0.5) { cancellation.cancel(reason: "SIGINT") }
        #expect(throws: Cancelled.self) {
            try HookRunner(timeout: 600, logger: logger, cancellation: cancellation).run([[hook]], .init(phase: .jobStart))
        }
    }

    @Test func aMissingProgramCannotStart() throws {
        let error = #expect(throws: HookRunner.Failure.self) {
            try HookRunner(timeout: 10, logger: logger).run([["/nonexistent/hook"]], .init(phase: .jobEnd))
        }
        #expect(error?.message.contains("could not be started") == true)
    }
}

/// The metrics file node_exporter reads, and the verification's slices.
struct RunMetricsTests {
    func report(_ statuses: [(String, RunReport.Status)]) -> RunReport {
        var r = RunReport(config: "c.toml", repository: "/r", started: Date(timeIntervalSince1970: 1_000_000))
        r.vms = statuses.map { RunReport.VMReport(name: $0.0, status: $0.1) }
        r.exitCode = statuses.allSatisfy { $0.1 == .ok } ? 0 : 3
        return r
    }

    /// A VM that fails tonight keeps the time of its last success (the alert people set).
    @Test func aFailedVMKeepsItsLastSuccessTime() throws {
        let dir = try TemporaryDirectory("metrics")
        let path = dir.file("tessera.prom")
        try RunMetrics.write(report([("web\"1", .ok), ("db1", .ok)]), finished: Date(timeIntervalSince1970: 1000), to: path)
        try RunMetrics.write(report([("web\"1", .ok), ("db1", .failed)]), finished: Date(timeIntervalSince1970: 2000), to: path)
        let text = try String(contentsOfFile: path, encoding: .utf8)
        #expect(text.contains("tessera_vm_last_success_timestamp_seconds{vm=\"web\\\"1\"} 2000"))
        #expect(text.contains("tessera_vm_last_success_timestamp_seconds{vm=\"db1\"} 1000"))
        #expect(text.contains("tessera_vm_success{vm=\"db1\"} 0"))
        #expect(text.contains("tessera_run_success 0"))
        // Every sample line is NAME{labels} VALUE or NAME VALUE, every metric typed.
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            #expect(line.split(separator: " ").count == 2 || line.contains("\\\""), "\(line)")
        }
        #expect(!names(dir.path).contains { $0.contains(".tmp") }, "no temporary file left")
        var st = stat()
        stat(path, &st)
        #expect(st.st_mode & 0o777 == 0o644, "readable by node_exporter")
    }

    func names(_ path: String) -> [String] { (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? [] }

    /// Any N nights in a row read every slice once.
    @Test func nConsecutiveNightsReadEverySliceOnce() {
        for n in [1, 3, 7, 30] {
            let start = Date(timeIntervalSince1970: 1_795_000_000)
            let slices = (0..<n).map { NightlyRun.verifySlice(day: start.addingTimeInterval(Double($0) * 86400), every: n) }
            #expect(Set(slices) == Set(1...n), "n=\(n): \(slices)")
        }
    }
}
