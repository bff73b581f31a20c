/// What the handshake agreed on for one connection: the export, the reply style and the
/// selected meta contexts. The transmission phase is driven by this value alone.
package struct NBDSession: Sendable {
    package var export: any NBDExport
    package var info: NBDExportInfo
    /// Structured replies were negotiated (READ then uses OFFSET_DATA chunks, BLOCK_STATUS works).
    package var structuredReplies: Bool
    /// Selected meta contexts, by the ID handed to the client, in ID order.
    package var contexts: [(id: UInt32, name: String)]

    package init(export: any NBDExport, info: NBDExportInfo, structuredReplies: Bool,
                 contexts: [(id: UInt32, name: String)]) {
        self.export = export
        self.info = info
        self.structuredReplies = structuredReplies
        self.contexts = contexts
    }
}
