import Foundation
import Logging

/// How a command says what happens while it runs, through swift-log: the libraries log to a
/// `Logger` they are given, and this handler prints what the operator should see — on
/// stderr as `tessera: MESSAGE key=value ...`, or with `--json` as `{"type":"note",...}` lines
/// on stdout. Text output leaves out `.info` unless asked (a full read's reason is in the
/// summary anyway).
///
/// Under systemd (`JOURNAL_STREAM` set) every line starts with its syslog priority (`<3>`
/// for an error, `<5>` for a notice), which journald strips and keeps as the entry's
/// priority; the `event=` key names the kind of event, like journald's `MESSAGE_ID`, so
/// `journalctl -u tessera-run | grep event=vm-failed` finds every failed VM.
struct CommandLogHandler: LogHandler {
    let json: Bool
    var logLevel: Logger.Level
    var metadata: Logger.Metadata = [:]
    private let journal = ProcessInfo.processInfo.environment["JOURNAL_STREAM"] != nil

    init(json: Bool, logLevel: Logger.Level) {
        self.json = json
        self.logLevel = logLevel
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let all = metadata.merging(event.metadata ?? [:]) { $1 }
        if json {
            var line = ["type": "note", "level": "\(event.level)", "message": "\(event.message)"]
            for (key, value) in all where line[key] == nil { line[key] = "\(value)" }
            Output.json(line)
            return
        }
        // The event first, then the rest in a stable order: lines that grep and diff well.
        let pairs = all.sorted { ($0.key == "event" ? "" : $0.key) < ($1.key == "event" ? "" : $1.key) }
            .map { "\($0.key)=\(Self.quoted("\($0.value)"))" }
        let text = "\(event.message)" + (pairs.isEmpty ? "" : " " + pairs.joined(separator: " "))
        if journal {
            FileHandle.standardError.write(Data("<\(Self.priority(event.level))>tessera: \(text)\n".utf8))
        } else {
            Output.note(text)
        }
    }

    /// syslog(3) priorities.
    static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    static func quoted(_ value: String) -> String {
        value.isEmpty || value.contains(where: { $0 == " " || $0 == "\"" || $0 == "=" })
            ? "\"" + value.replacingOccurrences(of: "\"", with: "\\\"") + "\"" : value
    }

    static func logger(_ label: String, json: Bool, level: Logger.Level? = nil) -> Logger {
        Logger(label: label) { _ in CommandLogHandler(json: json, logLevel: level ?? (json ? .info : .notice)) }
    }
}
