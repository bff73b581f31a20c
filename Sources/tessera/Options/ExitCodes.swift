import Agent
import ArgumentParser
import BackupRepository
import Foundation
import TrackerControl
import Workers

/// Every exit code the command line returns, in one place (the README has the same table).
/// restic's numbering where it has one; signals as a shell reports them (128 + N).
enum ExitCodes {
    static let ok: Int32 = 0
    /// The command failed, or found damage (check, restore --keep-going, repair snapshots).
    static let failed: Int32 = 1
    /// The filter's control endpoint cannot be reached (is `tessera filter serve` running?).
    static let unreachable: Int32 = 2
    /// No repository at the path (or not one of ours).
    static let noRepository: Int32 = 10
    /// Another process holds a conflicting lock on the repository.
    static let locked: Int32 = 11
    /// The command line itself is wrong (argument-parser's EX_USAGE).
    static let usage: Int32 = 64
    /// Cancelled by SIGINT (Ctrl-C) or SIGTERM, after cleaning up.
    static let interrupted: Int32 = 130
    static let terminated: Int32 = 143

    /// The exit code for a library error.
    static func code(for error: any Error) -> Int32 {
        switch error {
        case let e as AgentError:
            switch e.code {
            case .noRepository: return noRepository
            case .locked: return locked
            default: return failed
            }
        case let e as RepositoryError:
            switch e.code {
            case .notARepository: return noRepository
            case .locked: return locked
            default: return failed
            }
        case let e as FilterError:
            return e.code == .unreachable ? unreachable : failed
        case let c as Cancelled:
            return c.reason == "SIGTERM" ? terminated : interrupted
        default:
            return failed
        }
    }
}

/// The one funnel for errors: one line on stderr, `tessera: error: MESSAGE`, a JSON error line
/// with `--json`, and the documented exit code. `cancelled` says what a cancellation left.
func reportingErrors<T>(json: Bool = false, cancelled: ((Cancelled) -> String)? = nil, _ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let e as ExitCode {
        throw e
    } catch let c as Cancelled {
        fail(cancelled?(c) ?? "cancelled by \(c.reason)", code: ExitCodes.code(for: c), json: json)
    } catch {
        fail(message(of: error), code: ExitCodes.code(for: error), json: json)
    }
}

/// What an error says to the person who ran the command.
func message(of error: any Error) -> String {
    switch error {
    case let e as AgentError: e.message
    case let e as RepositoryError: e.message
    case let e as FilterError: e.message
    default: "\(error)"
    }
}

struct ErrorLine: Encodable {
    var type = "error"
    var message: String
    var exitCode: Int32
    enum CodingKeys: String, CodingKey { case type, message, exitCode = "exit_code" }
}

func fail(_ message: String, code: Int32, json: Bool) -> Never {
    if json { Output.json(ErrorLine(message: message, exitCode: code)) }
    Output.error(message)
    Foundation.exit(code)
}
