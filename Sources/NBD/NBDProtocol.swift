/// The numbers of the NBD wire protocol (NetworkBlockDevice/nbd `doc/proto.md`), in one place.
///
/// Everything on the wire is big-endian (network order), which is `ByteBuffer`'s default.
package enum NBDProtocol {
    // MARK: Handshake
    static let nbdMagic: UInt64 = 0x4E42_444D_4147_4943 // "NBDMAGIC"
    static let optionMagic: UInt64 = 0x4948_4156_454F_5054 // "IHAVEOPT"
    static let optionReplyMagic: UInt64 = 0x0003_E889_0455_65A9

    /// Server handshake flags (16 bits).
    static let flagFixedNewstyle: UInt16 = 1 << 0
    static let flagNoZeroes: UInt16 = 1 << 1

    /// Client flags (32 bits); any other bit set means the client wants something we do not
    /// know, and proto.md says the server MUST then close.
    static let clientFlagFixedNewstyle: UInt32 = 1 << 0
    static let clientFlagNoZeroes: UInt32 = 1 << 1

    // MARK: Options
    enum Option {
        static let exportName: UInt32 = 1
        static let abort: UInt32 = 2
        static let list: UInt32 = 3
        static let startTLS: UInt32 = 5
        static let info: UInt32 = 6
        static let go: UInt32 = 7
        static let structuredReply: UInt32 = 8
        static let listMetaContext: UInt32 = 9
        static let setMetaContext: UInt32 = 10
    }

    enum Reply {
        static let ack: UInt32 = 1
        static let server: UInt32 = 2
        static let info: UInt32 = 3
        static let metaContext: UInt32 = 4
        static let errorBit: UInt32 = 1 << 31
        static let errUnsupported: UInt32 = errorBit | 1
        static let errPolicy: UInt32 = errorBit | 2
        static let errInvalid: UInt32 = errorBit | 3
        static let errPlatform: UInt32 = errorBit | 4
        static let errTLSRequired: UInt32 = errorBit | 5
        static let errUnknown: UInt32 = errorBit | 6
        static let errShutdown: UInt32 = errorBit | 7
        static let errBlockSizeRequired: UInt32 = errorBit | 8
        static let errTooBig: UInt32 = errorBit | 9
    }

    enum Info {
        static let export: UInt16 = 0
        static let name: UInt16 = 1
        static let description: UInt16 = 2
        static let blockSize: UInt16 = 3
    }

    // MARK: Transmission flags (16 bits, sent with the export size)
    enum TransmissionFlag {
        static let hasFlags: UInt16 = 1 << 0
        static let readOnly: UInt16 = 1 << 1
        static let sendFlush: UInt16 = 1 << 2
        static let sendFUA: UInt16 = 1 << 3
        static let rotational: UInt16 = 1 << 4
        static let sendTrim: UInt16 = 1 << 5
        static let sendWriteZeroes: UInt16 = 1 << 6
        static let sendDF: UInt16 = 1 << 7
        static let canMultiConn: UInt16 = 1 << 8
    }

    // MARK: Transmission
    static let requestMagic: UInt32 = 0x2560_9513
    static let simpleReplyMagic: UInt32 = 0x6744_6698
    static let structuredReplyMagic: UInt32 = 0x668E_33EF
    /// Request header: magic(32) flags(16) type(16) cookie(64) offset(64) length(32).
    static let requestHeaderSize = 28

    enum Command {
        static let read: UInt16 = 0
        static let write: UInt16 = 1
        static let disconnect: UInt16 = 2
        static let flush: UInt16 = 3
        static let trim: UInt16 = 4
        static let cache: UInt16 = 5
        static let writeZeroes: UInt16 = 6
        static let blockStatus: UInt16 = 7
    }

    enum CommandFlag {
        static let fua: UInt16 = 1 << 0
        static let noHole: UInt16 = 1 << 1
        static let dontFragment: UInt16 = 1 << 2
        static let reqOne: UInt16 = 1 << 3
        static let fastZero: UInt16 = 1 << 4
    }

    enum ReplyFlag {
        static let done: UInt16 = 1 << 0
    }

    enum ChunkType {
        static let none: UInt16 = 0
        static let offsetData: UInt16 = 1
        static let offsetHole: UInt16 = 2
        static let blockStatus: UInt16 = 5
        static let error: UInt16 = (1 << 15) | 1
        static let errorOffset: UInt16 = (1 << 15) | 2
    }

    // MARK: Limits
    /// The largest READ, WRITE or BLOCK_STATUS length we accept (advertised as the maximum
    /// block size). qemu and libnbd never send more than 32 MiB either.
    package static let maximumPayload: UInt32 = 32 << 20
    /// The largest option payload we read; longer ones are skipped and refused with ERR_TOO_BIG.
    static let maximumOptionLength: UInt32 = 64 << 10
    /// proto.md: names and queries are at most 4096 bytes.
    static let maximumStringLength: UInt32 = 4096

    // MARK: Meta contexts
    static let baseAllocation = "base:allocation"
    static let stateHole: UInt32 = 1 << 0
    static let stateZero: UInt32 = 1 << 1
    static let stateDirty: UInt32 = 1 << 0
}
