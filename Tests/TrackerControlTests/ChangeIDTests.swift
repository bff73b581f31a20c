import TrackerControl
import Foundation
import TestSupport
import Testing

struct ChangeIDTests {
    @Test func printsAndParsesUUIDSlashSequence() throws {
        let text = "3F2504E0-4F89-41D3-9A0C-0305E82C3301/7"
        let id = try #require(ChangeID(text))
        #expect(id.generation == UUID(uuidString: "3F2504E0-4F89-41D3-9A0C-0305E82C3301"))
        #expect(id.sequence == 7)
        #expect(id.description == text)
        #expect(ChangeID(id.description) == id)
        let lower = try #require(ChangeID("3f2504e0-4f89-41d3-9a0c-0305e82c3301/18446744073709551615"))
        #expect(lower.sequence == UInt64.max)
    }

    @Test(arguments: ["", "/", "3F2504E0-4F89-41D3-9A0C-0305E82C3301", "3F2504E0-4F89-41D3-9A0C-0305E82C3301/",
                      "3F2504E0-4F89-41D3-9A0C-0305E82C3301/-1", "3F2504E0-4F89-41D3-9A0C-0305E82C3301/+1",
                      "3F2504E0-4F89-41D3-9A0C-0305E82C3301/ 1", "3F2504E0-4F89-41D3-9A0C-0305E82C3301/1/2",
                      "3F2504E0-4F89-41D3-9A0C-0305E82C330/1", "not-a-uuid/1", "3F2504E0-4F89-41D3-9A0C-0305E82C3301/18446744073709551616",
                      "3F2504E0-4F89-41D3-9A0C-0305E82C3301/0x10", " 3F2504E0-4F89-41D3-9A0C-0305E82C3301/1"])
    func rejectsMalformedChangeIDs(_ text: String) {
        #expect(ChangeID(text) == nil)
        #expect { try ChangeID(parsing: text) } throws: { ($0 as? FilterError)?.code == .invalidArgument }
    }

    @Test func codableAsString() throws {
        let id = ChangeID(generation: UUID(), sequence: 42)
        let encoder = JSONEncoder()
        encoder.outputFormatting = .withoutEscapingSlashes
        let data = try encoder.encode([id])
        #expect(String(decoding: data, as: UTF8.self) == "[\"\(id.description)\"]")
        #expect(try JSONDecoder().decode([ChangeID].self, from: data) == [id])
        #expect(throws: DecodingError.self) { try JSONDecoder().decode([ChangeID].self, from: Data("[\"x/1\"]".utf8)) }
    }
}
