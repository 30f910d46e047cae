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
            try connection.execute(Self.stageDDL)
            let batchId: Int64 = try connection.query(
                "insert into idmerge.import_batches (project_id, source) values ($1, $2) returning id",
                [project.id, name]
            ).first!.decode("id")
            var summary = ImportSummary(source: name, batchId: batchId)
            var lastReport = Date()
            try connection.copyIn(Self.stageCopy) { writer in
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
            try connection.query(
                """
                insert into idmerge.refused_records (batch_id, position, position_kind, insert_id, field, reason, raw)
                select $1, position, position_kind, insert_id, refused_field, refused_reason, raw
                from pg_temp.idmerge_stage
                where refused_reason is not null
                order by pos
                """, [batchId])
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

    static let stageDDL = """
        create temp table if not exists idmerge_stage (
            pos bigint not null,
            position bigint not null,
            position_kind text not null,
            event text,
            time_ms bigint,
            insert_id text,
            ingested_id text,
            device_id text,
            user_id text,
            warning text,
            properties jsonb,
            refused_field text,
            refused_reason text,
            raw text
        );
        truncate pg_temp.idmerge_stage;
        """

    static let stageCopy = """
        copy pg_temp.idmerge_stage (pos, position, position_kind, event, time_ms, insert_id, ingested_id, device_id,
            user_id, warning, properties, refused_field, refused_reason, raw) from stdin
        """

    private func writeAccepted(
        _ writer: CopyWriter, pos: Int, record: RawRecord, event: EventRules.Accepted, range: Range<Int>
    ) throws {
        var line: [UInt8] = []
        line.reserveCapacity(range.count + 128)
        appendNumber(&line, pos)
        appendNumber(&line, record.position)
        appendText(&line, record.positionKind.rawValue)
        appendText(&line, event.event)
        appendNumber(&line, Int(event.timeMillis))
        appendText(&line, event.insertId)
        appendText(&line, event.ingestedDistinctId)
        appendText(&line, event.deviceId)
        appendText(&line, event.userId)
        appendText(&line, event.warning)
        record.bytes.withUnsafeBufferPointer { appendEscaped(&line, UnsafeBufferPointer(rebasing: $0[range])) }
        line.append(0x09)
        line.append(contentsOf: "\\N\t\\N\t\\N\n".utf8)
        try writer.write(bytes: line)
    }

    private func writeRefused(
        _ writer: CopyWriter, pos: Int, record: RawRecord, field: String, reason: String, insertId: String?
    ) throws {
        var line: [UInt8] = []
        appendNumber(&line, pos)
        appendNumber(&line, record.position)
        appendText(&line, record.positionKind.rawValue)
        for _ in 0..<2 { appendText(&line, nil) }
        appendText(&line, insertId.map { String($0.prefix(255)) })
        for _ in 0..<5 { appendText(&line, nil) }
        appendText(&line, field)
        appendText(&line, reason)
        // The raw record as text: invalid UTF-8 and NUL (which PostgreSQL text cannot hold)
        // become U+FFFD.
        var raw = String(decoding: record.bytes, as: UTF8.self)
        raw.withUTF8 { bytes in
            if bytes.contains(0) {
                let replaced = bytes.flatMap { $0 == 0 ? [0xEF, 0xBF, 0xBD] : [$0] }
                replaced.withUnsafeBufferPointer { appendEscaped(&line, $0) }
            } else {
                appendEscaped(&line, bytes)
            }
        }
        line.append(0x0A)
        try writer.write(bytes: line)
    }

    @inline(__always) private func appendNumber(_ line: inout [UInt8], _ value: Int) {
        line.append(contentsOf: String(value).utf8)
        line.append(0x09)
    }

    @inline(__always) private func appendText(_ line: inout [UInt8], _ value: String?) {
        if let value {
            var copy = value
            copy.withUTF8 { appendEscaped(&line, $0) }
        } else {
            line.append(0x5C)
            line.append(UInt8(ascii: "N"))
        }
        line.append(0x09)
    }

    /// COPY text format: backslash, tab, newline and carriage return are escaped.
    @inline(__always) private func appendEscaped(_ line: inout [UInt8], _ bytes: UnsafeBufferPointer<UInt8>) {
        for b in bytes {
            switch b {
            case 0x5C:
                line.append(0x5C)
                line.append(0x5C)
            case 0x09:
                line.append(0x5C)
                line.append(UInt8(ascii: "t"))
            case 0x0A:
                line.append(0x5C)
                line.append(UInt8(ascii: "n"))
            case 0x0D:
                line.append(0x5C)
                line.append(UInt8(ascii: "r"))
            default: line.append(b)
            }
        }
    }
}
