import CZlib
import Foundation

/// A stream of bytes read in chunks.
protocol ByteSource: AnyObject {
    /// Reads up to `count` bytes into `buffer`; returns 0 at the end.
    func read(into buffer: UnsafeMutableRawPointer, count: Int) throws -> Int
}

/// An error reading the source itself (not a bad record): the import of that source fails.
public struct SourceError: Error, CustomStringConvertible {
    public var source: String
    public var reason: String
    public var description: String { "cannot read \(source): \(reason)" }

    public init(source: String, reason: String) {
        self.source = source
        self.reason = reason
    }
}

final class FileDescriptorSource: ByteSource {
    let fd: Int32
    let name: String
    let closeOnDeinit: Bool

    init(fd: Int32, name: String, closeOnDeinit: Bool) {
        self.fd = fd
        self.name = name
        self.closeOnDeinit = closeOnDeinit
    }

    deinit { if closeOnDeinit { close(fd) } }

    func read(into buffer: UnsafeMutableRawPointer, count: Int) throws -> Int {
        while true {
            let n = Foundation.read(fd, buffer, count)
            if n >= 0 { return n }
            if errno == EINTR { continue }
            throw SourceError(source: name, reason: String(cString: strerror(errno)))
        }
    }
}

/// Bytes already in memory (HTTP bodies, tests).
final class MemorySource: ByteSource {
    let data: [UInt8]
    var offset = 0
    init(_ data: [UInt8]) { self.data = data }

    func read(into buffer: UnsafeMutableRawPointer, count: Int) throws -> Int {
        let n = min(count, data.count - offset)
        guard n > 0 else { return 0 }
        data.withUnsafeBytes { raw in
            buffer.copyMemory(from: raw.baseAddress! + offset, byteCount: n)
        }
        offset += n
        return n
    }
}

/// Inflates a gzip (or zlib) stream from another source, with zlib; concatenated gzip
/// members are read one after another, as `gzip -d` does.
final class GzipSource: ByteSource {
    private let inner: ByteSource
    private let name: String
    private var stream = z_stream()
    private var input = [UInt8](repeating: 0, count: 1 << 16)
    private var inputOffset = 0
    private var innerEOF = false
    private var finished = false
    /// The most uncompressed bytes allowed (a guard against gzip bombs); nil for no limit.
    private let limit: Int?
    private var produced = 0

    init(inner: ByteSource, name: String, limit: Int? = nil) throws {
        self.inner = inner
        self.name = name
        self.limit = limit
        guard czlib_inflate_init_auto(&stream) == Z_OK else {
            throw SourceError(source: name, reason: "zlib could not start inflating")
        }
    }

    deinit { inflateEnd(&stream) }

    func read(into buffer: UnsafeMutableRawPointer, count: Int) throws -> Int {
        while !finished {
            if stream.avail_in == 0 && !innerEOF {
                let n = try input.withUnsafeMutableBytes { try inner.read(into: $0.baseAddress!, count: $0.count) }
                inputOffset = 0
                stream.avail_in = UInt32(n)
                if n == 0 { innerEOF = true }
            }
            if stream.avail_in == 0 && innerEOF {
                // The source has ended: cleanly only between gzip members.
                guard memberComplete else {
                    throw SourceError(source: name, reason: "the gzip data ends early (is the file truncated?)")
                }
                finished = true
                return 0
            }
            let available = stream.avail_in
            let status: Int32 = input.withUnsafeMutableBufferPointer { pointer in
                stream.next_in = pointer.baseAddress! + inputOffset
                stream.next_out = buffer.assumingMemoryBound(to: Bytef.self)
                stream.avail_out = UInt32(count)
                return inflate(&stream, Z_NO_FLUSH)
            }
            let consumed = Int(available - stream.avail_in)
            inputOffset += consumed
            if consumed > 0 { memberComplete = false }
            let out = count - Int(stream.avail_out)
            switch status {
            case Z_OK, Z_BUF_ERROR:
                break
            case Z_STREAM_END:
                memberComplete = true
                inflateReset(&stream)
            default:
                let message = stream.msg.map { String(cString: $0) } ?? "zlib status \(status)"
                throw SourceError(source: name, reason: "invalid gzip data: \(message)")
            }
            produced += out
            if let limit, produced > limit {
                throw SourceError(source: name, reason: "more than \(limit) bytes once decompressed")
            }
            if out > 0 { return out }
        }
        return 0
    }

    private var memberComplete = false
}

/// One record cut from a source: its position and bytes.
public struct RawRecord {
    /// 1-based line (NDJSON) or 0-based index (JSON array).
    public var position: Int
    public var positionKind: PositionKind
    /// The record's bytes (whitespace around it trimmed).
    public var bytes: [UInt8]
    /// Set when the record was longer than the reader keeps; `bytes` then holds its start.
    public var truncatedLength: Int?
    /// Set when the source's structure was broken at this record (unterminated array...).
    public var structuralError: String?

    public init(
        position: Int, positionKind: PositionKind, bytes: [UInt8], truncatedLength: Int? = nil,
        structuralError: String? = nil
    ) {
        self.position = position
        self.positionKind = positionKind
        self.bytes = bytes
        self.truncatedLength = truncatedLength
        self.structuralError = structuralError
    }
}

/// Whether a position is a line number or an array index.
public enum PositionKind: String, Sendable {
    case line
    case index
}

/// Cuts a byte stream into event records: NDJSON lines, or the elements of a JSON array.
///
/// The format is detected from the first non-whitespace byte (`[` means an array); gzip is
/// detected from its magic bytes and inflated on the fly. Memory stays flat: one chunk plus
/// the record being cut. A record longer than `maxKeptBytes` is cut short (its start kept
/// for the refused-records table) and reported with its full length.
final class RecordReader {
    private var source: ByteSource
    private let name: String
    private var buffer: [UInt8] = []
    private var start = 0
    private var eof = false
    private let chunkSize = 1 << 20
    let maxKeptBytes: Int
    private(set) var isArray = false
    private var arrayClosed = false
    private var lineNumber = 0
    private var arrayIndex = 0
    private var detected = false
    private var skippedBOM = false
    /// Bytes read from the (decompressed) source so far.
    private(set) var bytesRead = 0

    init(
        source: ByteSource, name: String, maxKeptBytes: Int = EventRules.maxEventBytes + 1,
        decompressedLimit: Int? = nil
    ) throws {
        self.name = name
        self.maxKeptBytes = maxKeptBytes
        self.source = source
        // Gzip detection by magic bytes.
        try fill()
        if buffer.count - start >= 2, buffer[start] == 0x1F, buffer[start + 1] == 0x8B {
            let prefix = Array(buffer[start...])
            buffer.removeAll(keepingCapacity: true)
            start = 0
            eof = false
            let chained = ChainSource(prefix: prefix, rest: source)
            self.source = try GzipSource(inner: chained, name: name, limit: decompressedLimit)
            bytesRead = 0
            try fill()
        }
    }

    /// Reads one more chunk; returns false at the end of the source.
    @discardableResult
    private func fill() throws -> Bool {
        if eof { return false }
        if start > 0 && start >= buffer.count / 2 {
            buffer.removeSubrange(0..<start)
            start = 0
        }
        let old = buffer.count
        buffer.reserveCapacity(old + chunkSize)
        buffer.append(contentsOf: repeatElement(0, count: chunkSize))
        let n = try buffer.withUnsafeMutableBytes { raw in
            try source.read(into: raw.baseAddress! + old, count: chunkSize)
        }
        buffer.removeLast(chunkSize - n)
        bytesRead += n
        if n == 0 { eof = true }
        return n > 0
    }

    /// The next record, or nil at the end of the source.
    func next() throws -> RawRecord? {
        while !detected {
            while true {
                while start < buffer.count, isWhitespace(buffer[start]) {
                    if buffer[start] == 0x0A { lineNumber += 1 }
                    start += 1
                }
                if start < buffer.count { break }
                if !(try fill()) { return nil }
            }
            // A UTF-8 byte order mark (editors on Windows write one) is not data.
            if !skippedBOM {
                skippedBOM = true
                if buffer.count - start < 3 { try fill() }
                if buffer.count - start >= 3, buffer[start] == 0xEF, buffer[start + 1] == 0xBB,
                    buffer[start + 2] == 0xBF
                {
                    start += 3
                    continue
                }
            }
            detected = true
            if buffer[start] == UInt8(ascii: "[") {
                isArray = true
                start += 1
            }
        }
        return isArray ? try nextElement() : try nextLine()
    }

    /// The index of the first newline at or after `from`, with memchr.
    private func firstNewline(from: Int) -> Int? {
        guard from < buffer.count else { return nil }
        return buffer.withUnsafeBufferPointer { bytes in
            guard let found = memchr(bytes.baseAddress! + from, 0x0A, bytes.count - from) else { return nil }
            return UnsafeRawPointer(bytes.baseAddress!).distance(to: UnsafeRawPointer(found))
        }
    }

    private func isWhitespace(_ b: UInt8) -> Bool { b == 0x20 || b == 0x0A || b == 0x0D || b == 0x09 }

    private func trimmed(_ range: Range<Int>) -> [UInt8] {
        var lower = range.lowerBound
        var upper = range.upperBound
        while lower < upper, isWhitespace(buffer[lower]) { lower += 1 }
        while upper > lower, isWhitespace(buffer[upper - 1]) { upper -= 1 }
        return Array(buffer[lower..<upper])
    }

    private func nextLine() throws -> RawRecord? {
        while true {
            var searched = 0
            var kept: [UInt8]? = nil
            var total = 0
            while true {
                let from = start + searched
                if let newline = firstNewline(from: from) {
                    lineNumber += 1
                    if let kept {
                        total += newline - start
                        start = newline + 1
                        return RawRecord(position: lineNumber, positionKind: .line, bytes: kept, truncatedLength: total)
                    }
                    let bytes = trimmed(start..<newline)
                    start = newline + 1
                    if bytes.isEmpty { break }
                    return RawRecord(position: lineNumber, positionKind: .line, bytes: bytes)
                }
                searched = buffer.count - start
                if kept == nil && searched > maxKeptBytes {
                    // Too long to keep: remember its start, count the rest, skip it.
                    kept = Array(buffer[start..<(start + maxKeptBytes)])
                    total = searched
                    start = buffer.count
                    searched = 0
                } else if kept != nil {
                    total += searched
                    start = buffer.count
                    searched = 0
                }
                if !(try fill()) {
                    if let kept {
                        lineNumber += 1
                        return RawRecord(position: lineNumber, positionKind: .line, bytes: kept, truncatedLength: total)
                    }
                    let bytes = trimmed(start..<buffer.count)
                    start = buffer.count
                    if bytes.isEmpty { return nil }
                    lineNumber += 1
                    return RawRecord(position: lineNumber, positionKind: .line, bytes: bytes)
                }
            }
        }
    }

    private func nextElement() throws -> RawRecord? {
        if arrayClosed { return try trailingData() }
        var depth = 0
        var inString = false
        var escaped = false
        var offset = 0  // bytes after `start` already scanned
        var kept: [UInt8]? = nil
        var total = 0
        func record(_ bytes: [UInt8], error: String? = nil) -> RawRecord {
            defer { arrayIndex += 1 }
            return RawRecord(
                position: arrayIndex, positionKind: .index, bytes: bytes,
                truncatedLength: kept == nil ? nil : total, structuralError: error)
        }
        while true {
            var cursor = start + offset
            while cursor < buffer.count {
                let b = buffer[cursor]
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
                        // The array's closing bracket (or a stray '}').
                        let bytes = kept ?? trimmed(start..<cursor)
                        total += cursor - start
                        start = cursor + 1
                        arrayClosed = true
                        if b == UInt8(ascii: "}") {
                            return record(bytes, error: "malformed JSON array: unbalanced '}'")
                        }
                        if bytes.isEmpty && kept == nil {
                            if sawComma { return record(bytes, error: "malformed JSON array: trailing ','") }
                            return try trailingData()
                        }
                        return record(bytes)
                    }
                } else if b == UInt8(ascii: ",") && depth == 0 {
                    let bytes = kept ?? trimmed(start..<cursor)
                    total += cursor - start
                    start = cursor + 1
                    sawComma = true
                    if bytes.isEmpty && kept == nil {
                        return record(bytes, error: "malformed JSON array: empty element")
                    }
                    return record(bytes)
                }
                cursor += 1
            }
            offset = cursor - start
            if kept == nil && offset > maxKeptBytes {
                kept = Array(buffer[start..<(start + maxKeptBytes)])
            }
            if kept != nil {
                total += offset
                start = buffer.count
                offset = 0
            }
            if !(try fill()) {
                let bytes = kept ?? trimmed(start..<buffer.count)
                start = buffer.count
                arrayClosed = true
                return record(bytes, error: "malformed JSON array: missing the closing ']'")
            }
        }
    }

    private var sawComma = false

    /// After the array's ']': anything but whitespace is reported once, then the end.
    private func trailingData() throws -> RawRecord? {
        while true {
            while start < buffer.count, isWhitespace(buffer[start]) { start += 1 }
            if start < buffer.count {
                let rest = Array(buffer[start..<min(buffer.count, start + 4096)])
                start = buffer.count
                while try fill() { start = buffer.count }
                defer { arrayIndex += 1 }
                return RawRecord(
                    position: arrayIndex, positionKind: .index, bytes: rest,
                    structuralError: "unexpected data after the end of the JSON array")
            }
            if !(try fill()) { return nil }
        }
    }
}

/// Replays a prefix already read, then the rest of a source.
final class ChainSource: ByteSource {
    var prefix: [UInt8]
    var offset = 0
    let rest: ByteSource

    init(prefix: [UInt8], rest: ByteSource) {
        self.prefix = prefix
        self.rest = rest
    }

    func read(into buffer: UnsafeMutableRawPointer, count: Int) throws -> Int {
        if offset < prefix.count {
            let n = min(count, prefix.count - offset)
            prefix.withUnsafeBytes { raw in buffer.copyMemory(from: raw.baseAddress! + offset, byteCount: n) }
            offset += n
            return n
        }
        return try rest.read(into: buffer, count: count)
    }
}
