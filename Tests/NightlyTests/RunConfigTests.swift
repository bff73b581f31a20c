import BackupRepository
import Foundation
import Nightly
import Testing
import TestSupport

/// The nightly run's config: what it means, and every mistake named by file, line and key.
struct RunConfigTests {
    /// The commented example in Fixtures/ is a valid config and means what its comments say.
    @Test func theExampleConfigReadsAsDocumented() throws {
        let text = try String(contentsOfFile: BuiltProducts.fixtures + "/nightly.toml", encoding: .utf8)
        let c = try RunConfig.parse(text, file: "nightly.toml")
        #expect(c.repository == "/backup/tessera")
        #expect(c.filter?.control == "/run/tessera/control.sock" && c.filter?.stateDirectory == "/var/lib/tessera/state")
        #expect(c.run.parallelVMs == 1 && c.run.window == 5 * 3600 && c.run.vm.retryDelay == 300)
        #expect(c.retention?.policy.keepDaily == 14 && c.retention?.policy.keepWithin == 2 * 86400 && c.retention?.prune == true)
        #expect(c.verify?.readDataEvery == 7)
        #expect(c.vms.map(\.name) == ["web1", "db1"])
        #expect(c.vms[0].settings.quiesce == .required && c.vms[0].guestAgent == "/run/qemu/web1.qga")
        #expect(c.vms[0].disks.map(\.name) == ["web1-root", "web1-data"])
        #expect(c.vms[0].disks.allSatisfy { $0.changes == .filter }, "with [filter], disks default to the filter")
        #expect(c.vms[1].settings.retries == 2 && c.vms[1].settings.quiesce == .try)
        #expect(c.vms[1].disks[0].changes == .nbd(uri: "nbd+unix:///drive0?socket=/run/qemu/db1-backup.sock", bitmap: "tessera-nightly"))
    }

    static let minimal = """
        repository = "/backup/repo"

        [[vm]]
        name = "a"

        [[vm.disk]]
        name = "a0"
        path = "/x/a0.raw"
        """

    /// `minimal` with `tables` between the repository line and the VMs (keys after a table
    /// header belong to that table in TOML).
    static func with(_ tables: String) -> String {
        minimal.replacingOccurrences(of: "repository = \"/backup/repo\"\n", with: "repository = \"/backup/repo\"\n" + tables + "\n")
    }

    /// (config text, a piece of the line the error must point at — its last occurrence —,
    /// the key, a word the message must hold)
    static let mistakes: [(String, String?, String, String)] = [
        (minimal + "\nbogus = 1\n", "bogus", "vm[0].disk[0].bogus", "unknown setting"),
        ("repositry = \"/r\"\n" + minimal, "repositry", "repositry", "unknown setting"),
        (minimal.replacingOccurrences(of: "name = \"a\"", with: "name = \"a\"\nparalel = 2"), "paralel", "vm[0].paralel", "unknown setting"),
        (with("[run]\nparallel-vms = 0"), "parallel-vms", "run.parallel-vms", "at least 1"),
        (with("[run]\nwindow = \"soon\""), "window", "run.window", "duration"),
        (with("[run]\nquiesce = \"maybe\""), "quiesce", "run.quiesce", "off"),
        (minimal + "\n[[vm]]\nname = \"a\"\n[[vm.disk]]\nname = \"b0\"\npath = \"/x/b0.raw\"\n", "name = \"a\"", "vm[1].name", "already defined at line 4"),
        (minimal + "\n[[vm]]\nname = \"b\"\n[[vm.disk]]\nname = \"a0\"\npath = \"/x/b0.raw\"\n", "name = \"a0\"", "vm[1].disk[0].name", "already defined at line 7"),
        (minimal.replacingOccurrences(of: "path = \"/x/a0.raw\"", with: "path = \"a0.raw\""), "path", "vm[0].disk[0].path", "absolute"),
        (minimal.replacingOccurrences(of: "path = \"/x/a0.raw\"", with: "path = \"/x/a0.raw\"\nchanges = \"filter\""), "changes", "vm[0].disk[0].changes", "[filter]"),
        (minimal.replacingOccurrences(of: "name = \"a\"", with: "name = \"a\"\nquiesce = \"required\""), "quiesce", "vm[0].quiesce", "guest agent"),
        (with("[hooks]\npre-checkpoint = [\"notify-send\"]"), "pre-checkpoint", "hooks.pre-checkpoint", "absolute path"),
        (with("[retention]\nprune = true"), "[retention]", "retention", "keep"),
        (minimal + "\n[[vm]]\nname = \"b c\"\n", "b c", "vm[1].name", "letters"),
        (minimal + "\n[[vm]]\nname = \"b\"\n", "[[vm]]", "vm[1]", "no disk"),
        ("repository = \"/r\"\n", nil, "vm", "no VM"),
        ("repository = [\n", "repository", "", "not valid TOML"),
    ]

    @Test(arguments: mistakes)
    func everyMistakeIsNamedByLineAndKey(_ mistake: (String, String?, String, String)) throws {
        let (text, marker, key, word) = mistake
        let line = marker.flatMap { m in text.split(separator: "\n", omittingEmptySubsequences: false).lastIndex { $0.contains(m) }.map { $0 + 1 } }
        do {
            _ = try RunConfig.parse(text, file: "night.toml")
            Issue.record("accepted a config with a mistake (\(key)):\n\(text)")
        } catch let e as ConfigError {
            #expect(e.file == "night.toml")
            #expect(e.line == line, "\(e)")
            if !key.isEmpty { #expect(e.key == key, "\(e)") }
            #expect(e.description.contains(word), "\(e)")
        }
    }

    /// A config saved with CRLF line endings (an editor on another system) reads the same, and
    /// its mistakes are named by the same line: Swift splits "\r\n" as one Character, which
    /// once made such a file one line long (and let a bad table header reach toml++'s assertion).
    @Test(arguments: mistakes)
    func crlfLineEndingsGiveTheSameLines(_ mistake: (String, String?, String, String)) throws {
        let (text, marker, key, _) = mistake
        let line = marker.flatMap { m in text.split(separator: "\n", omittingEmptySubsequences: false).lastIndex { $0.contains(m) }.map { $0 + 1 } }
        do {
            _ = try RunConfig.parse(text.replacingOccurrences(of: "\n", with: "\r\n"), file: "night.toml")
            Issue.record("accepted a CRLF config with a mistake (\(key))")
        } catch let e as ConfigError {
            #expect(e.line == line, "\(e)")
            if !key.isEmpty { #expect(e.key == key, "\(e)") }
        }
        let good = try RunConfig.parse(Self.minimal.replacingOccurrences(of: "\n", with: "\r\n"), file: "night.toml")
        #expect(good.vms.map(\.name) == (try RunConfig.parse(Self.minimal, file: "night.toml")).vms.map(\.name))
        #expect(throws: ConfigError.self) {
            _ = try RunConfig.parse(Self.minimal.replacingOccurrences(of: "\n", with: "\r\n") + "\r\n[[\u{8a}disk]]\r\n", file: "night.toml")
        }
    }

    /// Array elements toml++ would assert on (found by Tools/fuzz) are refused with the line;
    /// arrays and inline tables people write still read.
    @Test func arrayElementsTomlPlusPlusAssertsOnAreRefused() throws {
        for (bad, line) in [("a = [}]", 1), ("a = [1, }", 1), ("a = [\n  # c\n  }\n]", 3), ("a = [\u{2028}]", 1),
                            ("a = [\"x\",\n\u{85}]", 2), ("a = [{ b = [ } ] }]", 1)] as [(String, Int)] {
            do {
                _ = try TOMLDocument(text: bad, file: "t.toml")
                Issue.record("accepted \(bad.debugDescription)")
            } catch let e as ConfigError {
                #expect(e.line == line && e.description.contains("not valid TOML"), "\(bad.debugDescription): \(e)")
            }
        }
        let good = """
            [t]
            a = [ "x]}", 'y[,', \"\"\"z
            }]\"\"\", ]   # trailing comma
            b = [{ c = [1, 2] }, { d = "}" }]
            e = [
              1, # one
              2,
            ]
            f = {}
            """
        let doc = try TOMLDocument(text: good, file: "t.toml")
        guard case .table(let t) = doc.root["t"] else { Issue.record("no table t"); return }
        #expect(t["a"] == .array([.string("x]}"), .string("y[,"), .string("z\n}]")]))
        #expect(t["e"] == .array([.int(1), .int(2)]))
    }

    /// The file system: a disk that is not there, and one file under two disks (through a
    /// symlink), are named by line; hooks must be programs.
    @Test func filesAreCheckedWhenTheConfigIsLoaded() throws {
        let dir = try TemporaryDirectory("config-files")
        _ = FileManager.default.createFile(atPath: dir.file("a.raw"), contents: Data(count: 65536))
        try FileManager.default.createSymbolicLink(atPath: dir.file("alias.raw"), withDestinationPath: dir.file("a.raw"))
        func load(_ text: String) throws -> RunConfig {
            try text.write(toFile: dir.file("night.toml"), atomically: true, encoding: .utf8)
            return try RunConfig.load(dir.file("night.toml"))
        }
        let good = """
            repository = "\(dir.file("repo"))"
            [hooks]
            job-start = ["/bin/true"]
            [[vm]]
            name = "a"
            [[vm.disk]]
            name = "a0"
            path = "\(dir.file("a.raw"))"
            """
        #expect(try load(good).vms[0].settings.hooks.commands[.jobStart] == [["/bin/true"]])
        for (text, line, word) in [
            (good.replacingOccurrences(of: "a.raw\"", with: "missing.raw\""), 8, "cannot be opened"),
            (good + "\n[[vm]]\nname = \"b\"\n[[vm.disk]]\nname = \"b0\"\npath = \"\(dir.file("alias.raw"))\"\n", 13, "same file as disk 'a0'"),
            (good.replacingOccurrences(of: "/bin/true", with: "/no/such/program"), 3, "not an executable"),
            // A typo in the metrics folder would only show after every backup of the night.
            (good.replacingOccurrences(of: "[hooks]", with: "[run]\nmetrics = \"/var/lib/prometheus/node-exporter-typo/t.prom\"\n[hooks]"),
             3, "the folder /var/lib/prometheus/node-exporter-typo does not exist"),
        ] as [(String, Int, String)] {
            do {
                _ = try load(text)
                Issue.record("accepted: \(text)")
            } catch let e as ConfigError {
                #expect(e.line == line && e.description.contains(word) && e.file == dir.file("night.toml"), "\(e)")
            }
        }
    }
}
