import Agent
import ArgumentParser
import BackupRepository
import Foundation
import Logging

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

    /// The same for a command that only reads: a shared lock, or none (`--no-lock`, or a
    /// read-only repository, with a warning to `logger`).
    func withRepository<T>(reading locking: ReadLocking, logger: Logger, _ body: (Repository) throws -> T) throws -> T {
        let repository = try RepositoryAccess.open(path)
        let lock = try RepositoryAccess.lockForReading(repository, locking, logger: logger)
        defer { lock.release() }
        return try body(repository)
    }
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
