/// A value the scanner kept from an event's `properties` (only the few fields ingest needs).
public enum ScannedValue: Equatable, Sendable {
    case string(String)
    /// A JSON number, as its literal text.
    case number(String)
    case bool(Bool)
    case null
    case array([ScannedValue])
    case object
}

/// One event record, validated as JSON, with what ingest needs pulled out.
public struct ScannedRecord {
    /// `event`, when it is a string.
    public var event: ScannedValue?
    /// The byte range of the `properties` object inside the record, when it is an object.
    public var propertiesRange: Range<Int>?
    /// `properties` when present but not an object.
    public var propertiesKind: ScannedValue?
    /// The wanted top-level members of `properties` (the last one wins for a repeated key, as
    /// in `jsonb`).
    public var fields: [String: ScannedValue] = [:]
}

/// Why a record is not valid JSON (or cannot be stored as `jsonb`), and where.
public struct JSONScanError: Error, Equatable {
    /// Dotted path of the member being read (`properties.utm_source`), or `(record)`.
    public var field: String
    public var reason: String
}

/// A byte-level JSON validator and extractor for one event record.
///
/// It checks the whole record against RFC 8259 (structure, strings, numbers, UTF-8) plus
/// what PostgreSQL's `jsonb` refuses (`\u0000`, unpaired surrogates, numbers too large for
/// `numeric`), so a record it accepts never fails the COPY of a whole batch. It decodes only
/// the top-level `event` and the members of `properties` named in `wanted`; the properties
/// object itself travels to PostgreSQL as the original text.
///
/// Parsing costs one pass over the bytes with no allocation for values it does not keep,
/// which is what lets import keep up with COPY (Foundation's JSON parsers manage 20-90k
/// events/s here; see BENCHMARKS.md).
public struct JSONScanner {
    /// The property names whose values are decoded.
    public let wanted: Set<String>
    /// Deepest nesting accepted (objects and arrays).
    public let maxDepth: Int

    /// `wanted`, matched on the raw bytes of a member name (no String per member).
    let wantedKeys: WantedKeys?

    public init(wanted: Set<String>, maxDepth: Int = 64) {
        self.wanted = wanted
        self.maxDepth = maxDepth
        self.wantedKeys = wanted.isEmpty ? nil : WantedKeys(wanted)
    }

    /// Scans one record.
    ///
    /// - Throws: ``JSONScanError`` naming the field and the reason.
    public func scan(_ bytes: UnsafeBufferPointer<UInt8>) throws -> ScannedRecord {
        var cursor = Cursor(bytes: bytes, maxDepth: maxDepth)
        var record = ScannedRecord()
        cursor.skipWhitespace()
        guard cursor.index < bytes.count else { throw JSONScanError(field: "(record)", reason: "empty record") }
        guard bytes[cursor.index] == UInt8(ascii: "{") else {
            throw JSONScanError(field: "(record)", reason: "a record must be a JSON object with event and properties")
        }
        cursor.index += 1
        cursor.skipWhitespace()
        if cursor.peek() == UInt8(ascii: "}") {
            cursor.index += 1
        } else {
            while true {
                cursor.skipWhitespace()
                let key = try cursor.string(decode: true, field: "(record)") ?? ""
                cursor.skipWhitespace()
                try cursor.expect(UInt8(ascii: ":"), field: key)
                cursor.skipWhitespace()
                if key == "event" {
                    record.event = try cursor.value(depth: 1, keep: true, field: "event")
                } else if key == "properties" {
                    if cursor.peek() == UInt8(ascii: "{") {
                        let start = cursor.index
                        record.fields = try cursor.object(depth: 1, wanted: wantedKeys, path: "properties")
                        record.propertiesRange = start..<cursor.index
                        record.propertiesKind = nil
                    } else {
                        record.propertiesKind = try cursor.value(depth: 1, keep: true, field: "properties")
                        record.propertiesRange = nil
                        record.fields = [:]
                    }
                } else {
                    _ = try cursor.value(depth: 1, keep: false, field: key)
                }
                cursor.skipWhitespace()
                guard let next = cursor.peek() else {
                    throw JSONScanError(field: "(record)", reason: "malformed JSON: unexpected end of record")
                }
                cursor.index += 1
                if next == UInt8(ascii: "}") { break }
                guard next == UInt8(ascii: ",") else {
                    throw JSONScanError(
                        field: "(record)", reason: "malformed JSON: expected ',' or '}' at byte \(cursor.index - 1)")
                }
            }
        }
        cursor.skipWhitespace()
        guard cursor.index == bytes.count else {
            throw JSONScanError(
                field: "(record)", reason: "malformed JSON: unexpected data after the object at byte \(cursor.index)")
        }
        return record
    }
}

private struct Cursor {
    let bytes: UnsafeBufferPointer<UInt8>
    let maxDepth: Int
    var index = 0

    init(bytes: UnsafeBufferPointer<UInt8>, maxDepth: Int) {
        self.bytes = bytes
        self.maxDepth = maxDepth
    }

    @inline(__always) func peek() -> UInt8? { index < bytes.count ? bytes[index] : nil }

    @inline(__always) mutating func skipWhitespace() {
        while index < bytes.count {
            let b = bytes[index]
            if b == 0x20 || b == 0x0A || b == 0x0D || b == 0x09 { index += 1 } else { return }
        }
    }

    mutating func expect(_ byte: UInt8, field: String) throws {
        guard index < bytes.count, bytes[index] == byte else {
            throw JSONScanError(
                field: field.isEmpty ? "(record)" : field,
                reason: "malformed JSON: expected '\(Character(Unicode.Scalar(byte)))' at byte \(index)")
        }
        index += 1
    }

    func error(_ field: String, _ reason: String) -> JSONScanError {
        JSONScanError(field: field, reason: reason)
    }

    /// Parses a value; returns it when `keep` (objects are validated and reported as `.object`).
    mutating func value(depth: Int, keep: Bool, field: String) throws -> ScannedValue? {
        guard let b = peek() else { throw error(field, "malformed JSON: unexpected end of record") }
        switch b {
        case UInt8(ascii: "\""):
            let text = try string(decode: keep, field: field)
            return text.map { .string($0) }
        case UInt8(ascii: "{"):
            _ = try object(depth: depth, wanted: nil, path: field)
            return keep ? .object : nil
        case UInt8(ascii: "["):
            return try array(depth: depth, keep: keep, field: field)
        case UInt8(ascii: "t"):
            try literal("true", field: field)
            return .bool(true)
        case UInt8(ascii: "f"):
            try literal("false", field: field)
            return .bool(false)
        case UInt8(ascii: "n"):
            try literal("null", field: field)
            return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            let range = try number(field: field)
            guard keep else { return nil }
            return .number(String(decoding: UnsafeBufferPointer(rebasing: bytes[range]), as: UTF8.self))
        default:
            throw error(field, "malformed JSON: unexpected character at byte \(index)")
        }
    }

    mutating func literal(_ word: StaticString, field: String) throws {
        let count = word.utf8CodeUnitCount
        guard index + count <= bytes.count else {
            throw error(field, "malformed JSON: invalid literal at byte \(index)")
        }
        let pointer = word.utf8Start
        for k in 0..<count where bytes[index + k] != pointer[k] {
            throw error(field, "malformed JSON: invalid literal at byte \(index)")
        }
        index += count
    }

    /// Parses an object; returns the members named in `wanted` (top level only).
    ///
    /// Errors inside a member's value name the member (`path.key`, up to depth 1); the name is
    /// built only when an error is thrown.
    mutating func object(depth: Int, wanted: WantedKeys?, path: String) throws -> [String: ScannedValue] {
        guard depth < maxDepth else { throw error(path, "nested deeper than \(maxDepth) levels") }
        index += 1  // {
        var kept: [String: ScannedValue] = [:]
        skipWhitespace()
        if peek() == UInt8(ascii: "}") {
            index += 1
            return kept
        }
        if wanted != nil { kept.reserveCapacity(8) }
        while true {
            skipWhitespace()
            guard peek() == UInt8(ascii: "\"") else {
                throw error(path, "malformed JSON: expected a member name at byte \(index)")
            }
            let keyStart = index
            let escaped = try skipString(field: path)
            // The wanted name this member matches, if any.
            var name: String? = nil
            if let wanted {
                if escaped {
                    var keyCursor = Cursor(bytes: bytes, maxDepth: maxDepth)
                    keyCursor.index = keyStart
                    if let key = try keyCursor.string(decode: true, field: path), wanted.names.contains(key) {
                        name = key
                    }
                } else {
                    name = wanted.match(UnsafeBufferPointer(rebasing: bytes[(keyStart + 1)..<(index - 1)]))
                }
            }
            skipWhitespace()
            if peek() == UInt8(ascii: ":") {
                index += 1
            } else {
                try expect(
                    UInt8(ascii: ":"), field: memberPath(path, depth: depth, keyStart: keyStart, decoded: wanted != nil)
                )
            }
            skipWhitespace()
            let value: ScannedValue?
            if depth <= 1 {
                do {
                    value = try self.value(depth: depth + 1, keep: name != nil, field: path)
                } catch var failure as JSONScanError {
                    failure.field = memberPath(path, depth: depth, keyStart: keyStart, decoded: wanted != nil)
                    throw failure
                }
            } else {
                value = try self.value(depth: depth + 1, keep: name != nil, field: path)
            }
            if let name, let value { kept[name] = value }
            skipWhitespace()
            guard let next = peek() else { throw error(path, "malformed JSON: unexpected end of record") }
            index += 1
            if next == UInt8(ascii: "}") { return kept }
            guard next == UInt8(ascii: ",") else {
                throw error(path, "malformed JSON: expected ',' or '}' at byte \(index - 1)")
            }
        }
    }

    /// The name errors inside a member report: `path.key` up to depth 1 (the key decoded when
    /// members are matched against wanted names, as written otherwise), `path` deeper down.
    func memberPath(_ path: String, depth: Int, keyStart: Int, decoded: Bool) -> String {
        guard depth <= 1 else { return path }
        if decoded {
            var keyCursor = Cursor(bytes: bytes, maxDepth: maxDepth)
            keyCursor.index = keyStart
            if let key = try? keyCursor.string(decode: true, field: path) { return path + "." + key }
        }
        var end = keyStart + 1
        var escape = false
        while end < bytes.count {
            let b = bytes[end]
            if escape {
                escape = false
            } else if b == UInt8(ascii: "\\") {
                escape = true
            } else if b == UInt8(ascii: "\"") {
                break
            }
            end += 1
        }
        return path + "." + String(decoding: UnsafeBufferPointer(rebasing: bytes[(keyStart + 1)..<end]), as: UTF8.self)
    }

    mutating func array(depth: Int, keep: Bool, field: String) throws -> ScannedValue? {
        guard depth < maxDepth else { throw error(field, "nested deeper than \(maxDepth) levels") }
        index += 1  // [
        var items: [ScannedValue] = []
        skipWhitespace()
        if peek() == UInt8(ascii: "]") {
            index += 1
            return keep ? .array(items) : nil
        }
        while true {
            skipWhitespace()
            let item = try value(depth: depth + 1, keep: keep, field: field)
            if keep, let item { items.append(item) }
            skipWhitespace()
            guard let next = peek() else { throw error(field, "malformed JSON: unexpected end of record") }
            index += 1
            if next == UInt8(ascii: "]") { return keep ? .array(items) : nil }
            guard next == UInt8(ascii: ",") else {
                throw error(field, "malformed JSON: expected ',' or ']' at byte \(index - 1)")
            }
        }
    }

    /// Validates a number (RFC 8259 grammar) and returns its byte range.
    mutating func number(field: String) throws -> Range<Int> {
        let start = index
        if peek() == UInt8(ascii: "-") { index += 1 }
        guard let first = peek(), first >= 0x30, first <= 0x39 else {
            throw error(field, "malformed JSON: invalid number at byte \(start)")
        }
        if first == 0x30 {
            index += 1
        } else {
            while let d = peek(), d >= 0x30, d <= 0x39 { index += 1 }
        }
        if peek() == UInt8(ascii: ".") {
            index += 1
            guard let d = peek(), d >= 0x30, d <= 0x39 else {
                throw error(field, "malformed JSON: invalid number at byte \(start)")
            }
            while let d = peek(), d >= 0x30, d <= 0x39 { index += 1 }
        }
        if let e = peek(), e == UInt8(ascii: "e") || e == UInt8(ascii: "E") {
            index += 1
            if let s = peek(), s == UInt8(ascii: "+") || s == UInt8(ascii: "-") { index += 1 }
            guard let d = peek(), d >= 0x30, d <= 0x39 else {
                throw error(field, "malformed JSON: invalid number at byte \(start)")
            }
            var exponent = 0
            while let d = peek(), d >= 0x30, d <= 0x39 {
                if exponent < 1_000_000 { exponent = exponent * 10 + Int(d - 0x30) }
                index += 1
            }
            // PostgreSQL's numeric (behind jsonb) cannot hold exponents this large.
            if exponent > 1000 { throw error(field, "number out of range (exponent above 1000)") }
        }
        // Nor numbers of a thousand digits (numeric caps integer and fraction digits).
        if index - start > 1000 { throw error(field, "number out of range (more than 1000 characters)") }
        return start..<index
    }

    /// Validates a string without decoding it; returns true when it holds escapes.
    mutating func skipString(field: String) throws -> Bool {
        let start = index
        // Plain ASCII up to the closing quote is the common case.
        var k = index + 1
        while k < bytes.count {
            let b = bytes[k]
            if b == UInt8(ascii: "\"") {
                index = k + 1
                return false
            }
            if b == UInt8(ascii: "\\") || b < 0x20 || b >= 0x80 { break }
            k += 1
        }
        index = start
        _ = try string(decode: false, field: field)
        return bytes[(start + 1)..<index].contains(UInt8(ascii: "\\"))
    }

    /// Validates a string (escapes, UTF-8, no NUL) and decodes it when asked.
    mutating func string(decode: Bool, field: String) throws -> String? {
        guard peek() == UInt8(ascii: "\"") else {
            throw error(field, "malformed JSON: expected a string at byte \(index)")
        }
        index += 1
        let start = index
        var decoded: [UInt8]? = nil
        while true {
            guard index < bytes.count else { throw error(field, "malformed JSON: unterminated string") }
            let b = bytes[index]
            if b == UInt8(ascii: "\"") {
                let end = index
                index += 1
                guard decode else { return nil }
                if let decoded { return String(decoding: decoded, as: UTF8.self) }
                return String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<end]), as: UTF8.self)
            }
            if b == UInt8(ascii: "\\") {
                if decode && decoded == nil { decoded = Array(bytes[start..<index]) }
                index += 1
                guard index < bytes.count else { throw error(field, "malformed JSON: unterminated string") }
                let e = bytes[index]
                index += 1
                var out: UInt8? = nil
                switch e {
                case UInt8(ascii: "\""): out = 0x22
                case UInt8(ascii: "\\"): out = 0x5C
                case UInt8(ascii: "/"): out = 0x2F
                case UInt8(ascii: "b"): out = 0x08
                case UInt8(ascii: "f"): out = 0x0C
                case UInt8(ascii: "n"): out = 0x0A
                case UInt8(ascii: "r"): out = 0x0D
                case UInt8(ascii: "t"): out = 0x09
                case UInt8(ascii: "u"):
                    var scalar = try hex4(field: field)
                    if scalar == 0 {
                        throw error(field, "string contains \\u0000, which PostgreSQL cannot store")
                    }
                    if scalar >= 0xD800 && scalar <= 0xDBFF {
                        guard index + 1 < bytes.count, bytes[index] == UInt8(ascii: "\\"),
                            bytes[index + 1] == UInt8(ascii: "u")
                        else { throw error(field, "string contains an unpaired UTF-16 surrogate") }
                        index += 2
                        let low = try hex4(field: field)
                        guard low >= 0xDC00 && low <= 0xDFFF else {
                            throw error(field, "string contains an unpaired UTF-16 surrogate")
                        }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    } else if scalar >= 0xDC00 && scalar <= 0xDFFF {
                        throw error(field, "string contains an unpaired UTF-16 surrogate")
                    }
                    if decode, let s = Unicode.Scalar(scalar) { decoded!.append(contentsOf: Array(String(s).utf8)) }
                    continue
                default:
                    throw error(field, "malformed JSON: invalid escape at byte \(index - 2)")
                }
                if decode, let out { decoded!.append(out) }
                continue
            }
            if b < 0x20 {
                throw error(field, "malformed JSON: control character in a string at byte \(index)")
            }
            if b < 0x80 {
                if decoded != nil { decoded!.append(b) }
                index += 1
                continue
            }
            let length = try utf8Sequence(field: field)
            if decoded != nil { decoded!.append(contentsOf: bytes[index..<(index + length)]) }
            index += length
        }
    }

    mutating func hex4(field: String) throws -> UInt32 {
        guard index + 4 <= bytes.count else { throw error(field, "malformed JSON: invalid \\u escape") }
        var value: UInt32 = 0
        for k in 0..<4 {
            let c = bytes[index + k]
            let digit: UInt32
            switch c {
            case 0x30...0x39: digit = UInt32(c - 0x30)
            case 0x41...0x46: digit = UInt32(c - 0x41 + 10)
            case 0x61...0x66: digit = UInt32(c - 0x61 + 10)
            default: throw error(field, "malformed JSON: invalid \\u escape")
            }
            value = value << 4 | digit
        }
        index += 4
        return value
    }

    /// The length of the valid UTF-8 sequence at `index` (RFC 3629: no overlongs, no
    /// surrogates, nothing above U+10FFFF).
    func utf8Sequence(field: String) throws -> Int {
        let b0 = bytes[index]
        func cont(_ k: Int, _ low: UInt8 = 0x80, _ high: UInt8 = 0xBF) -> Bool {
            index + k < bytes.count && bytes[index + k] >= low && bytes[index + k] <= high
        }
        let invalid = error(field, "string should be valid UTF-8 (invalid byte at \(index))")
        switch b0 {
        case 0xC2...0xDF:
            guard cont(1) else { throw invalid }
            return 2
        case 0xE0:
            guard cont(1, 0xA0, 0xBF), cont(2) else { throw invalid }
            return 3
        case 0xE1...0xEC, 0xEE...0xEF:
            guard cont(1), cont(2) else { throw invalid }
            return 3
        case 0xED:
            guard cont(1, 0x80, 0x9F), cont(2) else { throw invalid }
            return 3
        case 0xF0:
            guard cont(1, 0x90, 0xBF), cont(2), cont(3) else { throw invalid }
            return 4
        case 0xF1...0xF3:
            guard cont(1), cont(2), cont(3) else { throw invalid }
            return 4
        case 0xF4:
            guard cont(1, 0x80, 0x8F), cont(2), cont(3) else { throw invalid }
            return 4
        default:
            throw invalid
        }
    }
}

/// Member names to keep, matched on raw bytes: by length, then byte for byte.
struct WantedKeys {
    let names: Set<String>
    private let byLength: [[(bytes: [UInt8], name: String)]]

    init(_ names: Set<String>) {
        self.names = names
        var byLength: [[(bytes: [UInt8], name: String)]] = Array(
            repeating: [], count: (names.map(\.utf8.count).max() ?? 0) + 1)
        for name in names { byLength[name.utf8.count].append((Array(name.utf8), name)) }
        self.byLength = byLength
    }

    /// The wanted name spelled exactly by `key` (a member name without escapes), if any.
    @inline(__always) func match(_ key: UnsafeBufferPointer<UInt8>) -> String? {
        guard key.count < byLength.count else { return nil }
        for candidate in byLength[key.count] where candidate.bytes.withUnsafeBufferPointer({ $0.elementsEqual(key) }) {
            return candidate.name
        }
        return nil
    }
}
