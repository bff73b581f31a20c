import Foundation
import Testing

/// Runs the built `tessera` binary and decodes its `--json` output (shared by the end-to-end
/// test targets).
public enum Tessera {
    public static var binary: String { BuiltProducts.executable("tessera") }

    /// Runs a command to completion (SIGKILLed after `timeout` seconds: then this throws).
    @discardableResult
    public static func run(_ arguments: [String], timeout: Double = 900) throws -> CommandResult {
        try runCommand(binary, arguments, timeout: timeout)
    }

    /// Runs a command that must succeed; a failure records its output.
    @discardableResult
    public static func ok(_ arguments: [String], sourceLocation: SourceLocation = #_sourceLocation) throws -> CommandResult {
        let r = try run(arguments)
        if !r.succeeded {
            Issue.record("tessera \(arguments.joined(separator: " ")) exited \(r.status)\nstdout: \(r.stdout)\nstderr: \(r.stderr)",
                         sourceLocation: sourceLocation)
            throw CommandError(description: "tessera failed")
        }
        return r
    }

    /// Every JSON line of a `--json` run.
    public static func lines(_ r: CommandResult) -> [[String: Any]] {
        r.stdout.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }

    /// The last JSON line of a `--json` run.
    public static func summary(_ r: CommandResult) throws -> [String: Any] {
        guard let last = lines(r).last else { throw CommandError(description: "no JSON in: \(r.stdout) \(r.stderr)") }
        return last
    }

    /// Backs up a file (full scan) and returns the snapshot ID.
    public static func backup(repo: String, disk: String = "d", source: String) throws -> String {
        let s = try summary(try ok(["backup", "--repo", repo, "--disk", disk, "--source", source, "--json"]))
        guard let id = s["snapshot"] as? String else { throw CommandError(description: "no snapshot in \(s)") }
        return id
    }

    /// Restores a snapshot and returns its bytes.
    public static func restore(repo: String, snapshot: String, scratch: String) throws -> Data {
        let target = "\(scratch)/restore-\(snapshot.prefix(8))-\(UInt32.random(in: 0...UInt32.max)).raw"
        try ok(["restore", "--repo", repo, snapshot, "--to", target])
        defer { try? FileManager.default.removeItem(atPath: target) }
        return try Data(contentsOf: URL(fileURLWithPath: target))
    }

    public static func snapshotIDs(repo: String) throws -> [String] {
        let r = try ok(["snapshots", "--repo", repo, "--json"])
        let rows = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]] ?? []
        return rows.compactMap { $0["id"] as? String }
    }
}
