import Agent
import ArgumentParser
import BackupRepository
import Foundation

/// `--repo PATH`, or the `TESSERA_REPOSITORY` environment variable.
struct RepositoryOptions: ParsableArguments {
    @Option(name: [.customLong("repo"), .customShort("r")],
            help: "The repository directory (default: $TESSERA_REPOSITORY).")
    var repo: String?

    func validate() throws {
        if repo == nil && ProcessInfo.processInfo.environment["TESSERA_REPOSITORY"] == nil {
            throw ValidationError("say which repository: --repo PATH or TESSERA_REPOSITORY=PATH")
        }
    }

    var path: String { repo ?? ProcessInfo.processInfo.environment["TESSERA_REPOSITORY"] ?? "" }
}

/// `--no-lock`, for the commands that only read (restore, serve, diff, check).
struct ReadLockOptions: ParsableArguments {
    @Flag(help: ArgumentHelp("Take no lock and ignore other processes' locks.", discussion: """
        For a repository that cannot be written (without --no-lock a read-only repository is \
        read without a lock too, with a warning). Nothing is written into the repository. At \
        your own risk: a prune running meanwhile may delete what this command reads.
        """)) var noLock = false

    var locking: ReadLocking { noLock ? .none : .shared }
}

/// Exit codes a scheduler can act on (restic's numbering where it has one).
enum ExitCodes {
    static let failed: Int32 = 1
    static let noRepository: Int32 = 10
    static let locked: Int32 = 11
}

/// Runs a command body, printing library errors as one clear line and mapping them to
/// the documented exit codes.
func reportingErrors<T>(json: Bool = false, _ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let e as AgentError {
        fail(e.message, code: e.code == .noRepository ? ExitCodes.noRepository : e.code == .locked ? ExitCodes.locked : ExitCodes.failed, json: json)
    } catch let e as RepositoryError {
        let code: Int32 = switch e.code {
        case .notARepository: ExitCodes.noRepository
        case .locked: ExitCodes.locked
        default: ExitCodes.failed
        }
        fail(e.message, code: code, json: json)
    }
}

func fail(_ message: String, code: Int32, json: Bool) -> Never {
    if json {
        Output.json(["type": "error", "message": message, "exit_code": "\(code)"])
    }
    Output.error(message)
    Foundation.exit(code)
}
