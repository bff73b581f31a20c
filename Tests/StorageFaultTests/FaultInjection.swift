import Foundation
import Testing
import TestSupport

/// Runs the real `tessera` binary with `libTesseraFaults.so` preloaded (Tools/faults): one
/// chosen file-system call under one directory fails, or comes back short.
struct FaultInjection {
    /// A kind of call, and the errors it is made to fail with.
    struct Kind: Sendable, CustomStringConvertible {
        let name: String
        let errors: [String]
        var description: String { name }

        static let create = Kind(name: "create", errors: ["ENOSPC"])
        static let write = Kind(name: "write", errors: ["ENOSPC", "EIO"])
        static let short = Kind(name: "short", errors: [""])
        static let sync = Kind(name: "sync", errors: ["EIO"])
        static let rename = Kind(name: "rename", errors: ["ENOSPC"])
        static let read = Kind(name: "read", errors: ["EIO"])
        static let all = [create, write, short, sync, rename, read]
    }

    struct Fault: CustomStringConvertible {
        let kind: Kind
        let step: Int
        let errno: String
        var sticky = false
        var spec: String { errno.isEmpty ? "\(kind.name):\(step)" : "\(kind.name):\(step):\(errno)" }
        var description: String { spec + (sticky ? " (sticky)" : "") }
    }

    static var library: String { BuiltProducts.executable("libTesseraFaults.so") }

    /// The directory whose files count (and fail).
    let path: String
    /// Where the library writes what fired and how many calls of each kind it saw.
    let report: String

    /// The environment for a child process under `fault` (nil: count only).
    func environment(_ fault: Fault?, arm: String? = nil) -> [String: String] {
        var env = ["LD_PRELOAD": Self.library, "TESSERA_FAULT_PATH": path, "TESSERA_FAULT_REPORT": report]
        if let fault {
            env["TESSERA_FAULT"] = fault.spec
            if fault.sticky { env["TESSERA_FAULT_STICKY"] = "1" }
        }
        if let arm { env["TESSERA_FAULT_ARM"] = arm }
        return env
    }

    /// `tessera ARGS` under `fault`.
    func run(_ arguments: [String], fault: Fault?) throws -> CommandResult {
        try? FileManager.default.removeItem(atPath: report)
        return try runCommand(Tessera.binary, arguments, environment: environment(fault), timeout: 300)
    }

    /// Calls of each kind a fault-free run of `arguments` makes under `path` (the steps to try).
    func countSteps(_ arguments: [String]) throws -> [String: Int] {
        let r = try run(arguments, fault: nil)
        guard r.succeeded else { throw CommandError(description: "the counting run failed: \(r.stderr)") }
        return try counts()
    }

    /// The counts of the last run (summed over the processes that reported).
    func counts() throws -> [String: Int] {
        var total: [String: Int] = [:]
        for line in try String(contentsOfFile: report, encoding: .utf8).split(separator: "\n") where line.hasPrefix("count ") {
            for field in line.split(separator: " ").dropFirst() {
                let kv = field.split(separator: "=")
                if kv.count == 2, kv[0] != "pid", let n = Int(kv[1]) { total[String(kv[0]), default: 0] += n }
            }
        }
        return total
    }

    /// What fired in the last run ("fired write 7 /path"), or nil if the step was never reached.
    func fired() -> String? {
        guard let text = try? String(contentsOfFile: report, encoding: .utf8) else { return nil }
        return text.split(separator: "\n").first { $0.hasPrefix("fired ") }.map(String.init)
    }

    /// The words a failed command must use for `errno` (strerror's text, any case).
    static func message(for errno: String) -> String {
        switch errno {
        case "ENOSPC": "no space left on device"
        default: "input/output error"
        }
    }

    /// TESSERA_LONG=1 (`Tools/test --long`): every step with every error of its kind.
    static var exhaustive: Bool { ProcessInfo.processInfo.environment["TESSERA_LONG"] == "1" }

    /// The faults to try for `counts`. Exhaustive: each kind at every step it has, with each
    /// of its errors. Otherwise (the default suite, kept short): every step of a kind with at
    /// most `sample` steps, else `sample` steps spread evenly from the first to the last, the
    /// errors taking turns.
    static func plan(_ counts: [String: Int], kinds: [Kind] = Kind.all, exhaustive: Bool = exhaustive, sample: Int = 12) -> [Fault] {
        kinds.flatMap { kind -> [Fault] in
            let n = max(1, counts[kind.name] ?? 0)
            if exhaustive {
                return (1...n).flatMap { step in kind.errors.map { Fault(kind: kind, step: step, errno: $0) } }
            }
            let steps = n <= sample ? Array(1...n) : Array(Set((0..<sample).map { 1 + $0 * (n - 1) / (sample - 1) })).sorted()
            return steps.map { Fault(kind: kind, step: $0, errno: kind.errors[$0 % kind.errors.count]) }
        }
    }

    /// Asserts that a failed command failed the way a user can act on: an ordinary exit (no
    /// crash, no trap), and an error that says what the system call reported.
    static func expectCleanFailure(_ r: CommandResult, _ fault: Fault, fired: String?, sourceLocation: SourceLocation = #_sourceLocation) {
        let context = "\(fault) fired as \(fired ?? "nothing"): exit \(r.status)\nstderr: \(r.stderr)"
        #expect([1, 3].contains(r.status), "a fault must end the command with an error, not a crash: \(context)", sourceLocation: sourceLocation)
        #expect(!r.stderr.contains("Fatal error") && !r.stderr.contains("Crash"), "\(context)", sourceLocation: sourceLocation)
        // Errors go to stderr; a check's findings (a file it could not read) to stdout.
        #expect((r.stderr + r.stdout).lowercased().contains(message(for: fault.errno)), "the error must say what failed: \(context)",
                sourceLocation: sourceLocation)
    }

    /// Files a failed command left behind that no command will clean up (temp files).
    static func leftovers(in directory: String) -> [String] {
        let files = (FileManager.default.enumerator(atPath: directory)?.allObjects as? [String]) ?? []
        return files.filter { $0.contains(".tmp") }.sorted()
    }
}
