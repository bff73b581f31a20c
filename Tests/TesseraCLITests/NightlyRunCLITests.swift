import Foundation
import Testing
import TestSupport

/// One night's setting: a repository, disk files, a config, the filter serving it, qemu-io as
/// the VMs writing, and hook scripts that log what they saw.
final class Night {
    let dir: TemporaryDirectory
    var repo: String { dir.file("repo") }
    var control: String { dir.file("control.sock") }
    var socket: String { dir.file("nbd.sock") }
    var configPath: String { dir.file("night.toml") }
    var hookLog: String { dir.file("hooks.log") }
    var metrics: String { dir.file("tessera.prom") }
    var reportPath: String { dir.file("last-run.json") }
    private(set) var filter: ChildProcess?

    init(_ label: String) throws {
        dir = try TemporaryDirectory(label)
        try Tessera.ok(["init", "--repo", repo])
    }

    func disk(_ name: String, mebibytes: Int = 16) throws -> String {
        let path = dir.file("\(name).raw")
        _ = FileManager.default.createFile(atPath: path, contents: nil)
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        try h.truncate(atOffset: UInt64(mebibytes) << 20)
        try h.close()
        return path
    }

    /// A hook that appends `PHASE VM DISKS |SNAPSHOTS|ERROR` to the hook log (and may fail).
    func hook(_ name: String, exit status: Int = 0, extra: String = "") throws -> String {
        let path = dir.file(name)
        let body = """
            #!/bin/sh
            echo "$TESSERA_PHASE ${TESSERA_VM:--} $TESSERA_DISKS |${TESSERA_SNAPSHOTS:-}|${TESSERA_ERROR:-}" >> \(hookLog)
            \(extra)
            exit \(status)
            """
        try body.write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, 0o755)
        return path
    }

    func hookLines() -> [String] {
        ((try? String(contentsOfFile: hookLog, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
    }

    func writeConfig(_ body: String) throws {
        let text = """
            repository = "\(repo)"
            [filter]
            control = "\(control)"
            socket = "\(socket)"
            state-dir = "\(dir.file("state"))"

            """ + body
        try text.write(toFile: configPath, atomically: true, encoding: .utf8)
    }

    func startFilter() throws {
        let f = try ChildProcess(tessera: ["filter", "serve", "--config", configPath])
        guard f.waitForLine(timeout: 60, { $0.hasPrefix("control endpoint") }) else {
            let r = f.wait(timeout: 5).result
            throw CommandError(description: "the filter did not start: \(r.stderr)")
        }
        filter = f
    }

    func stopFilter() {
        filter?.signal(SIGTERM)
        _ = filter?.wait(timeout: 60)
        filter = nil
    }

    deinit {
        filter?.signal(SIGKILL)
        _ = filter?.wait(timeout: 10)
    }

    func write(_ disk: String, offset: Int, length: Int, pattern: UInt8) throws {
        let r = try runCommand("qemu-io", ["-f", "raw", "-c", "write -P \(pattern) \(offset) \(length)", "nbd+unix:///\(disk)?socket=\(socket)"])
        guard r.succeeded, !r.stderr.contains("error") else { throw CommandError(description: "qemu-io: \(r.stderr)") }
    }

    /// `tessera run --config ... --json` and its report (the last line).
    func run(_ extra: [String] = []) throws -> (result: CommandResult, report: [String: Any]) {
        let r = try Tessera.run(["run", "--config", configPath, "--json"] + extra)
        return (r, (try? Tessera.summary(r)) ?? [:])
    }

    /// A `[[vm]]` table: the VM's own settings (TOML lines), then its disks (name and path).
    static func vm(_ name: String, _ settings: String = "", disks: [(name: String, path: String)]) -> String {
        "[[vm]]\nname = \"\(name)\"\n" + settings
            + disks.map { "[[vm.disk]]\nname = \"\($0.name)\"\npath = \"\($0.path)\"\n" }.joined()
    }

    static func vms(_ report: [String: Any]) -> [String: [String: Any]] {
        Dictionary(uniqueKeysWithValues: ((report["vms"] as? [[String: Any]]) ?? []).map { ($0["name"] as! String, $0) })
    }

    static func disks(_ vm: [String: Any]?) -> [String: [String: Any]] {
        Dictionary(uniqueKeysWithValues: ((vm?["disks"] as? [[String: Any]]) ?? []).map { ($0["name"] as! String, $0) })
    }

    /// Disks of the filter with a checkpoint still open.
    func openCheckpoints() throws -> [String] {
        let r = try Tessera.ok(["filter", "status", "--control", control, "--json"])
        let rows = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]] ?? []
        return rows.filter { $0["checkpoint"] != nil }.compactMap { $0["name"] as? String }
    }

    func restored(_ snapshot: String) throws -> Data {
        try Tessera.restore(repo: repo, snapshot: snapshot, scratch: dir.path)
    }
}

/// `tessera run`: every VM of a config, its disks at one instant, hooks, retries, quiesce,
/// the report and metrics; checked against the disks' bytes and the filter's state.
@Suite(.serialized) struct NightlyRunCLITests {
    @Test func aNightBacksUpEveryVMAtOneInstantAndEveryDiskRestoresAsItWas() throws {
        let night = try Night("night")
        let (a, b, c) = (try night.disk("a"), try night.disk("b"), try night.disk("c"))
        let hook = try night.hook("hook.sh")
        let phases = ["job-start", "backup-start", "pre-checkpoint", "post-checkpoint", "backup-end", "backup-abort", "job-end"]
        try night.writeConfig("""
            [run]
            metrics = "\(night.metrics)"
            report = "\(night.reportPath)"
            [hooks]
            \(phases.map { "\($0) = [\"\(hook)\"]" }.joined(separator: "\n"))
            [retention]
            keep-last = 1
            [verify]
            read-data-every = 1
            \(Night.vm("vm1", disks: [("a", a), ("b", b)]))
            \(Night.vm("vm2", disks: [("c", c)]))
            """)
        try night.startFilter()
        try night.write("a", offset: 0, length: 1 << 20, pattern: 1)
        try night.write("b", offset: 4 << 20, length: 1 << 20, pattern: 2)
        try night.write("c", offset: 8 << 20, length: 1 << 20, pattern: 3)
        let first = try night.run()
        #expect(first.result.status == 0, "\(first.result.stderr)")

        try night.write("a", offset: 2 << 20, length: 64 << 10, pattern: 4)
        try night.write("c", offset: 0, length: 64 << 10, pattern: 5)
        let second = try night.run()
        #expect(second.result.status == 0, "\(second.result.stderr)")
        let vms = Night.vms(second.report)
        #expect(vms["vm1"]?["status"] as? String == "ok" && vms["vm2"]?["status"] as? String == "ok")
        #expect(vms["vm1"]?["consistency"] as? String == "crash")
        // Incrementals: only what changed was read.
        let disks1 = Night.disks(vms["vm1"]), disks2 = Night.disks(vms["vm2"])
        #expect(disks1["a"]?["mode"] as? String == "cbt" && disks1["a"]?["bytes_read"] as? Int == 64 << 10)
        #expect(disks1["b"]?["bytes_read"] as? Int == 0 && disks2["c"]?["bytes_read"] as? Int == 64 << 10)

        // Every snapshot restores to exactly what its disk holds (nothing wrote since).
        for (name, path, vm) in [("a", a, disks1), ("b", b, disks1), ("c", c, disks2)] {
            let id = try #require(vm[name]?["snapshot"] as? String)
            #expect(try night.restored(id) == Data(contentsOf: URL(fileURLWithPath: path)), "disk \(name)")
        }
        // One group per VM per night: vm1's disks share it, vm2 has its own.
        let rows = try JSONSerialization.jsonObject(with: Data(try Tessera.ok(["snapshots", "--repo", night.repo, "--json"]).stdout.utf8)) as? [[String: Any]] ?? []
        let group = { (id: Any?) in rows.first { $0["id"] as? String == id as? String }?["group"] as? String }
        let g1 = group(disks1["a"]?["snapshot"]), g2 = group(disks2["c"]?["snapshot"])
        #expect(g1 != nil && g1 == group(disks1["b"]?["snapshot"]) && g1 == vms["vm1"]?["group"] as? String)
        #expect(g2 != nil && g2 != g1)
        // keep-last 1: the first night's snapshots are forgotten and pruned.
        #expect(rows.count == 3, "\(rows.count) snapshots kept")
        #expect(((second.report["retention"] as? [String: Any])?["forgotten"] as? [String])?.count == 3)
        #expect(second.report["prune"] != nil && (second.report["verify"] as? [String: Any])?["findings"] as? [String] == [])
        #expect(try night.openCheckpoints() == [])
        try Tessera.ok(["check", "--repo", night.repo, "--read-data"])

        // The hooks, in order, with what they are told.
        let lines = night.hookLines()
        #expect(lines.first?.hasPrefix("job-start - a b c") == true, "\(lines)")
        #expect(lines.last?.hasPrefix("job-end - a b c ||") == true)
        let vm1 = lines.filter { $0.contains(" vm1 ") }.map { String($0.split(separator: " ")[0]) }
        #expect(vm1 == ["backup-start", "pre-checkpoint", "post-checkpoint", "backup-end"] + ["backup-start", "pre-checkpoint", "post-checkpoint", "backup-end"])
        #expect(lines.contains { $0.hasPrefix("backup-end vm1 a b |a=\(disks1["a"]!["snapshot"]!) b=\(disks1["b"]!["snapshot"]!)|") })

        // The report file and the metrics say the same.
        let saved = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: night.reportPath))) as? [String: Any]
        #expect(saved?["started"] as? String == second.report["started"] as? String)
        let prom = try String(contentsOfFile: night.metrics, encoding: .utf8)
        #expect(prom.contains("tessera_vm_success{vm=\"vm1\"} 1") && prom.contains("tessera_run_success 1"))
        #expect(prom.contains("tessera_disk_bytes_read{vm=\"vm1\",disk=\"a\"} 65536"))
    }

    /// A disk with more to read than a checkpoint reads at once is read live before the VM's
    /// group checkpoint; a small one is not. Both restore to exactly their bytes, in one group.
    @Test func aNightReadsABigDiskLiveBeforeTheGroupCheckpoint() throws {
        let night = try Night("night-converge")
        let (big, small) = (try night.disk("big", mebibytes: 48), try night.disk("small"))
        try night.writeConfig(Night.vm("vm1", disks: [("big", big), ("small", small)]))
        try night.startFilter()
        for (i, offset) in stride(from: 0, to: 40 << 20, by: 4 << 20).enumerated() {
            try night.write("big", offset: offset, length: 4 << 20, pattern: UInt8(10 + i))
        }
        try night.write("small", offset: 1 << 20, length: 1 << 20, pattern: 7)
        let first = try night.run()
        #expect(first.result.status == 0, "\(first.result.stderr)")
        let disks = Night.disks(Night.vms(first.report)["vm1"])
        let passes = disks["big"]?["passes"] as? [Int] ?? []
        #expect(passes.first ?? 0 >= 40 << 20, "the big disk was not read live first: \(disks["big"] ?? [:])")
        #expect(disks["small"]?["passes"] == nil, "the small disk needs no pass: \(disks["small"] ?? [:])")
        #expect(disks["big"]?["checkpoint_seconds"] is Double && disks["small"]?["checkpoint_seconds"] is Double)
        for (name, path) in [("big", big), ("small", small)] {
            let id = try #require(disks[name]?["snapshot"] as? String)
            #expect(try night.restored(id) == Data(contentsOf: URL(fileURLWithPath: path)), "disk \(name)")
        }
        #expect(try night.openCheckpoints() == [])
        try Tessera.ok(["check", "--repo", night.repo, "--read-data"])
    }

    @Test func aFailingVMIsRetriedAndDoesNotStopTheOthers() throws {
        let night = try Night("night-fail")
        let (a, b, c) = (try night.disk("a"), try night.disk("b"), try night.disk("c"))
        let failing = try night.hook("fail.sh", exit: 7, extra: "echo no database dump >&2")
        // Fails on its first call only.
        let flaky = try night.hook("flaky.sh", extra: "[ -e \(night.dir.file("flaked")) ] && exit 0; touch \(night.dir.file("flaked")); exit 1")
        let abort = try night.hook("abort.sh")
        try night.writeConfig("""
            [run]
            retries = 1
            retry-delay = "1s"
            metrics = "\(night.metrics)"
            [hooks]
            backup-abort = ["\(abort)"]
            \(Night.vm("broken", "[vm.hooks]\npre-checkpoint = [\"\(failing)\"]\n", disks: [("a", a)]))
            \(Night.vm("flaky", "[vm.hooks]\npre-checkpoint = [\"\(flaky)\"]\n", disks: [("b", b)]))
            \(Night.vm("fine", disks: [("c", c)]))
            """)
        try night.startFilter()
        let (result, report) = try night.run()
        #expect(result.status == 3, "some VM failed: \(result.stderr)")
        let vms = Night.vms(report)
        #expect(vms["broken"]?["status"] as? String == "failed" && vms["broken"]?["attempts"] as? Int == 2)
        #expect((vms["broken"]?["error"] as? String)?.contains("exit status 7") == true)
        #expect((vms["broken"]?["error"] as? String)?.contains("no database dump") == true)
        #expect(vms["flaky"]?["status"] as? String == "ok" && vms["flaky"]?["attempts"] as? Int == 2)
        #expect(vms["fine"]?["status"] as? String == "ok" && vms["fine"]?["attempts"] as? Int == 1)
        #expect(Night.disks(vms["broken"])["a"]?["snapshot"] == nil)
        // Abort hooks ran for every failed attempt, told why.
        let aborts = night.hookLines().filter { $0.hasPrefix("backup-abort") }
        #expect(aborts.filter { $0.hasPrefix("backup-abort broken a ||") && $0.contains("exit status 7") }.count == 2, "\(aborts)")
        #expect(aborts.filter { $0.contains(" flaky ") }.count == 1)
        #expect(try night.openCheckpoints() == [])
        #expect(result.stdout.contains("\"type\":\"report\""))
        let prom = try String(contentsOfFile: night.metrics, encoding: .utf8)
        #expect(prom.contains("tessera_vm_success{vm=\"broken\"} 0") && prom.contains("tessera_run_success 0"))
        // Text output names the failure and what it printed.
        let text = try Tessera.run(["run", "--config", night.configPath, "--vm", "broken"])
        #expect(text.status == 3 && text.stdout.contains("VM broken: failed") && text.stdout.contains("error: "))
    }

    @Test func aGuestIsFrozenForTheCheckpointAndThawedAtOnce() throws {
        let night = try Night("night-qga")
        let (a, b, c) = (try night.disk("a"), try night.disk("b"), try night.disk("c"))
        let good = try FakeGuestAgent(path: night.dir.file("good.qga"))
        let stubborn = try FakeGuestAgent(path: night.dir.file("stubborn.qga"), behaviour: .freezeFails)
        let strict = try FakeGuestAgent(path: night.dir.file("strict.qga"), behaviour: .freezeFails)
        try night.writeConfig("""
            [run]
            retries = 0
            \(Night.vm("good", "guest-agent = \"\(good.path)\"\n", disks: [("a", a)]))
            \(Night.vm("stubborn", "guest-agent = \"\(stubborn.path)\"\nquiesce = \"try\"\n", disks: [("b", b)]))
            \(Night.vm("strict", "guest-agent = \"\(strict.path)\"\nquiesce = \"required\"\n", disks: [("c", c)]))
            """)
        try night.startFilter()
        let (result, report) = try night.run()
        #expect(result.status == 3)
        let vms = Night.vms(report)
        #expect(vms["good"]?["status"] as? String == "ok" && vms["good"]?["consistency"] as? String == "application")
        #expect(vms["stubborn"]?["status"] as? String == "ok" && vms["stubborn"]?["consistency"] as? String == "crash")
        #expect((vms["stubborn"]?["warnings"] as? [String])?.contains { $0.contains("crash-consistent: the guest could not be frozen") } == true)
        #expect(vms["strict"]?["status"] as? String == "failed")
        #expect((vms["strict"]?["error"] as? String)?.contains("quiesce is required") == true)
        // Frozen, then thawed (the checkpoint in between is the filter's); nobody left frozen.
        let commands = good.commands().filter { $0 != "guest-sync-delimited" }
        #expect(commands == ["guest-fsfreeze-freeze", "guest-fsfreeze-thaw"], "\(commands)")
        #expect(!good.frozen && !stubborn.frozen && !strict.frozen)
        #expect(try night.openCheckpoints() == [])
        // The snapshot was taken between the freeze and the thaw.
        let freeze = good.log.first { $0.command == "guest-fsfreeze-freeze" }!.at
        let thaw = good.log.first { $0.command == "guest-fsfreeze-thaw" }!.at
        #expect(thaw.timeIntervalSince(freeze) < 10, "thawed right after the checkpoint, not after the backup")
    }

    /// The run dies (SIGKILL) while the guest is frozen: its thaw guard thaws the guest.
    @Test func aRunKilledWhileTheGuestIsFrozenLeavesItThawed() throws {
        let night = try Night("night-kill")
        let a = try night.disk("a")
        let agent = try FakeGuestAgent(path: night.dir.file("vm.qga"), behaviour: .firstThawHangs)
        try night.writeConfig("""
            [run]
            freeze-timeout = "120s"
            \(Night.vm("vm", "guest-agent = \"\(agent.path)\"\n", disks: [("a", a)]))
            """)
        try night.startFilter()
        let run = try ChildProcess(tessera: ["run", "--config", night.configPath])
        #expect(agent.wait(for: "guest-fsfreeze-thaw (hung)", timeout: 60), "the run reached its thaw")
        #expect(agent.frozen)
        run.signal(SIGKILL)
        _ = run.wait(timeout: 30)
        let deadline = Date().addingTimeInterval(30)
        while agent.frozen && Date() < deadline { usleep(50_000) }
        #expect(!agent.frozen, "the guard thawed the guest after the run died")
        #expect(agent.commands().last == "guest-fsfreeze-thaw")
    }

    /// Ctrl-C during a VM: its hook stops, its checkpoints are aborted, the run says so (130),
    /// and the next night is an ordinary incremental.
    @Test func ctrlCStopsTheRunCleanly() throws {
        let night = try Night("night-cancel")
        let a = try night.disk("a")
        let marker = night.dir.file("hook-started")
        let slow = try night.hook("slow.sh", extra: "touch \(marker); exec sleep 120")
        try night.writeConfig("""
            \(Night.vm("vm", "[vm.hooks]\npost-checkpoint = [\"\(slow)\"]\n", disks: [("a", a)]))
            """)
        try night.startFilter()
        try night.write("a", offset: 0, length: 1 << 20, pattern: 9)
        let run = try ChildProcess(tessera: ["run", "--config", night.configPath])
        let deadline = Date().addingTimeInterval(60)
        while !FileManager.default.fileExists(atPath: marker) && Date() < deadline { usleep(20_000) }
        #expect(try night.openCheckpoints() == ["a"], "the hook runs while the checkpoint is open")
        // A second run of the same config meanwhile (the timer's, and one by hand) is refused.
        let second = try Tessera.run(["run", "--config", night.configPath])
        #expect(second.status == 11 && second.stderr.contains("another tessera run (process \(run.pid))"), "\(second.stderr)")
        run.signal(SIGINT)
        let (result, timedOut) = run.wait(timeout: 60)
        #expect(!timedOut && result.status == 130, "\(result.stderr)")
        #expect(result.stderr.contains("cancelled by SIGINT"))
        #expect(try night.openCheckpoints() == [])
        #expect(try Tessera.snapshotIDs(repo: night.repo).isEmpty)
        // Nothing lost: tonight's data is in the next run.
        try night.writeConfig("""
            \(Night.vm("vm", disks: [("a", a)]))
            """)
        let next = try night.run()
        #expect(next.result.status == 0)
        let id = try #require(Night.disks(Night.vms(next.report)["vm"])["a"]?["snapshot"] as? String)
        #expect(try night.restored(id) == Data(contentsOf: URL(fileURLWithPath: a)))
    }

    @Test func theFilterServesTheConfigsDisksAgainAfterARestart() throws {
        let night = try Night("night-restart")
        let a = try night.disk("a")
        try night.writeConfig("""
            \(Night.vm("vm", disks: [("a", a)]))
            """)
        try night.startFilter()
        try night.write("a", offset: 0, length: 1 << 20, pattern: 1)
        #expect(try night.run().result.status == 0)
        night.stopFilter()
        try night.startFilter()
        try night.write("a", offset: 3 << 20, length: 128 << 10, pattern: 2)
        let second = try night.run()
        #expect(second.result.status == 0)
        let disk = Night.disks(Night.vms(second.report)["vm"])["a"]
        #expect(disk?["mode"] as? String == "cbt" && disk?["bytes_read"] as? Int == 128 << 10, "still an incremental: \(disk ?? [:])")
        #expect(try night.restored(disk?["snapshot"] as? String ?? "") == Data(contentsOf: URL(fileURLWithPath: a)))
        // Options and --config do not mix.
        let both = try Tessera.run(["filter", "serve", "--config", night.configPath, "--socket", night.dir.file("x.sock")])
        #expect(both.status == 64 && both.stderr.contains("--socket comes from the config"))
    }

    @Test func aVMThatCannotStartWithinTheWindowIsSkipped() throws {
        let night = try Night("night-window")
        let (a, b) = (try night.disk("a"), try night.disk("b"))
        let slow = try night.hook("slow.sh", extra: "sleep 2")
        try night.writeConfig("""
            [run]
            window = "1s"
            \(Night.vm("first", "[vm.hooks]\nbackup-start = [\"\(slow)\"]\n", disks: [("a", a)]))
            \(Night.vm("late", disks: [("b", b)]))
            """)
        try night.startFilter()
        let (result, report) = try night.run()
        let vms = Night.vms(report)
        #expect(vms["first"]?["status"] as? String == "ok")
        #expect(vms["late"]?["status"] as? String == "skipped" && (vms["late"]?["error"] as? String)?.contains("window") == true)
        #expect(result.status == 3, "a skipped VM has no backup tonight")
    }

    @Test func mistakesInTheConfigAndALockedRepositoryHaveTheirExitCodes() throws {
        let night = try Night("night-errors")
        let a = try night.disk("a")
        try night.writeConfig("""
            \(Night.vm("vm", "colour = \"blue\"\n", disks: [("a", a)]))
            """)
        let bad = try Tessera.run(["config", "check", night.configPath])
        #expect(bad.status == 2 && bad.stderr.contains("\(night.configPath):8:") && bad.stderr.contains("colour"), "\(bad.stderr)")
        #expect(try Tessera.run(["run", "--config", night.configPath]).status == 2)
        try night.writeConfig("""
            \(Night.vm("vm", disks: [("a", a)]))
            """)
        let plan = try Tessera.ok(["config", "check", night.configPath])
        #expect(plan.stdout.contains("VM vm: crash-consistent") && plan.stdout.contains("disk a: changes from filter"))
        let unknown = try Tessera.run(["run", "--config", night.configPath, "--vm", "nope"])
        #expect(unknown.status == 2 && unknown.stderr.contains("no VM named nope"))
        // The filter is not running: the dry run says so and changes nothing.
        let dry = try Tessera.run(["run", "--config", night.configPath, "--dry-run"])
        #expect(dry.status == 3 && dry.stdout.contains("problems:") && dry.stdout.contains("the filter"), "\(dry.stdout)")
        #expect(try Tessera.snapshotIDs(repo: night.repo).isEmpty)
        // Another host's exclusive lock: exit 11, nothing done.
        try night.startFilter()
        let now = ISO8601DateFormatter().string(from: Date())
        let lock = "{\"id\":\"00000000000000000000000000000001\",\"kind\":\"exclusive\",\"host\":\"elsewhere\",\"pid\":1,\"started\":\"\(now)\",\"refreshed\":\"\(now)\"}"
        try Data(lock.utf8).write(to: URL(fileURLWithPath: "\(night.repo)/locks/00000000000000000000000000000001.lock"))
        let locked = try Tessera.run(["run", "--config", night.configPath])
        #expect(locked.status == 11 && locked.stderr.contains("locked"), "\(locked.stderr)")
        #expect(try night.openCheckpoints() == [])
    }

    /// A VM's disks come back together by their group: restored into a folder, or served.
    @Test func aVMsDisksComeBackTogetherByTheirGroup() throws {
        let night = try Night("night-group")
        let (a, b) = (try night.disk("a"), try night.disk("b"))
        try night.writeConfig("""
            \(Night.vm("vm", disks: [("a", a), ("b", b)]))
            """)
        try night.startFilter()
        try night.write("a", offset: 0, length: 1 << 20, pattern: 1)
        try night.write("b", offset: 5 << 20, length: 1 << 20, pattern: 2)
        let (result, report) = try night.run()
        #expect(result.status == 0)
        let group = try #require(Night.vms(report)["vm"]?["group"] as? String)
        let folder = night.dir.file("vm-restored")
        try Tessera.ok(["restore", "--repo", night.repo, "--group", String(group.prefix(8)), "--to", folder])
        for (name, path) in [("a", a), ("b", b)] {
            #expect(try Data(contentsOf: URL(fileURLWithPath: "\(folder)/\(name).raw")) == Data(contentsOf: URL(fileURLWithPath: path)))
        }
        let served = try ChildProcess(tessera: ["serve", "--repo", night.repo, "--group", group, "--socket", night.dir.file("serve.sock")])
        #expect(served.waitForLine(timeout: 60) { $0.contains("nbd+unix:///b?") })
        for (name, path) in [("a", a), ("b", b)] {
            let compare = try runCommand("qemu-img", ["compare", "-f", "raw", "-F", "raw", path, "nbd+unix:///\(name)?socket=\(night.dir.file("serve.sock"))"])
            #expect(compare.status == 0, "\(name): \(compare.stdout) \(compare.stderr)")
        }
        served.signal(SIGTERM)
        _ = served.wait(timeout: 30)
        let unknown = try Tessera.run(["restore", "--repo", night.repo, "--group", "ffffffff", "--to", night.dir.file("none")])
        #expect(unknown.status == 1 && unknown.stderr.contains("no consistency group ffffffff"))
        let both = try Tessera.run(["restore", "--repo", night.repo, "latest", "--group", group, "--to", folder])
        #expect(both.status == 64)
    }

    /// parallel-vms = 2: two VMs' backups overlap in time; a scanned disk is backed up too, with
    /// the warning that it is not read at one instant.
    @Test func vmsRunSideBySideAndAScannedDiskIsSaidToBeReadLive() throws {
        let night = try Night("night-parallel")
        let (a, b) = (try night.disk("a"), try night.disk("b"))
        let scanned = night.dir.file("scanned.raw")
        try Data(repeating: 7, count: 1 << 20).write(to: URL(fileURLWithPath: scanned))
        // Each VM's hook holds it for a second and notes when it ran.
        let hold = try night.hook("hold.sh", extra: "date +%s.%N >> \(night.dir.file("times"))-$TESSERA_VM; sleep 1; date +%s.%N >> \(night.dir.file("times"))-$TESSERA_VM")
        try night.writeConfig("""
            [run]
            parallel-vms = 2
            [hooks]
            pre-checkpoint = ["\(hold)"]
            \(Night.vm("one", disks: [("a", a)]))
            \(Night.vm("two", disks: [("b", b)]))
            [[vm.disk]]
            name = "s"
            path = "\(scanned)"
            changes = "scan"
            """)
        try night.startFilter()
        let (result, report) = try night.run()
        #expect(result.status == 0, "\(result.stderr)")
        func interval(_ vm: String) throws -> (Double, Double) {
            let times = try String(contentsOfFile: night.dir.file("times") + "-" + vm, encoding: .utf8).split(separator: "\n").compactMap { Double($0) }
            return (times.first ?? 0, times.last ?? 0)
        }
        let (one, two) = (try interval("one"), try interval("two"))
        #expect(one.0 < two.1 && two.0 < one.1, "the two VMs' hooks overlapped: \(one) \(two)")
        let vm2 = Night.vms(report)["two"]
        let s = Night.disks(vm2)["s"]
        #expect(s?["changes"] as? String == "scan" && s?["snapshot"] != nil)
        #expect((vm2?["warnings"] as? [String])?.contains { $0.contains("disk s is scanned while the VM runs") } == true)
        #expect(try night.restored(s?["snapshot"] as? String ?? "") == Data(contentsOf: URL(fileURLWithPath: scanned)))
    }

    /// A disk whose changes come from a QEMU dirty bitmap over NBD (libvirt pull mode), in a
    /// night beside a filter disk: night 2 reads only what the bitmap says, and restores as
    /// `qemu-img convert` sees the image.
    @Test func aDiskWithAQEMUBitmapIsBackedUpByItsBitmap() throws {
        let night = try Night("night-nbd")
        let a = try night.disk("a")
        let qcow = night.dir.file("pull.qcow2"), sock = night.dir.file("qemu-nbd.sock")
        try runCommand("qemu-img", ["create", "-q", "-f", "qcow2", qcow, "32M"])
        try runCommand("qemu-io", ["-f", "qcow2", "-c", "write -P 0x31 1M 2M", qcow])
        try runCommand("qemu-img", ["bitmap", "--add", qcow, "nightly"])
        try night.writeConfig("""
            \(Night.vm("mixed", disks: [("a", a)]))
            [[vm.disk]]
            name = "pull"
            changes = "nbd"
            nbd = "nbd+unix:///?socket=\(sock)"
            bitmap = "nightly"
            """)
        try night.startFilter()
        func runNight(_ label: String) throws -> [String: Any] {
            let server = try ChildProcess.qemuNBD(["-r", "-f", "qcow2", "-t", "-B", "nightly", qcow], socket: sock)
            defer { server.kill(); unlink(sock) }
            let (result, report) = try night.run()
            #expect(result.status == 0, "\(label): \(result.stderr)")
            return Night.disks(Night.vms(report)["mixed"])["pull"] ?? [:]
        }
        let first = try runNight("night 1")
        #expect(first["mode"] as? String == "full")
        try runCommand("qemu-io", ["-f", "qcow2", "-c", "write -P 0x41 4M 4k", "-c", "write -P 0x42 30M 100k", qcow])
        let second = try runNight("night 2")
        #expect(second["mode"] as? String == "nbd-bitmap" && second["bytes_read"] as? Int == 3 * 65536, "\(second)")
        let reference = night.dir.file("reference.raw")
        try runCommand("qemu-img", ["convert", "-O", "raw", qcow, reference])
        #expect(try night.restored(second["snapshot"] as? String ?? "") == Data(contentsOf: URL(fileURLWithPath: reference)))
        let plan = try Tessera.ok(["config", "check", night.configPath])
        #expect(plan.stdout.contains("disk pull: changes from nbd, nbd+unix:///?socket=\(sock), bitmap nightly"))
        #expect(plan.stdout.contains("NBD-bitmap disks are not checkpointed with its filter disks"))
    }

    /// The metrics folder is full: the backups are saved all the same, the old metrics file
    /// is left whole (never half a file for node_exporter), and the run says so (exit 3).
    @Test func aFullMetricsFolderLosesNoBackupAndLeavesTheOldFileWhole() throws {
        let night = try Night("night-full")
        let a = try night.disk("a")
        let fs = try SmallFileSystem(bytes: 1 << 20)
        let metrics = fs.file("tessera.prom")
        try night.writeConfig("""
            [run]
            metrics = "\(metrics)"
            \(Night.vm("vm", disks: [("a", a)]))
            """)
        try night.startFilter()
        try night.write("a", offset: 0, length: 1 << 20, pattern: 5)
        #expect(try night.run().result.status == 0)
        let before = try String(contentsOfFile: metrics, encoding: .utf8)
        _ = try fs.fill()
        try night.write("a", offset: 4 << 20, length: 64 << 10, pattern: 6)
        let (result, report) = try night.run()
        fs.unfill()
        #expect(result.status == 3)
        #expect((report["errors"] as? [String])?.contains { $0.contains("cannot write the metrics to \(metrics)") } == true, "\(report)")
        let disk = Night.disks(Night.vms(report)["vm"])["a"]
        #expect(Night.vms(report)["vm"]?["status"] as? String == "ok")
        #expect(try night.restored(disk?["snapshot"] as? String ?? "") == Data(contentsOf: URL(fileURLWithPath: a)))
        #expect(try String(contentsOfFile: metrics, encoding: .utf8) == before)
        #expect(try FileManager.default.contentsOfDirectory(atPath: fs.path).filter { $0.contains(".tmp") }.isEmpty)
    }
}
