import Foundation
import Logging

/// How a command says what happens while it runs, through swift-log: the libraries log to a
/// `Logger` they are given, and this handler prints what the operator should see — on
/// stderr as `tessera: MESSAGE`, or with `--json` as `{"type":"note",...}` lines on stdout.
/// Text output leaves out `.info` (a full read's reason is in the summary anyway).
struct CommandLogHandler: LogHandler {
    let json: Bool
    var logLevel: Logger.Level
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        if json {
            Output.json(["type": "note", "level": "\(event.level)", "message": "\(event.message)"])
        } else {
            Output.note("\(event.message)")
        }
    }

    static func logger(_ label: String, json: Bool) -> Logger {
        Logger(label: label) { _ in CommandLogHandler(json: json, logLevel: json ? .info : .notice) }
    }
}
