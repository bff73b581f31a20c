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

extension RepositoryOptions {
    /// Opens the repository, holds a lock of `kind` while `body` runs, releases it.
    func withRepository<T>(lock kind: LockKind, _ body: (Repository) throws -> T) throws -> T {
        let repository = try RepositoryAccess.open(path)
        let lock = try RepositoryAccess.lock(repository, kind)
        defer { lock.release() }
        return try body(repository)
    }
}
