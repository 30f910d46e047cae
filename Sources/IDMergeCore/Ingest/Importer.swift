import Foundation
import Logging
import PGClient

/// What one import batch did. Counts are records of the source.
public struct ImportSummary: Sendable, Equatable {
    public var source: String
    public var batchId: Int64
    /// Records read (blank lines are not records).
    public var records = 0
    /// Events stored: new, or replacing an earlier copy (the latest copy wins).
    public var stored = 0
    /// Records that duplicated an event stored before or earlier in the same batch.
    public var duplicates = 0
    /// Records dropped because they carry `$ignore`.
    public var ignored = 0
    /// Events stored with an identity warning (a placeholder id was ignored).
    public var warnings = 0
    /// Records refused; each is in `idmerge.refused_records` with its position, field and reason.
    public var refused = 0
    /// Identity links this batch made.
    public var links = 0
}

/// Imports events into a project: streaming, set-based, one transaction per source.
///
/// Each record is validated by ``JSONScanner`` and ``EventRules``, then streamed with COPY
/// into a temp staging table together with the refused records (so memory stays flat
/// whatever the size of the source). One SQL function per ID Merge mode then moves the
/// batch into `idmerge.events` and the identity map, set-based. The source's transaction
/// commits all of it or nothing: a failure half-way leaves no trace but the error.
public final class Importer {
    let connection: Connection
    let project: Project
    let logger: Logger
    let scanner = JSONScanner(wanted: EventRules.wantedProperties)
    /// Called about every second with records and bytes read so far.
    public var progress: ((_ records: Int, _ bytes: Int) -> Void)?
    /// Whether `$merge` events may merge (Original ID Merge). False for unauthenticated sources
    /// such as HTTP `/track`: decisions.md accepts `$merge` only through authenticated import.
    public var allowMerge = true

    public init(connection: Connection, project: Project, logger: Logger) {
        self.connection = connection
        self.project = project
        self.logger = logger
    }

    /// Imports a file, or standard input when `path` is `-`. Gzip is detected by its magic bytes.
    ///
    /// - Throws: ``SourceError`` when the source cannot be read (nothing is written), or
    ///   ``PostgresError`` when the database fails (the batch is rolled back).
    public func importFile(_ path: String) throws -> ImportSummary {
        let source: ByteSource
        let name: String
        if path == "-" {
            source = FileDescriptorSource(fd: STDIN_FILENO, name: "standard input", closeOnDeinit: false)
            name = "-"
        } else {
            let fd = open(path, O_RDONLY)
            guard fd >= 0 else { throw SourceError(source: path, reason: String(cString: strerror(errno))) }
            var info = stat()
            if fstat(fd, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR {
                close(fd)
                throw SourceError(source: path, reason: "is a directory")
            }
            source = FileDescriptorSource(fd: fd, name: path, closeOnDeinit: true)
            name = path
        }
        return try importSource(source, name: name)
    }

    /// Imports bytes held in memory (an HTTP body, a test).
    public func importBytes(_ bytes: [UInt8], name: String, decompressedLimit: Int? = nil) throws -> ImportSummary {
        try importSource(MemorySource(bytes), name: name, decompressedLimit: decompressedLimit)
    }

    func importSource(_ source: ByteSource, name: String, decompressedLimit: Int? = nil) throws -> ImportSummary {
        let reader = try RecordReader(source: source, name: name, decompressedLimit: decompressedLimit)
        let rules = EventRules(mode: project.mode, nowMillis: Int64(Date().timeIntervalSince1970 * 1000))
        let started = Date()
        return try connection.transaction { connection in
            let batch = try connection.query(
                """
                insert into idmerge.import_batches (project_id, source) values ($1, $2)
                returning id, pg_my_temp_schema() = 0 as fresh_session
                """,
                [project.id, name]
            ).first!
            let batchId: Int64 = try batch.decode("id")
            if try batch.decode("fresh_session", as: Bool.self) {
                // Only before the session's first temp table can its temp buffers be sized.
                try connection.query(Self.tempBuffers)
            }
            try connection.execute(Self.stageDDL)
            var summary = ImportSummary(source: name, batchId: batchId)
            var lastReport = Date()
            try connection.copyIn(Self.stageCopy) { writer in
                try writer.write(bytes: BinaryCopy.header)
                var pos = 0
                while let record = try reader.next() {
                    summary.records += 1
                    defer { pos += 1 }
                    switch classify(record, rules: rules) {
                    case .accept(let event, let range):
                        if event.warning != nil { summary.warnings += 1 }
                        try writeAccepted(writer, pos: pos, record: record, event: event, range: range)
                    case .ignore:
                        summary.ignored += 1
                    case .refuse(let field, let reason, let insertId):
                        summary.refused += 1
                        try writeRefused(
                            writer, pos: pos, record: record, field: field, reason: reason, insertId: insertId)
                    }
                    if summary.records % 4096 == 0, let progress, Date().timeIntervalSince(lastReport) >= 1 {
                        lastReport = Date()
                        progress(summary.records, reader.bytesRead)
                    }
                }
                try writer.write(bytes: BinaryCopy.trailer)
            }
            let copied = Date()
            logger.debug("staged \(summary.records) records in \(copied.timeIntervalSince(started)) s")
            let merge: String
            switch project.mode {
            case .simplified: merge = "select * from idmerge.merge_staged_simplified($1, $2)"
            case .original: merge = "select * from idmerge.merge_staged_original($1, $2, $3)"
            case .legacy: merge = "select * from idmerge.merge_staged_legacy($1, $2)"
            }
            let parameters: [any PostgresBindable] =
                project.mode == .original ? [project.id, batchId, allowMerge] : [project.id, batchId]
            let result = try connection.query(merge, parameters).first!
            summary.stored = try result.decode("stored")
            summary.duplicates = try result.decode("duplicates")
            summary.links = try result.decode("links")
            logger.debug("merged the batch in \(Date().timeIntervalSince(copied)) s")
            if summary.refused > 0 {
                try connection.query(
                    """
                    insert into idmerge.refused_records (batch_id, position, position_kind, insert_id, field, reason, raw)
                    select $1, position, position_kind, insert_id, refused_field, refused_reason, raw
                    from pg_temp.idmerge_stage
                    where refused_reason is not null
                    order by pos
                    """, [batchId])
            }
            try connection.query(
                """
                update idmerge.import_batches
                set finished_at = clock_timestamp(), records = $2, stored = $3, duplicates = $4, ignored = $5,
                    warnings = $6, refused = $7
                where id = $1
                """,
                [
                    batchId, summary.records, summary.stored, summary.duplicates, summary.ignored, summary.warnings,
                    summary.refused,
                ])
            try connection.execute("truncate pg_temp.idmerge_stage")
            progress?(summary.records, reader.bytesRead)
            return summary
        }
    }

    enum Classified {
        case accept(EventRules.Accepted, Range<Int>)
        case ignore
        case refuse(field: String, reason: String, insertId: String?)
    }

    func classify(_ record: RawRecord, rules: EventRules) -> Classified {
        if let error = record.structuralError {
            return .refuse(field: "(record)", reason: error, insertId: nil)
        }
        if let length = record.truncatedLength
            ?? (record.bytes.count > EventRules.maxEventBytes ? record.bytes.count : nil)
        {
            return .refuse(
                field: "(record)",
                reason: "event is \(length) bytes; at most \(EventRules.maxEventBytes) bytes (1 MB) of JSON",
                insertId: nil)
        }
        let scanned: ScannedRecord
        do {
            scanned = try record.bytes.withUnsafeBufferPointer { try scanner.scan($0) }
        } catch let error as JSONScanError {
            return .refuse(field: error.field, reason: error.reason, insertId: nil)
        } catch {
            return .refuse(field: "(record)", reason: "\(error)", insertId: nil)
        }
        var insertId: String? = nil
        if case .string(let text)? = scanned.fields["$insert_id"] { insertId = text }
        switch rules.apply(scanned) {
        case .accept(let event): return .accept(event, scanned.propertiesRange!)
        case .ignore: return .ignore
        case .refuse(let field, let reason): return .refuse(field: field, reason: reason, insertId: insertId)
        }
    }

    // MARK: Staging

    /// Local buffers for the session's temp tables (PostgreSQL's default is 8 MB): the staged
    /// batch is read several times by the merge, and a stage that fits is read from memory
    /// rather than through the kernel. Allocated only as the stage grows (a 1M-event batch
    /// stages about 300 MB); set once per session, before its first temp table, and never
    /// lowered.
    static let tempBuffers = """
        select set_config('temp_buffers', '256MB', false)
        where pg_size_bytes(current_setting('temp_buffers')) < pg_size_bytes('256MB')
        """

    /// The staging table, once per session, emptied for each source. The columns every pass
    /// of the merge reads come first, so reading a row stops before its properties.
    /// `superseded` is not copied: the Simplified merge marks the earlier copies of a
    /// duplicate with it. JIT
    /// compilation is off for the import's transaction: the planner's estimates for a large
    /// batch pass the JIT thresholds, and compiling (a second or more) never paid back here
    /// (BENCHMARKS.md).
    static let stageDDL = """
        set local jit = off;
        create temp table if not exists idmerge_stage (
            pos bigint not null,
            time_ms bigint,
            superseded boolean not null default false,
            refused_reason text,
            event text,
            insert_id text,
            ingested_id text,
            device_id text,
            user_id text,
            warning text,
            properties jsonb,
            position bigint not null,
            position_kind text not null,
            refused_field text,
            raw text
        );
        truncate pg_temp.idmerge_stage;
        """

    /// Binary COPY (PostgreSQL's `PGCOPY` format): no escaping on either side, integers as
    /// 8 bytes; text and `jsonb` (version byte 1, then the JSON text) arrive as their UTF-8
    /// bytes and the server still checks the encoding and parses the `jsonb`.
    static let stageCopy = """
        copy pg_temp.idmerge_stage (pos, position, position_kind, event, time_ms, insert_id, ingested_id, device_id,
            user_id, warning, properties, refused_field, refused_reason, raw) from stdin with (format binary)
        """

    /// Columns of every staged row (`stageCopy`).
    static let stageColumns: Int16 = 14

    private func writeAccepted(
        _ writer: CopyWriter, pos: Int, record: RawRecord, event: EventRules.Accepted, range: Range<Int>
    ) throws {
        try writer.append { line in
            BinaryCopy.appendInt16(&line, Self.stageColumns)
            BinaryCopy.appendInt64(&line, Int64(pos))
            BinaryCopy.appendInt64(&line, Int64(record.position))
            BinaryCopy.appendText(&line, record.positionKind.rawValue)
            BinaryCopy.appendText(&line, event.event)
            BinaryCopy.appendInt64(&line, event.timeMillis)
            BinaryCopy.appendText(&line, event.insertId)
            BinaryCopy.appendText(&line, event.ingestedDistinctId)
            BinaryCopy.appendText(&line, event.deviceId)
            BinaryCopy.appendText(&line, event.userId)
            BinaryCopy.appendText(&line, event.warning)
            record.bytes.withUnsafeBufferPointer { bytes in
                BinaryCopy.appendJSONB(&line, UnsafeBufferPointer(rebasing: bytes[range]))
            }
            for _ in 0..<3 { BinaryCopy.appendNull(&line) }
        }
    }

    private func writeRefused(
        _ writer: CopyWriter, pos: Int, record: RawRecord, field: String, reason: String, insertId: String?
    ) throws {
        // The raw record as text: invalid UTF-8 and NUL (which PostgreSQL text cannot hold)
        // become U+FFFD.
        var raw = String(decoding: record.bytes, as: UTF8.self)
        if raw.utf8.contains(0) {
            raw = String(decoding: raw.utf8.flatMap { $0 == 0 ? [0xEF, 0xBF, 0xBD] : [$0] }, as: UTF8.self)
        }
        try writer.append { line in
            BinaryCopy.appendInt16(&line, Self.stageColumns)
            BinaryCopy.appendInt64(&line, Int64(pos))
            BinaryCopy.appendInt64(&line, Int64(record.position))
            BinaryCopy.appendText(&line, record.positionKind.rawValue)
            for _ in 0..<2 { BinaryCopy.appendNull(&line) }
            BinaryCopy.appendText(&line, insertId.map { String($0.prefix(255)) })
            for _ in 0..<5 { BinaryCopy.appendNull(&line) }
            BinaryCopy.appendText(&line, field)
            BinaryCopy.appendText(&line, reason)
            BinaryCopy.appendText(&line, raw)
        }
    }
}

/// Writers for PostgreSQL's binary COPY format: a header, then per row a 16-bit field count
/// and per field a 32-bit length (-1 for null) and the value's bytes; a trailer of -1. All
/// integers are big-endian.
enum BinaryCopy {
    /// Signature, flags (no OIDs) and an empty header extension.
    static let header: [UInt8] = Array("PGCOPY\n".utf8) + [0xFF, 0x0D, 0x0A, 0x00] + [0, 0, 0, 0] + [0, 0, 0, 0]
    static let trailer: [UInt8] = [0xFF, 0xFF]

    @inline(__always) static func appendInt16(_ line: inout [UInt8], _ value: Int16) {
        withUnsafeBytes(of: value.bigEndian) { line.append(contentsOf: $0) }
    }

    @inline(__always) static func appendInt32(_ line: inout [UInt8], _ value: Int32) {
        withUnsafeBytes(of: value.bigEndian) { line.append(contentsOf: $0) }
    }

    /// A `bigint` field.
    @inline(__always) static func appendInt64(_ line: inout [UInt8], _ value: Int64) {
        appendInt32(&line, 8)
        withUnsafeBytes(of: value.bigEndian) { line.append(contentsOf: $0) }
    }

    @inline(__always) static func appendNull(_ line: inout [UInt8]) {
        appendInt32(&line, -1)
    }

    /// A `text` field: the UTF-8 bytes, or null.
    @inline(__always) static func appendText(_ line: inout [UInt8], _ value: String?) {
        guard let value else { return appendNull(&line) }
        let done: Void? = value.utf8.withContiguousStorageIfAvailable { bytes in
            appendInt32(&line, Int32(bytes.count))
            line.append(contentsOf: bytes)
        }
        if done == nil {
            let bytes = Array(value.utf8)
            appendInt32(&line, Int32(bytes.count))
            line.append(contentsOf: bytes)
        }
    }

    /// A `jsonb` field from JSON text: version 1, then the text.
    @inline(__always) static func appendJSONB(_ line: inout [UInt8], _ json: UnsafeBufferPointer<UInt8>) {
        appendInt32(&line, Int32(json.count + 1))
        line.append(1)
        line.append(contentsOf: json)
    }
}
