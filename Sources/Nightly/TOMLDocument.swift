import Foundation
import TOMLKit

/// A TOML document as plain values, with the line each key came from, so that a config error
/// can name the file, the line and the key. The one file that imports TOMLKit.
public struct TOMLDocument: Sendable {
    public indirect enum Value: Sendable, Equatable {
        case table([String: Value])
        case array([Value])
        case string(String)
        case int(Int)
        case double(Double)
        case bool(Bool)
        /// Dates and times, which no Tessera setting uses.
        case other(String)
    }

    public let root: [String: Value]
    /// Key path (`vm[1].disk[0].path`) → line (1-based); tables map to their header's line.
    public let lines: [String: Int]

    /// - Throws: `ConfigError` with the line of the syntax error.
    public init(text: String, file: String) throws {
        try Self.checkTableHeaders(text, file: file)
        try Self.checkArrayElements(text, file: file)
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch let e as TOMLParseError {
            throw ConfigError(file: file, line: e.source.begin.line, key: nil, message: "not valid TOML: \(e.description)")
        }
        root = Self.values(of: table)
        lines = TOMLLineMap.scan(text)
    }

    /// Refuses a table header whose name starts with a character no key starts with (`[é]`,
    /// `[#]`, `[[!x]]`) before toml++ sees it: toml++ 3 asserts there (found by Tools/fuzz),
    /// which aborts a debug build and is undefined behaviour (an assumed condition) in a release one.
    static func checkTableHeaders(_ text: String, file: String) throws {
        for (index, line) in lines(of: text).enumerated() {
            var rest = line.unicodeScalars.drop { $0 == " " || $0 == "\t" }
            guard rest.first == "[" else { continue }
            rest = rest.dropFirst()
            if rest.first == "[" { rest = rest.dropFirst() }
            // The end of the line right after the brackets (`[[`) trips the same assertion.
            let c = rest.first(where: { $0 != " " && $0 != "\t" })
            let startsKey = c.map { (($0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0))) || "-_\"']".unicodeScalars.contains($0)) } ?? false
            guard startsKey else {
                throw ConfigError(file: file, line: index + 1, key: nil,
                                  message: "not valid TOML: a table name starts with an ASCII letter, digit, '-', '_' or a quote (found \(c.map { "\"\($0)\"" } ?? "the end of the line"))")
            }
        }
    }

    /// Refuses an array element that starts with `}` or a Unicode line separator (U+0085,
    /// U+2028, U+2029) before toml++ sees it: its array parser hands those to the value parser,
    /// which asserts that a value never starts with a terminator (found by Tools/fuzz:
    /// `name = [}`). Walks the text outside strings and comments, knowing only brackets.
    static func checkArrayElements(_ text: String, file: String) throws {
        var open: [Unicode.Scalar] = []       // "[" of arrays and "{" of inline tables
        var elementDue = false                // after an array's "[" or ",": a value or "]" next
        var line = 1, atLineStart = true
        var scalars = text.unicodeScalars[...]
        func refuse(_ c: Unicode.Scalar) -> ConfigError {
            ConfigError(file: file, line: line, key: nil,
                        message: "not valid TOML: an array holds values separated by commas (found \(c == "}" ? "\"}\"" : "U+\(String(c.value, radix: 16, uppercase: true))") where a value or \"]\" belongs)")
        }
        while let c = scalars.popFirst() {
            switch c {
            case "\n":
                line += 1
                atLineStart = open.isEmpty
            case " ", "\t", "\r":
                break
            case "#":
                while let next = scalars.first, next != "\n" { scalars.removeFirst() }
            case "\"", "'":
                // A string, "..." with escapes or '...' without, either of them tripled for
                // several lines; its end is all that matters here.
                elementDue = false; atLineStart = false
                let triple = scalars.starts(with: [c, c])
                if triple { scalars.removeFirst(2) }
                while let next = scalars.popFirst() {
                    if next == "\n" { line += 1; if !triple { break } }
                    if next == "\\" && c == "\"" { if scalars.popFirst() == "\n" { line += 1 }; continue }
                    if next == c && (!triple || scalars.starts(with: [c, c])) {
                        if triple { scalars.removeFirst(2) }
                        break
                    }
                }
            case "[" where atLineStart && open.isEmpty:
                // A table header: its name is checked by `checkTableHeaders`.
                while let next = scalars.first, next != "\n" { scalars.removeFirst() }
            case "[":
                open.append(c); elementDue = true; atLineStart = false
            case "{":
                if elementDue { elementDue = false }
                open.append(c); atLineStart = false
            case "}", "\u{85}", "\u{2028}", "\u{2029}":
                if elementDue { throw refuse(c) }
                if c == "}", open.last == "{" { open.removeLast() }
                atLineStart = false
            case "]":
                if open.last == "[" { open.removeLast() }
                elementDue = false; atLineStart = false
            case ",":
                elementDue = open.last == "["; atLineStart = false
            default:
                elementDue = false; atLineStart = false
            }
        }
    }

    /// The lines of a text as TOML (and toml++) counts them: split at LF, a CR before it
    /// dropped. Not `split(separator: "\n")`: that splits Characters, and "\r\n" is one
    /// Character, so a file saved with CRLF endings would be one long line (found by
    /// Tools/fuzz: a table header after a CRLF escaped the check above).
    static func lines(of text: String) -> [Substring] {
        text.unicodeScalars.split(separator: "\n", omittingEmptySubsequences: false).map { line in
            Substring(line.last == "\r" ? line.dropLast() : line)
        }
    }

    private static func values(of table: TOMLTable) -> [String: Value] {
        var out: [String: Value] = [:]
        for key in table.keys {
            if let v = table[key] { out[key] = value(v) }
        }
        return out
    }

    private static func value(_ v: any TOMLValueConvertible) -> Value {
        switch v.type {
        case .table: return .table(v.table.map(values(of:)) ?? [:])
        case .array: return .array(v.array.map { Array($0).map { value($0) } } ?? [])
        case .string: return .string(v.string ?? "")
        case .int: return .int(v.int ?? 0)
        case .double: return .double(v.double ?? 0)
        case .bool: return .bool(v.bool ?? false)
        default: return .other("\(v)")
        }
    }
}

/// Finds the line of every key and table header by reading the text line by line: enough for
/// configs (tables, arrays of tables, `key = value`, dotted keys); a key it cannot place gets
/// its table's line.
enum TOMLLineMap {
    static func scan(_ text: String) -> [String: Int] {
        var lines: [String: Int] = [:]
        var table = ""                    // the current table's path, e.g. "vm[1].disk[0]"
        var arrayCounts: [String: Int] = [:]  // path of an array of tables → entries so far
        for (i, raw) in TOMLDocument.lines(of: text).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            if line.hasPrefix("[[") {
                let name = keyPath(inner(line, open: "[[", close: "]]"), under: "")
                let parent = parentArrayPath(name, arrayCounts: arrayCounts)
                let index = arrayCounts[parent, default: 0]
                arrayCounts[parent] = index + 1
                table = "\(parent)[\(index)]"
                lines[table] = i + 1
            } else if line.hasPrefix("[") {
                table = parentArrayPath(keyPath(inner(line, open: "[", close: "]"), under: ""), arrayCounts: arrayCounts)
                lines[table] = lines[table] ?? i + 1
            } else if let eq = line.firstIndex(of: "=") {
                let key = keyPath(String(line[..<eq]), under: table)
                lines[key] = lines[key] ?? i + 1
            }
        }
        return lines
    }

    private static func inner(_ line: String, open: String, close: String) -> String {
        var s = line.dropFirst(open.count)
        if let end = s.range(of: close) { s = s[..<end.lowerBound] }
        return String(s)
    }

    /// `a."b c".d` under `t` → `t.a.b c.d`.
    private static func keyPath(_ text: String, under table: String) -> String {
        let parts = text.split(separator: ".").map { $0.trimmingCharacters(in: .whitespaces).trimmingCharacters(in: CharacterSet(charactersIn: "\"'")) }
        return ([table].filter { !$0.isEmpty } + parts).joined(separator: ".")
    }

    /// A header path like `vm.disk` names the newest entry of each enclosing array of tables:
    /// `vm[1].disk`.
    private static func parentArrayPath(_ path: String, arrayCounts: [String: Int]) -> String {
        let parts = path.split(separator: ".")
        var out = ""
        for (i, part) in parts.enumerated() {
            out = out.isEmpty ? String(part) : "\(out).\(part)"
            if i < parts.count - 1, let n = arrayCounts[out], n > 0 { out += "[\(n - 1)]" }
        }
        return out
    }
}
