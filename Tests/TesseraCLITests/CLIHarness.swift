import Foundation
import Testing
import TestSupport

/// Runs the built `tessera` binary and decodes `--json` output.
enum Tessera {
    static var binary: String { BuiltProducts.executable("tessera") }

    @discardableResult
    static func run(_ arguments: [String]) throws -> CommandResult {
        try runCommand(binary, arguments)
    }

    /// Runs a command that must succeed; a failure records its output.
    @discardableResult
    static func ok(_ arguments: [String], sourceLocation: SourceLocation = #_sourceLocation) throws -> CommandResult {
        let r = try run(arguments)
        if !r.succeeded {
            Issue.record("tessera \(arguments.joined(separator: " ")) exited \(r.status)\nstdout: \(r.stdout)\nstderr: \(r.stderr)",
                         sourceLocation: sourceLocation)
            throw CommandError(description: "tessera failed")
        }
        return r
    }

    /// Every JSON line of a `--json` run.
    static func lines(_ r: CommandResult) -> [[String: Any]] {
        r.stdout.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }

    /// The last JSON line of a `--json` run.
    static func summary(_ r: CommandResult) throws -> [String: Any] {
        guard let last = lines(r).last else { throw CommandError(description: "no JSON in: \(r.stdout) \(r.stderr)") }
        return last
    }

    /// Backs up a file (full scan) and returns the snapshot ID.
    static func backup(repo: String, disk: String = "d", source: String) throws -> String {
        let s = try summary(try ok(["backup", "--repo", repo, "--disk", disk, "--source", source, "--json"]))
        guard let id = s["snapshot"] as? String else { throw CommandError(description: "no snapshot in \(s)") }
        return id
    }

    /// Restores a snapshot and returns its bytes.
    static func restore(repo: String, snapshot: String, scratch: String) throws -> Data {
        let target = "\(scratch)/restore-\(snapshot.prefix(8))-\(UInt32.random(in: 0...UInt32.max)).raw"
        try ok(["restore", "--repo", repo, snapshot, "--to", target])
        defer { try? FileManager.default.removeItem(atPath: target) }
        return try Data(contentsOf: URL(fileURLWithPath: target))
    }

    static func snapshotIDs(repo: String) throws -> [String] {
        let r = try ok(["snapshots", "--repo", repo, "--json"])
        let rows = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]] ?? []
        return rows.compactMap { $0["id"] as? String }
    }
}

/// A seeded disk image: random (incompressible, so stored raw) 64 KiB chunks, every
/// fourth chunk zero. A stored chunk's payload is then its bytes on the disk, which lets a
/// test find which disk range a damaged envelope held without any repository code.
func makeDisk(at path: String, chunks: Int, seed: UInt64) throws -> Data {
    var g = SeededGenerator(seed: seed)
    var bytes = [UInt8](repeating: 0, count: chunks * 65536)
    for i in 0..<chunks where i % 4 != 3 {
        bytes.replaceSubrange(i * 65536..<(i + 1) * 65536, with: g.bytes(65536))
    }
    let data = Data(bytes)
    try data.write(to: URL(fileURLWithPath: path))
    return data
}

/// Every pack file of a repository.
func packFiles(_ repo: String) -> [String] {
    let e = FileManager.default.enumerator(atPath: "\(repo)/packs")
    var out: [String] = []
    while let p = e?.nextObject() as? String {
        if p.hasSuffix(".pack") { out.append("\(repo)/packs/\(p)") }
    }
    return out.sorted()
}

func hex(_ bytes: some Collection<UInt8>) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

/// `tessera filter serve` as a child process.
final class FilterProcess {
    let process = Process()
    let control: String
    let socket: String
    let disk: String

    init(directory: String, disk: String, path: String) throws {
        self.disk = disk
        control = "\(directory)/c.sock"
        socket = "\(directory)/n.sock"
        process.executableURL = URL(fileURLWithPath: Tessera.binary)
        process.arguments = ["filter", "serve", "--disk", "\(disk)=\(path)", "--socket", socket,
                             "--control", control, "--state-dir", "\(directory)/state"]
        let log = FileHandle(forWritingAtPath: "/dev/null")
        process.standardOutput = log
        process.standardError = log
        try process.run()
        for _ in 0..<200 {
            if FileManager.default.fileExists(atPath: control) && FileManager.default.fileExists(atPath: socket) { return }
            if !process.isRunning { break }
            usleep(50_000)
        }
        stop()
        throw CommandError(description: "the filter did not start")
    }

    var uri: String { "nbd+unix:///\(disk)?socket=\(socket)" }

    func write(_ writes: [(offset: Int, length: Int, value: UInt8)]) throws {
        var args = ["-f", "raw"]
        for w in writes { args += ["-c", "write -P \(w.value) \(w.offset) \(w.length)"] }
        let r = try runCommand("qemu-io", args + [uri])
        guard r.succeeded, !r.stderr.contains("error") else { throw CommandError(description: "qemu-io failed: \(r.stderr)") }
    }

    func stop() {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
    }

    deinit { stop() }
}
