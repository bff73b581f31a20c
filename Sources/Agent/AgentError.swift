/// An error from a backup or a restore: what failed and what to do.
public struct AgentError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        case invalidArgument = "invalid-argument"
        case source = "source"
        case repository = "repository"
        case noRepository = "no-repository"
        case locked = "locked"
        case filter = "filter"
        case damaged = "damaged"
        case target = "target"
        case cancelled = "cancelled"
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}
