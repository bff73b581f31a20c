import Codecs
import Foundation

/// Small JSON objects (config, snapshot records) in a checksummed binary envelope.
///
/// ```
/// magic 4 ("TCFG" / "TSNP"), u32 version=1, u64 JSON length, u64 XXH3-64 of the JSON, JSON bytes
/// ```
enum JSONEnvelope {
    static let version: UInt32 = 1
    static let headerSize = 24

    static func encoder() -> JSONEncoder {
        let e = JSONEncoder()
        // Sorted keys: the same record always produces the same bytes (frozen fixtures).
        e.outputFormatting = [.sortedKeys, .prettyPrinted]
        e.dateEncodingStrategy = .custom { date, encoder in
            var c = encoder.singleValueContainer()
            try c.encode(date.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true)))
        }
        return e
    }

    static func decoder() -> JSONDecoder {
        let d = JSONDecoder()
        d.dateDecodingStrategy = .custom { decoder in
            let c = try decoder.singleValueContainer()
            let s = try c.decode(String.self)
            if let date = try? Date(s, strategy: Date.ISO8601FormatStyle(includingFractionalSeconds: true)) { return date }
            if let date = try? Date(s, strategy: Date.ISO8601FormatStyle()) { return date }
            throw DecodingError.dataCorruptedError(in: c, debugDescription: "not an ISO 8601 time: \(s)")
        }
        return d
    }

    static func encode<T: Encodable>(_ value: T, magic: StaticString) throws -> [UInt8] {
        let json = Array(try encoder().encode(value))
        var w = ByteWriter(capacity: headerSize + json.count)
        w.ascii(magic)
        w.u32(version)
        w.u64(UInt64(json.count))
        w.u64(XXH3.hash64(json))
        w.append(json)
        return w.bytes
    }

    enum Failure: Error { case wrongMagic, newerVersion(UInt32), damaged(String) }

    static func decode<T: Decodable>(_ type: T.Type, _ bytes: [UInt8], magic: StaticString) throws(Failure) -> T {
        var r = ByteReader(bytes)
        let json: [UInt8]
        do {
            guard try r.expect(magic) else { throw Failure.wrongMagic }
            let v = try r.u32()
            guard v == version else { throw Failure.newerVersion(v) }
            let length = try r.u64()
            let sum = try r.u64()
            guard length == UInt64(r.remaining) else { throw Failure.damaged("length \(r.remaining) does not match the header's \(length) (truncated?)") }
            json = Array(try r.bytes(Int(length)))
            guard XXH3.hash64(json) == sum else { throw Failure.damaged("checksum mismatch") }
        } catch is ShortData {
            throw Failure.damaged("truncated")
        } catch let f as Failure {
            throw f
        } catch {
            throw Failure.damaged("\(error)")
        }
        do {
            return try decoder().decode(T.self, from: Data(json))
        } catch {
            throw Failure.damaged("its JSON does not decode: \(error)")
        }
    }
}
