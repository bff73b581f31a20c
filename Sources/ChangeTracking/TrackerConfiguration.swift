/// How a tracker lays out its state. Changing the granularity of an existing state directory
/// starts a new generation; changing the activity log shape only recreates the log.
public struct TrackerConfiguration: Sendable, Hashable {
    /// Bytes per block of the dirty map: a power of two from 4 KiB to 16 MiB.
    public var granularity: UInt64
    /// Bytes per activity log extent: a power of two, at least the granularity.
    public var activityLogExtentSize: UInt64
    /// Number of record slots in the activity log ring (at least 4).
    public var activityLogSlots: Int

    public static let minimumGranularity: UInt64 = 4096
    public static let maximumGranularity: UInt64 = 16 << 20
    /// The largest disk a tracker accepts (16 TiB).
    public static let maximumDiskSize: UInt64 = 16 << 40

    public init(granularity: UInt64 = 65536, activityLogExtentSize: UInt64 = 4 << 20, activityLogSlots: Int = 1024) {
        self.granularity = granularity
        self.activityLogExtentSize = activityLogExtentSize
        self.activityLogSlots = activityLogSlots
    }

    /// Throws `TrackerError.invalidArgument` naming the bad field and the allowed values.
    public func validate() throws {
        guard granularity != 0, granularity & (granularity - 1) == 0,
              granularity >= Self.minimumGranularity, granularity <= Self.maximumGranularity else {
            throw TrackerError(.invalidArgument, "granularity \(granularity) is invalid: use a power of two from \(Self.minimumGranularity) (4 KiB) to \(Self.maximumGranularity) (16 MiB); 65536 is the default")
        }
        guard activityLogExtentSize != 0, activityLogExtentSize & (activityLogExtentSize - 1) == 0,
              activityLogExtentSize >= granularity, activityLogExtentSize <= 1 << 40 else {
            throw TrackerError(.invalidArgument, "activity log extent size \(activityLogExtentSize) is invalid: use a power of two at least the granularity (\(granularity)) and at most 1 TiB; 4 MiB is the default")
        }
        guard activityLogSlots >= 4, activityLogSlots <= 1 << 20 else {
            throw TrackerError(.invalidArgument, "activity log slot count \(activityLogSlots) is invalid: use 4...1048576; 1024 is the default")
        }
    }
}
