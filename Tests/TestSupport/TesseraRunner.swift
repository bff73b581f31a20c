import Foundation
import Testing

/// Runs the built `tessera` binary and decodes its `--json` output (shared by the end-to-end
/// test targets).
public enum Tessera {
    public static var binary: String { BuiltProducts.executable("tessera") }

    @discardableResult
    public static func run(_ arguments: [String]) throws -> CommandResult {
        try runCommand(binary, arguments)
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

/// `tessera filter serve` for one disk as a child process, plus qemu-io as the VM writing
/// through it. (FilterTests has a richer harness of its own for crash tests.)
public final class FilterProcess {
    public let process = Process()
    public let control: String
    public let socket: String
    public let disk: String

    public init(directory: String, disk: String, path: String) throws {
        self.disk = disk
        control = "\(directory)/c.sock"
        socket = "\(directory)/n.sock"
        process.executableURL = URL(fileURLWithPath: Tessera.binary)
        process.arguments = ["filter", "serve", "--disk", "\(disk)=\(path)", "--socket", socket,
                             "--control", control, "--state-dir", "\(directory)/state"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        for _ in 0..<200 {
            if FileManager.default.fileExists(atPath: control) && FileManager.default.fileExists(atPath: socket) { return }
            if !process.isRunning { break }
            usleep(50_000)
        }
        stop()
        throw CommandError(description: "the filter did not start")
    }

    public var uri: String { "nbd+unix:///\(disk)?socket=\(socket)" }

    /// Writes through the filter with qemu-io (the VM), one process for many writes.
    public func write(_ writes: [(offset: Int, length: Int, value: UInt8)]) throws {
        var args = ["-f", "raw"]
        for w in writes { args += ["-c", "write -P \(w.value) \(w.offset) \(w.length)"] }
        let r = try runCommand("qemu-io", args + [uri])
        guard r.succeeded, !r.stderr.contains("error") else { throw CommandError(description: "qemu-io failed: \(r.stderr)") }
    }

    public func stop() {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
    }

    deinit { stop() }
}
