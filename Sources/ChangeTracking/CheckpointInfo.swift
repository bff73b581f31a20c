import TrackerControl

/// An open checkpoint: the change ID it closed and the committed change ID its
/// `.checkpoint` view is relative to.
public struct CheckpointInfo: Sendable, Codable, Hashable {
    /// The change ID a backup taken from this checkpoint records.
    public var changeID: ChangeID
    /// The last committed checkpoint of the same generation when this one was taken (nil when
    /// none is answerable): the lower bound of the `.checkpoint` view.
    public var previous: ChangeID?
    /// When the checkpoint was taken, seconds since 1970 (UTC).
    public var createdAt: Int64

    public init(changeID: ChangeID, previous: ChangeID?, createdAt: Int64) {
        self.changeID = changeID
        self.previous = previous
        self.createdAt = createdAt
    }
}
