/// A mistake in the nightly run's config: where it is and what to write instead.
public struct ConfigError: Error, CustomStringConvertible, Sendable {
    public var file: String
    /// 1-based; nil when the mistake has no line (a missing key of the whole file).
    public var line: Int?
    /// The key path, e.g. `vm[1].disk[0].path`.
    public var key: String?
    public var message: String

    public init(file: String, line: Int?, key: String?, message: String) {
        self.file = file
        self.line = line
        self.key = key
        self.message = message
    }

    /// `FILE:LINE: KEY: MESSAGE`, as compilers say it, so editors jump to the line.
    public var description: String {
        "\(file)\(line.map { ":\($0)" } ?? ""): \(key.map { "\($0): " } ?? "")\(message)"
    }
}
