import CZlib
import Foundation

/// A request that cannot be taken as it is: the HTTP status and the reason the client sees.
struct PayloadError: Error, CustomStringConvertible {
    enum Kind {
        /// 400: the body is not what the endpoint reads.
        case malformed
        /// 413: more bytes or events than one request may carry.
        case tooLarge
    }

    var kind: Kind
    var reason: String
    var description: String { reason }

    static func malformed(_ reason: String) -> PayloadError { PayloadError(kind: .malformed, reason: reason) }
    static func tooLarge(_ reason: String) -> PayloadError { PayloadError(kind: .tooLarge, reason: reason) }
}

/// The events of one request, cut into records without parsing them.
///
/// `records` are byte ranges of `bytes`. When every record is *embeddable* (its brackets and
/// strings balance and it holds no top-level comma), the records of several requests can be
/// joined into one JSON array for one import; `RecordReader` cuts that array back at exactly
/// the same places. A request whose structure is broken (an unterminated array, trailing data)
/// is imported on its own, with its original bytes, so its refusals read as they would from a file.
struct SplitPayload: Sendable {
    var bytes: [UInt8]
    var records: [Range<Int>]
    /// For NDJSON: the 1-based line of each record (to map `RecordReader`'s line positions back
    /// to record indexes). Empty for arrays.
    var lines: [Int]
    var embeddable: Bool

    var count: Int { records.count }

    /// The record index a refused position names.
    func index(position: Int, kind: String) -> Int {
        if kind == "line", !lines.isEmpty { return lines.firstIndex(of: position) ?? max(0, position - 1) }
        return position
    }
}

enum Payload {
    /// Mixpanel's documented ceiling per request (mixpanel-reference.md §4.1).
    static let maxEvents = 2000
    /// 10 MB of uncompressed JSON per request (decisions.md "Ingestion").
    static let maxDecodedBytes = 10 * 1024 * 1024

    static func isWhitespace(_ b: UInt8) -> Bool { b == 0x20 || b == 0x0A || b == 0x0D || b == 0x09 }

    static func firstNonWhitespace(_ bytes: [UInt8]) -> UInt8? { bytes.first { !isWhitespace($0) } }

    static func isGzip(_ bytes: [UInt8]) -> Bool { bytes.count >= 2 && bytes[0] == 0x1F && bytes[1] == 0x8B }

    /// Inflates gzip (or zlib) data, concatenated members included, stopping as soon as the
    /// output passes `limit` bytes (a gzip bomb costs at most `limit` bytes of memory).
    ///
    /// - Throws: ``PayloadError`` `.tooLarge` past the limit, `.malformed` for bad gzip data.
    static func gunzip(_ input: [UInt8], limit: Int = maxDecodedBytes) throws -> [UInt8] {
        var stream = z_stream()
        guard czlib_inflate_init_auto(&stream) == Z_OK else { throw PayloadError.malformed("cannot inflate") }
        defer { inflateEnd(&stream) }
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        var source = input
        var consumed = 0
        var memberDone = false
        while consumed < source.count {
            let status: Int32 = source.withUnsafeMutableBufferPointer { inPointer in
                chunk.withUnsafeMutableBufferPointer { outPointer in
                    stream.next_in = inPointer.baseAddress! + consumed
                    stream.avail_in = UInt32(inPointer.count - consumed)
                    stream.next_out = outPointer.baseAddress
                    stream.avail_out = UInt32(outPointer.count)
                    let status = inflate(&stream, Z_NO_FLUSH)
                    consumed = inPointer.count - Int(stream.avail_in)
                    return status
                }
            }
            let produced = chunk.count - Int(stream.avail_out)
            if output.count + produced > limit {
                throw PayloadError.tooLarge("request exceeds max limit of \(limit) bytes once decompressed")
            }
            output.append(contentsOf: chunk[0..<produced])
            memberDone = false
            switch status {
            case Z_STREAM_END:
                memberDone = true
                inflateReset(&stream)
            case Z_OK:
                break
            case Z_BUF_ERROR where produced > 0:
                break
            default:
                throw PayloadError.malformed("invalid gzip data")
            }
        }
        guard memberDone else { throw PayloadError.malformed("the gzip data ends early") }
        return output
    }

    /// Decodes `application/x-www-form-urlencoded` text into its fields (the last value wins).
    static func formFields(_ bytes: [UInt8]) -> [String: String] {
        var fields: [String: String] = [:]
        for pair in bytes.split(separator: UInt8(ascii: "&"), omittingEmptySubsequences: true) {
            let parts = pair.split(separator: UInt8(ascii: "="), maxSplits: 1, omittingEmptySubsequences: false)
            guard let name = percentDecode(parts[0]) else { continue }
            fields[name] = parts.count > 1 ? percentDecode(parts[1]) ?? "" : ""
        }
        return fields
    }

    /// Percent-decoding with `+` as a space; nil for invalid UTF-8.
    static func percentDecode(_ bytes: ArraySlice<UInt8>) -> String? {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var i = bytes.startIndex
        while i < bytes.endIndex {
            let b = bytes[i]
            if b == UInt8(ascii: "+") {
                out.append(0x20)
            } else if b == UInt8(ascii: "%"), i + 2 < bytes.endIndex, let h = hex(bytes[i + 1]),
                let l = hex(bytes[i + 2])
            {
                out.append(h << 4 | l)
                i += 2
            } else {
                out.append(b)
            }
            i += 1
        }
        return String(validating: out, as: UTF8.self)
    }

    private static func hex(_ b: UInt8) -> UInt8? {
        switch b {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return b - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return b - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return b - UInt8(ascii: "A") + 10
        default: return nil
        }
    }

    /// The `data` value of `/track` (and of the SDKs' form `/import`): JSON, or base64 of JSON
    /// (standard or URL-safe alphabet, padding optional), as Mixpanel's SDKs send it.
    static func decodeDataField(_ value: String) throws -> [UInt8] {
        let bytes = Array(value.utf8)
        guard let first = firstNonWhitespace(bytes) else { throw PayloadError.malformed("the data field is empty") }
        if first == UInt8(ascii: "{") || first == UInt8(ascii: "[") { return bytes }
        var text = value.trimmingCharacters(in: .whitespacesAndNewlines)
            .replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while text.count % 4 != 0 { text += "=" }
        let decoded = Data(base64Encoded: text).map { Array($0) } ?? []
        guard let start = firstNonWhitespace(decoded), start == UInt8(ascii: "{") || start == UInt8(ascii: "[")
        else {
            throw PayloadError.malformed("the data field is neither JSON nor base64-encoded JSON")
        }
        return decoded
    }

    /// Cuts a body into records: the elements of a JSON array, the lines of NDJSON, or (with
    /// `singleObject`) one JSON object that may span lines (`/track`'s `data={...}`).
    ///
    /// - Throws: ``PayloadError`` when there are no records or more than ``maxEvents``.
    static func split(_ input: [UInt8], singleObject: Bool = false) throws -> SplitPayload {
        guard input.count <= maxDecodedBytes else {
            throw PayloadError.tooLarge("request exceeds max limit of \(maxDecodedBytes) bytes")
        }
        guard let first = input.firstIndex(where: { !isWhitespace($0) }) else {
            throw PayloadError.malformed("the request holds no events")
        }
        var payload: SplitPayload
        if input[first] == UInt8(ascii: "[") {
            payload = splitArray(input, from: first + 1)
        } else if singleObject {
            // One object, possibly pretty-printed: newlines outside strings are whitespace and
            // inside strings invalid anyway, so it becomes one NDJSON line.
            var bytes = input
            for i in bytes.indices where bytes[i] == 0x0A || bytes[i] == 0x0D { bytes[i] = 0x20 }
            payload = splitLines(bytes)
        } else {
            payload = splitLines(input)
        }
        guard payload.count > 0 else { throw PayloadError.malformed("the request holds no events") }
        guard payload.count <= maxEvents else {
            throw PayloadError.tooLarge(
                "request has \(payload.count) events; at most \(maxEvents) events per request")
        }
        return payload
    }

    /// Whether a record can sit inside a JSON array that `RecordReader` will cut again: it
    /// never closes more than it opens, holds no comma at its top level, and ends balanced.
    static func isEmbeddable(_ bytes: [UInt8], _ range: Range<Int>) -> Bool {
        var depth = 0
        var inString = false
        var escaped = false
        for i in range {
            let b = bytes[i]
            if inString {
                if escaped {
                    escaped = false
                } else if b == UInt8(ascii: "\\") {
                    escaped = true
                } else if b == UInt8(ascii: "\"") {
                    inString = false
                }
            } else if b == UInt8(ascii: "\"") {
                inString = true
            } else if b == UInt8(ascii: "{") || b == UInt8(ascii: "[") {
                depth += 1
            } else if b == UInt8(ascii: "}") || b == UInt8(ascii: "]") {
                depth -= 1
                if depth < 0 { return false }
            } else if b == UInt8(ascii: ",") && depth == 0 {
                return false
            }
        }
        return depth == 0 && !inString && !range.isEmpty
    }

    private static func trimmed(_ bytes: [UInt8], _ range: Range<Int>) -> Range<Int> {
        var lower = range.lowerBound
        var upper = range.upperBound
        while lower < upper, isWhitespace(bytes[lower]) { lower += 1 }
        while upper > lower, isWhitespace(bytes[upper - 1]) { upper -= 1 }
        return lower..<upper
    }

    private static func splitLines(_ bytes: [UInt8]) -> SplitPayload {
        var records: [Range<Int>] = []
        var lines: [Int] = []
        var embeddable = true
        var start = 0
        var line = 0
        while start <= bytes.count {
            let end = bytes[start...].firstIndex(of: 0x0A) ?? bytes.count
            line += 1
            let range = trimmed(bytes, start..<end)
            if !range.isEmpty {
                records.append(range)
                lines.append(line)
                if embeddable && !isEmbeddable(bytes, range) { embeddable = false }
            }
            start = end + 1
        }
        return SplitPayload(bytes: bytes, records: records, lines: lines, embeddable: embeddable)
    }

    /// The same cut as `RecordReader.nextElement`, so positions agree.
    private static func splitArray(_ bytes: [UInt8], from: Int) -> SplitPayload {
        var records: [Range<Int>] = []
        var depth = 0
        var inString = false
        var escaped = false
        var start = from
        var sawComma = false
        var i = from
        while i < bytes.count {
            let b = bytes[i]
            if inString {
                if escaped {
                    escaped = false
                } else if b == UInt8(ascii: "\\") {
                    escaped = true
                } else if b == UInt8(ascii: "\"") {
                    inString = false
                }
            } else if b == UInt8(ascii: "\"") {
                inString = true
            } else if b == UInt8(ascii: "{") || b == UInt8(ascii: "[") {
                depth += 1
            } else if b == UInt8(ascii: "}") || b == UInt8(ascii: "]") {
                if depth > 0 {
                    depth -= 1
                } else {
                    let range = trimmed(bytes, start..<i)
                    let rest = bytes[(i + 1)...].contains { !isWhitespace($0) }
                    if b == UInt8(ascii: "}") || rest || (range.isEmpty && sawComma) {
                        return SplitPayload(bytes: bytes, records: records + [range], lines: [], embeddable: false)
                    }
                    if !range.isEmpty { records.append(range) }
                    return SplitPayload(bytes: bytes, records: records, lines: [], embeddable: true)
                }
            } else if b == UInt8(ascii: ",") && depth == 0 {
                let range = trimmed(bytes, start..<i)
                records.append(range)
                sawComma = true
                if range.isEmpty {
                    return SplitPayload(bytes: bytes, records: records, lines: [], embeddable: false)
                }
                start = i + 1
            }
            i += 1
        }
        // No closing bracket.
        records.append(trimmed(bytes, start..<bytes.count))
        return SplitPayload(bytes: bytes, records: records, lines: [], embeddable: false)
    }

    /// Identity events that Mixpanel's identity API documents without a `time`.
    static let identityEvents: Set<String> = ["$merge", "$create_alias", "$identify"]

    /// Gives `time` (the request's arrival, in ms) to records that lack one, when `all` is set
    /// (`/track`, as Mixpanel does) or when the record is an identity event (`/import`).
    ///
    /// Only records without the bytes `"time"` are parsed, so the common case costs a byte
    /// search. Records that do not parse are left as they are (the importer refuses them with
    /// the reason).
    static func defaultTime(_ payload: SplitPayload, nowMillis: Int64, all: Bool) -> SplitPayload {
        guard payload.embeddable else { return payload }
        let needle = Array("\"time\"".utf8)
        var changed: [Int: [UInt8]] = [:]
        for (index, range) in payload.records.enumerated() {
            let slice = payload.bytes[range]
            if contains(slice, needle) { continue }
            guard var object = try? JSONSerialization.jsonObject(with: Data(slice)) as? [String: Any],
                var properties = (object["properties"] ?? [String: Any]()) as? [String: Any],
                properties["time"] == nil
            else { continue }
            if !all {
                guard let name = object["event"] as? String, identityEvents.contains(name) else { continue }
            }
            properties["time"] = nowMillis
            object["properties"] = properties
            guard let data = try? JSONSerialization.data(withJSONObject: object) else { continue }
            changed[index] = Array(data)
        }
        guard !changed.isEmpty else { return payload }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(payload.bytes.count + changed.count * 32)
        var records: [Range<Int>] = []
        // Rebuilt as NDJSON (JSONSerialization writes one line); lines then number records 1...
        for (index, range) in payload.records.enumerated() {
            let start = bytes.count
            if let replacement = changed[index] {
                bytes.append(contentsOf: replacement)
            } else {
                bytes.append(contentsOf: payload.bytes[range].map { $0 == 0x0A || $0 == 0x0D ? 0x20 : $0 })
            }
            records.append(start..<bytes.count)
            bytes.append(0x0A)
        }
        let embeddable = payload.embeddable && records.allSatisfy { isEmbeddable(bytes, $0) }
        return SplitPayload(
            bytes: bytes, records: records, lines: Array(1...records.count), embeddable: embeddable)
    }

    private static func contains(_ haystack: ArraySlice<UInt8>, _ needle: [UInt8]) -> Bool {
        guard haystack.count >= needle.count else { return false }
        var i = haystack.startIndex
        let last = haystack.endIndex - needle.count
        while i <= last {
            if haystack[i] == needle[0] {
                var j = 1
                while j < needle.count && haystack[i + j] == needle[j] { j += 1 }
                if j == needle.count { return true }
            }
            i += 1
        }
        return false
    }
}
