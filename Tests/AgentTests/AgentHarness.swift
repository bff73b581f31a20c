import Foundation
import Testing
import TestSupport

/// Runs the built `tessera` binary and decodes `--json` summaries.
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

    /// The last JSON line of a `--json` run, as a dictionary.
    static func summary(_ r: CommandResult) throws -> [String: Any] {
        guard let last = r.stdout.split(separator: "\n").last,
              let object = try JSONSerialization.jsonObject(with: Data(last.utf8)) as? [String: Any] else {
            throw CommandError(description: "no JSON summary in: \(r.stdout)")
        }
        return object
    }
}

/// An in-memory copy of a disk, updated alongside every write the test makes: the oracle.
struct DiskModel {
    var bytes: [UInt8]
    var blockSize: Int = 65536

    init(size: Int) { bytes = [UInt8](repeating: 0, count: size) }
    init(file: String) throws { bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: file))) }

    mutating func fill(offset: Int, length: Int, with value: UInt8) {
        for i in offset..<(offset + length) { bytes[i] = value }
    }

    /// The 64 KiB blocks a set of writes touches (the tracker's and the chunk grid).
    static func blocks(of writes: [(Int, Int)], blockSize: Int = 65536) -> Set<Int> {
        var out = Set<Int>()
        for (offset, length) in writes where length > 0 {
            for b in (offset / blockSize)...((offset + length - 1) / blockSize) { out.insert(b) }
        }
        return out
    }
}

/// `tessera filter serve` as a child process.
final class FilterProcess {
    let process = Process()
    let directory: String
    let control: String
    let socket: String
    let disk: String

    init(directory: String, disk: String, path: String) throws {
        self.directory = directory
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

    /// Writes through the filter with qemu-io (the VM), one process for many writes.
    func write(_ writes: [(offset: Int, length: Int, value: UInt8)]) throws {
        var args = ["-f", "raw"]
        for w in writes { args += ["-c", "write -P \(w.value) \(w.offset) \(w.length)"] }
        let r = try runCommand("qemu-io", args + [uri])
        guard r.succeeded, !r.stderr.contains("error") else {
            throw CommandError(description: "qemu-io failed: \(r.stderr)")
        }
    }

    func stop() {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
    }

    deinit { stop() }
}
