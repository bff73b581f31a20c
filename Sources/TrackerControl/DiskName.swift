/// The rule for disk names (and VM names in the nightly run's config): they become
/// directory names in the filter's state, NBD export names and repository fields, so they
/// stay plain.
public enum DiskName {
    /// Why `name` is not allowed, or nil when it is.
    public static func problem(_ name: String) -> String? {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
        guard !name.isEmpty, name.count <= 64, name.allSatisfy({ allowed.contains($0) }), !name.hasPrefix(".") else {
            return "use 1-64 letters, digits, '-', '_' or '.', not starting with '.'"
        }
        return nil
    }
}
