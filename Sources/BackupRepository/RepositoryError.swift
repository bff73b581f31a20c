/// The one error type of the repository module.
///
/// `code` is what callers match on (the CLI maps `.notARepository` to exit code 10 and
/// `.locked` to 11); `message` says what went wrong and what to do; `object` names the
/// repository object involved (`pack 3fa0…`, `snapshot 9c1e…`, `config`) when there is one.
public struct RepositoryError: Error, CustomStringConvertible, Sendable {
    public enum Code: Sendable, Equatable {
        /// The directory has no repository config, or the config is not ours.
        case notARepository
        /// The repository was written by a newer format version.
        case newerVersion
        /// The config lists a mandatory feature this build does not know.
        case unknownFeature
        /// Another process holds a conflicting lock.
        case locked
        /// An object failed a checksum, a magic, a length or a hash check.
        case damaged
        /// An object (or a snapshot matching a prefix) does not exist.
        case notFound
        /// A snapshot prefix matches more than one snapshot.
        case ambiguous
        /// The target already exists (initialize on an existing repository).
        case alreadyExists
        /// The caller passed something unusable (a chunk whose ID does not match, a bad chunk size).
        case invalidArgument
        /// The writer was abandoned or failed earlier; start a new writer.
        case writerClosed
        /// The operating system refused an operation (permissions, no space, I/O error).
        case io
    }

    public var code: Code
    public var message: String
    /// The object concerned, e.g. `pack 3fa0…`, `chunk 77c1…`, `config`.
    public var object: String?
    /// The underlying error, if any (a `BlockIOError`, a `ZstdError`, a decoding error).
    public var cause: (any Error & Sendable)?

    public init(_ code: Code, _ message: String, object: String? = nil, cause: (any Error & Sendable)? = nil) {
        self.code = code
        self.message = message
        self.object = object
        self.cause = cause
    }

    public var description: String { message }

    static func damaged(_ object: String, _ what: String) -> RepositoryError {
        RepositoryError(.damaged,
                        "\(object) is damaged: \(what); run `tessera check --read-data` to see what it affects and `tessera repair` to set it aside",
                        object: object)
    }
}
