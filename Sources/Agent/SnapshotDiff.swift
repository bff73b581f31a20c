import BackupRepository
import BlockIO

/// `tessera diff`: the byte ranges whose content differs between two snapshots.
public enum SnapshotDiff {
    public static func ranges(_ repository: Repository, _ a: String, _ b: String, disk: String?) throws -> (String, String, [ByteRange]) {
        let ra = try RepositoryAccess.resolve(repository, a, disk: disk)
        let rb = try RepositoryAccess.resolve(repository, b, disk: disk)
        let ma = try RepositoryAccess.readMap(repository, ra)
        let mb = try RepositoryAccess.readMap(repository, rb)
        guard ra.chunkSize == rb.chunkSize else {
            throw AgentError(.invalidArgument, "snapshots \(ra.id) and \(rb.id) use different chunk sizes; compare restored images instead")
        }
        let chunk = UInt64(ra.chunkSize)
        var out: [ByteRange] = []
        let common = min(ma.count, mb.count)
        for i in 0..<common where ma[i] != mb[i] {
            let start = UInt64(i) * chunk
            out.append(ByteRange(offset: start, length: min(chunk, min(ra.diskSize, rb.diskSize) - start)))
        }
        let small = min(ra.diskSize, rb.diskSize), large = max(ra.diskSize, rb.diskSize)
        if large > small { out.append(ByteRange(offset: small, length: large - small)) }
        return (ra.id, rb.id, out.coalesced())
    }
}
