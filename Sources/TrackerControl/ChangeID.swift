#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A point in a disk's change history: the tracker's generation UUID plus a sequence number,
/// printed and parsed as `UUID/SEQ` (VMware's `changeId` shape),
/// e.g. `3F2504E0-4F89-41D3-9A0C-0305E82C3301/7`.
///
/// A change ID is only meaningful to the tracker of the same generation: any event that may
/// have lost tracking (crash without log, corruption, resize, reset) starts a new generation,
/// so old change IDs fail loudly instead of answering "nothing changed".
public struct ChangeID: Hashable, Sendable, Codable, LosslessStringConvertible {
    public var generation: UUID
    public var sequence: UInt64

    public init(generation: UUID, sequence: UInt64) {
        self.generation = generation
        self.sequence = sequence
    }

    /// Parses `UUID/SEQ`; nil for anything else (no spaces, no sign, no extra parts).
    public init?(_ description: String) {
        guard let parsed = try? ChangeID(parsing: description) else { return nil }
        self = parsed
    }

    /// Parses `UUID/SEQ`, throwing `FilterError.invalidArgument` that says what is wrong.
    public init(parsing text: String) throws {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2 else {
            throw FilterError(.invalidArgument, "change ID '\(text)' is malformed: expected UUID/SEQ, e.g. 3F2504E0-4F89-41D3-9A0C-0305E82C3301/7")
        }
        guard parts[0].utf8.count == 36, let uuid = UUID(uuidString: String(parts[0])) else {
            throw FilterError(.invalidArgument, "change ID '\(text)' is malformed: '\(parts[0])' is not a UUID (36 characters, 8-4-4-4-12 hex digits)")
        }
        let digits = parts[1]
        guard !digits.isEmpty, digits.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let sequence = UInt64(digits) else {
            throw FilterError(.invalidArgument, "change ID '\(text)' is malformed: '\(digits)' is not a decimal sequence number (0...\(UInt64.max))")
        }
        self.init(generation: uuid, sequence: sequence)
    }

    /// `UUID/SEQ` with the UUID in upper case.
    public var description: String { "\(generation.uuidString)/\(sequence)" }

    /// Encodes as the `UUID/SEQ` string, so JSON reports and snapshot records stay readable.
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        do {
            self = try ChangeID(parsing: text)
        } catch {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: "\(error)")
        }
    }
}
