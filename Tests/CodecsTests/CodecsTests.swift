import Codecs
import Testing
import TestSupport

struct XXH3Tests {
    @Test func knownVectorsForEmptyInput() {
        // Reference values from xxHash's own test vectors (XXH3 with seed 0).
        #expect(XXH3.hash64([UInt8]()) == 0x2D06_8005_38D3_94C2)
        #expect(XXH3.hash128([UInt8]()).hex == "99aa06d3014798d86001c324468d497f")
    }

    @Test func hexRoundTrip() throws {
        var rng = SeededGenerator(seed: 7)
        let digest = XXH3.hash128(rng.bytes(100))
        #expect(Digest128(hex: digest.hex) == digest)
        #expect(Digest128(bigEndianBytes: digest.bigEndianBytes) == digest)
        #expect(Digest128(hex: "xyz") == nil)
    }

    @Test func streamingEqualsOneShot() {
        var rng = SeededGenerator(seed: 9)
        let data = rng.bytes(10_000)
        var stream = XXH3Stream64()
        stream.update(Array(data[0..<3333]))
        stream.update(Array(data[3333...]))
        #expect(stream.finalize() == XXH3.hash64(data))
    }

    @Test func streaming128EqualsOneShot() {
        var rng = SeededGenerator(seed: 10)
        let data = rng.bytes(100_000)
        var stream = XXH3Stream128()
        for cut in stride(from: 0, to: data.count, by: 7_777) {
            data[cut..<min(cut + 7_777, data.count)].withUnsafeBytes { stream.update($0) }
        }
        #expect(stream.finalize() == XXH3.hash128(data))
    }
}

struct ZstdTests {
    @Test(arguments: [0, 1, 4096, 65536, 1 << 20])
    func roundTrip(size: Int) throws {
        var rng = SeededGenerator(seed: UInt64(size))
        var data = rng.bytes(size)
        for i in stride(from: 0, to: size, by: 3) { data[i] = 0 } // partly compressible
        let compressor = ZstdCompressor(level: 3)
        let packed = try data.withUnsafeBytes { try compressor.compress($0) }
        var out = [UInt8](repeating: 0, count: size)
        let n = try packed.withUnsafeBytes { src in
            try out.withUnsafeMutableBytes { try ZstdDecompressor().decompress(src, into: $0) }
        }
        #expect(n == size)
        #expect(out == data)
    }

    @Test func garbageIsAnErrorNotACrash() {
        let garbage: [UInt8] = [1, 2, 3, 4, 5, 6, 7, 8]
        var out = [UInt8](repeating: 0, count: 64)
        #expect(throws: ZstdError.self) {
            try garbage.withUnsafeBytes { src in
                try out.withUnsafeMutableBytes { try ZstdDecompressor().decompress(src, into: $0) }
            }
        }
    }

    @Test func frameLargerThanDestinationIsRefused() throws {
        let data = [UInt8](repeating: 7, count: 10_000)
        let packed = try data.withUnsafeBytes { try ZstdCompressor(level: 1).compress($0) }
        var small = [UInt8](repeating: 0, count: 100)
        #expect(throws: ZstdError.self) {
            try packed.withUnsafeBytes { src in
                try small.withUnsafeMutableBytes { try ZstdDecompressor().decompress(src, into: $0) }
            }
        }
    }
}
