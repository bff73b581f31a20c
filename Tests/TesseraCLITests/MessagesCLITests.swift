import Foundation
import Testing
import TestSupport

/// What the command line says: counts in the right number, advice that exists, one error
/// prefix, JSON numbers as numbers, every exit code documented, init that refuses to mix a
/// repository into a folder that holds something else.
struct MessagesCLITests {
    /// "1 snapshots", "read 1 packs", "1 problems": a count of one takes the singular.
    @Test func aCountOfOneIsSingular() throws {
        let dir = try TemporaryDirectory("messages-plural")
        let repo = dir.file("repo"), source = dir.file("disk.raw")
        try Tessera.ok(["init", "--repo", repo])
        let disk = try makeDisk(at: source, chunks: 1, seed: 101)
        let snapshot = try Tessera.backup(repo: repo, source: source)
        var outputs: [String: String] = [:]
        outputs["snapshots"] = try Tessera.ok(["snapshots", "--repo", repo]).stdout
        outputs["check"] = try Tessera.ok(["check", "--repo", repo, "--read-data"]).stdout
        outputs["prune"] = try Tessera.ok(["prune", "--repo", repo, "--dry-run"]).stdout
        outputs["repair"] = try Tessera.ok(["repair", "index", "--repo", repo]).stdout
        outputs["diff"] = try Tessera.ok(["diff", "--repo", repo, snapshot, snapshot]).stdout
        #expect(outputs["snapshots"]?.hasSuffix("\n1 snapshot\n") == true, "\(outputs["snapshots"] ?? "")")
        #expect(outputs["check"]?.contains("checked 1 snapshot, 1 disk map, 1 map page, 1 chunk referenced, 1 pack\n") == true,
                "\(outputs["check"] ?? "")")
        #expect(outputs["check"]?.contains("read 1 pack, 1 chunk,") == true, "\(outputs["check"] ?? "")")

        try damageChunk(0, of: disk, in: repo)
        let damaged = try Tessera.run(["check", "--repo", repo, "--read-data", "--no-set-aside"])
        #expect(damaged.status == 1 && damaged.stdout.contains("\n1 problem found\n"), "\(damaged.stdout)")
        // The reason keeps its first letter ("tored bytes" was "stored bytes").
        #expect(damaged.stdout.contains("damaged: stored bytes checksum mismatch"), "\(damaged.stdout)")
        outputs["damaged"] = damaged.stdout
        let restore = try Tessera.run(["restore", "--repo", repo, snapshot, "--to", dir.file("out.raw"), "--keep-going"])
        outputs["restore"] = restore.stdout + restore.stderr
        outputs["repair snapshots"] = try Tessera.run(["repair", "snapshots", "--repo", repo]).stdout

        let plural = try NSRegularExpression(pattern: #"(?<![0-9.])1 (snapshot|pack|chunk|problem|disk map|map page|range|extent|lock|index file|damaged chunk|chunk cop(y|ie))s\b"#)
        for (command, text) in outputs {
            let match = plural.firstMatch(in: text, range: NSRange(text.startIndex..., in: text))
            #expect(match == nil, "\(command) says \(match.flatMap { Range($0.range, in: text) }.map { String(text[$0]) } ?? ""): \(text)")
        }
    }

    /// The progress line on a terminal clears what a longer earlier line left ("ETA 3s s").
    @Test(.enabled(if: ExternalTool.available("script")))
    func progressLinesClearTheirTail() throws {
        let dir = try TemporaryDirectory("messages-eta")
        let repo = dir.file("repo"), source = dir.file("disk.raw")
        try Tessera.ok(["init", "--repo", repo])
        try makeRandomFile(at: source, mebibytes: 64)
        _ = try Tessera.backup(repo: repo, source: source)
        // `script` gives the command a terminal, so the progress bar draws.
        let command = "'\(Tessera.binary)' restore --repo '\(repo)' latest --disk d --to '\(dir.file("out.raw"))'"
        let r = try runCommand("script", ["-qec", command, "/dev/null"])
        #expect(r.succeeded, "\(r.stdout) \(r.stderr)")
        let lines = r.stdout.split(separator: "\r").filter { $0.hasPrefix("restore d [") }
        try #require(!lines.isEmpty, "no progress line on the terminal: \(r.stdout.debugDescription)")
        for line in lines {
            #expect(line.contains("\u{1B}[K"), "a progress line does not clear the rest of the line: \(line.debugDescription)")
        }
    }

    /// The advice for a qcow2 or sparse VMDK source names a real command, not an API or an option that does not exist.
    @Test(.enabled(if: ExternalTool.available("qemu-img")))
    func formatAdviceNamesRealCommands() throws {
        let dir = try TemporaryDirectory("messages-qcow2")
        let repo = dir.file("repo")
        try Tessera.ok(["init", "--repo", repo])
        try runCommand("qemu-img", ["create", "-q", "-f", "qcow2", dir.file("vm.qcow2"), "1M"])
        try runCommand("qemu-img", ["create", "-q", "-f", "vmdk", dir.file("sparse.vmdk"), "1M"])
        for (file, advice) in [("vm.qcow2", "qemu-img convert -O raw"), ("sparse.vmdk", "qemu-img convert -O vmdk -o subformat=monolithicFlat")] {
            let r = try Tessera.run(["backup", "--repo", repo, "--disk", "d", "--source", dir.file(file)])
            #expect(r.status == 1 && r.stderr.contains(advice), "\(r.stderr)")
            #expect(!r.stderr.contains("openRaw") && !r.stderr.contains("--format"), "advice that does not exist: \(r.stderr)")
        }
    }

    /// Every error comes through one funnel with one prefix, from the library or the parser.
    @Test func errorsHaveOnePrefix() throws {
        let dir = try TemporaryDirectory("messages-prefix")
        let repo = dir.file("repo")
        try Tessera.ok(["init", "--repo", repo])
        let cases: [[String]] = [
            ["snapshots", "--repo", dir.file("missing")],                              // library error
            ["restore", "--repo", repo, "latest", "--to", dir.file("x"), "--format", "qcow2"], // validation in run()
            ["prune", "--repo", repo, "--repack-threshold", "300"],                      // validate()
            ["snapshots", "--repo", repo, "--bogus"],                                    // parser
        ]
        for args in cases {
            let r = try Tessera.run(args)
            #expect(r.status != 0)
            #expect(r.stderr.hasPrefix("tessera: error: "), "\(args): \(r.stderr)")
            #expect(!r.stderr.contains("Error:"), "\(args): \(r.stderr)")
        }
    }

    /// `--json` errors carry the exit code as a number.
    @Test func jsonExitCodeIsANumber() throws {
        let dir = try TemporaryDirectory("messages-json")
        let r = try Tessera.run(["snapshots", "--repo", dir.file("missing"), "--json"])
        #expect(r.status == 10)
        let line = try #require(Tessera.lines(r).first { $0["type"] as? String == "error" }, "\(r.stdout)")
        #expect(line["exit_code"] as? Int == 10 && !(line["exit_code"] is String), "\(r.stdout)")
    }

    /// Every exit code the command line returns is in the README's table.
    @Test func everyExitCodeIsDocumented() throws {
        let dir = try TemporaryDirectory("messages-exit")
        let repo = dir.file("repo"), source = dir.file("disk.raw")
        try Tessera.ok(["init", "--repo", repo])
        _ = try makeDisk(at: source, chunks: 2, seed: 102)
        _ = try Tessera.backup(repo: repo, source: source)
        var seen: Set<Int32> = [0]
        seen.insert(try Tessera.run(["restore", "--repo", repo, "nosuchsnapshot", "--to", dir.file("x")]).status)
        seen.insert(try Tessera.run(["snapshots", "--repo", dir.file("missing")]).status)
        seen.insert(try Tessera.run(["snapshots", "--bogus"]).status)
        seen.insert(try Tessera.run(["filter", "status", "--control", dir.file("no.sock")]).status)
        let exclusive = try ChildProcess(tessera: ["serve", "--repo", repo, "latest", "--socket", dir.file("s.sock")])
        #expect(exclusive.waitForLine(timeout: 60) { $0.hasPrefix("serving") })
        seen.insert(try Tessera.run(["prune", "--repo", repo]).status)
        exclusive.signal(SIGTERM)
        _ = exclusive.wait()
        #expect(seen == [0, 1, 2, 10, 11, 64], "\(seen.sorted())")

        let readme = try String(contentsOfFile: BuiltProducts.fixtures + "/../README.md", encoding: .utf8)
        let rows = readme.split(separator: "\n").filter { $0.hasPrefix("| ") }
        for code in seen.union([130, 143]) {
            #expect(rows.contains { $0.hasPrefix("| \(code) |") }, "exit code \(code) is not in the README's exit-code table")
        }
    }

    /// init refuses a folder that holds anything, and a file; an empty or new folder is fine.
    @Test func initRefusesANonEmptyFolder() throws {
        let dir = try TemporaryDirectory("messages-init")
        let busy = dir.file("busy")
        try FileManager.default.createDirectory(atPath: busy, withIntermediateDirectories: true)
        try Data("keep me".utf8).write(to: URL(fileURLWithPath: "\(busy)/notes.txt"))
        let r = try Tessera.run(["init", "--repo", busy])
        #expect(r.status == 1 && r.stderr.contains("not empty") && r.stderr.contains(busy), "\(r.stderr)")
        #expect(names(in: busy) == ["notes.txt"], "init wrote into a folder that was not empty")

        let file = dir.file("afile")
        try Data("x".utf8).write(to: URL(fileURLWithPath: file))
        let onFile = try Tessera.run(["init", "--repo", file])
        #expect(onFile.status == 1 && onFile.stderr.contains("not a directory"), "\(onFile.stderr)")

        let empty = dir.file("empty")
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
        try Tessera.ok(["init", "--repo", empty])
        try Tessera.ok(["init", "--repo", dir.file("new/deeper")])
        let again = try Tessera.run(["init", "--repo", empty])
        #expect(again.status == 1 && again.stderr.contains("already"), "\(again.stderr)")
    }
}
