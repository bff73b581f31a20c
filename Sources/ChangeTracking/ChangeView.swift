/// The two live views the filter exports as NBD `qemu:dirty-bitmap:` contexts.
public enum ChangeView: Sendable, Hashable {
    /// Blocks changed since the last checkpoint: with a checkpoint open, the marks made while
    /// it is open; without one, the marks of the current epoch.
    case active
    /// With a checkpoint open: blocks changed after the last committed checkpoint up to the
    /// open checkpoint (exact, frozen). Without a committed predecessor in this generation
    /// the whole disk is reported changed.
    case checkpoint
}
