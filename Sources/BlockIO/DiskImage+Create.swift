import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

extension DiskImage {
    /// qemu-img and VMware cut twoGbMaxExtentFlat disks into extents of exactly 2 GiB.
    public static let twoGbExtentSize: UInt64 = 2 << 30

    /// Creates a sparse raw disk of `size` bytes (all holes) and opens it writable.
    /// - Throws: `.invalidArgument` if `path` already exists (it is never overwritten).
    public static func createRaw(path: String, size: UInt64) throws -> DiskImage {
        guard size <= UInt64(Int64.max) else {
            throw BlockIOError(.invalidArgument, "\(path): a disk of \(size) bytes is larger than a file can be")
        }
        do {
            let file = try BlockFile(path: path, mode: .createNew)
            try file.truncate(to: size)
            try file.sync()
            try DurableFile.syncDirectory(DurableFile.parentDirectory(of: path))
        } catch let error as BlockIOError where error.errno == .fileExists {
            throw error
        } catch {
            unlink(path)
            throw error
        }
        return try openRaw(path: path, writable: true)
    }

    /// Creates a VMDK descriptor and its sparse flat extent file(s), named like qemu-img names
    /// them (`NAME-flat.vmdk`, or `NAME-f001.vmdk`... of 2 GiB each for twoGbMaxExtentFlat),
    /// and opens the disk writable. The extents are made durable before the descriptor is
    /// written (atomically), so a crash never leaves a descriptor naming missing extents.
    /// - Parameters:
    ///   - size: a positive multiple of 512 bytes (VMDK sizes are in sectors).
    /// - Throws: `.invalidArgument` for a bad size or when any of the files already exists.
    public static func createVMDK(descriptorPath: String, size: UInt64,
                                  subformat: VMDKSubformat = .monolithicFlat) throws -> DiskImage {
        guard size > 0, size % VMDKDescriptor.sectorSize == 0, size <= UInt64(Int64.max) else {
            throw BlockIOError(.invalidArgument, "\(descriptorPath): a VMDK disk must be a positive multiple of 512 bytes; \(size) is not (round it up to the next 512)")
        }
        guard !DurableFile.exists(descriptorPath) else {
            throw BlockIOError(.invalidArgument, "\(descriptorPath): already exists; remove it or choose another path")
        }
        let directory = DurableFile.parentDirectory(of: descriptorPath)
        let fileName = descriptorPath.split(separator: "/").last.map(String.init) ?? descriptorPath
        let base = fileName.hasSuffix(".vmdk") ? String(fileName.dropLast(5)) : fileName

        var layout: [(name: String, bytes: UInt64)] = []
        switch subformat {
        case .monolithicFlat, .vmfs:
            layout = [("\(base)-flat.vmdk", size)]
        case .twoGbMaxExtentFlat:
            var left = size
            while left > 0 {
                let bytes = min(left, twoGbExtentSize)
                layout.append(("\(base)-f\(threeDigits(layout.count + 1)).vmdk", bytes))
                left -= bytes
            }
        }

        var created: [String] = []
        do {
            for (name, bytes) in layout {
                let extentPath = "\(directory)/\(name)"
                let file = try BlockFile(path: extentPath, mode: .createNew)
                created.append(extentPath)
                try file.truncate(to: bytes)
                try file.sync()
            }
            let kind: VMDKDescriptor.Extent.Kind = subformat == .vmfs ? .vmfs : .flat
            let descriptor = VMDKDescriptor(
                contentID: UInt32.random(in: 0..<VMDKDescriptor.noParent), subformat: subformat,
                extents: layout.map { VMDKDescriptor.Extent(access: .readWrite, sectors: $0.bytes / VMDKDescriptor.sectorSize,
                                                            kind: kind, fileName: $0.name) },
                diskDatabase: diskDatabase(size: size))
            try DurableFile.write(Array(descriptor.rendered().utf8), to: descriptorPath)
            created.append(descriptorPath)
        } catch {
            for path in created { unlink(path) }
            throw error
        }
        return try open(path: descriptorPath, writable: true)
    }

    /// The disk database qemu-img writes: IDE geometry with 16 heads and 63 sectors per track.
    private static func diskDatabase(size: UInt64) -> [String: String] {
        // IDE geometry caps cylinders at 16383; readers use the extents, not the geometry, for the size.
        let cylinders = min(size / (16 * 63 * VMDKDescriptor.sectorSize), 16383)
        return [
            "ddb.virtualHWVersion": "4",
            "ddb.geometry.cylinders": "\(cylinders)",
            "ddb.geometry.heads": "16",
            "ddb.geometry.sectors": "63",
            "ddb.adapterType": "ide",
        ]
    }

    private static func threeDigits(_ n: Int) -> String {
        let s = String(n)
        return s.count >= 3 ? s : String(repeating: "0", count: 3 - s.count) + s
    }
}
