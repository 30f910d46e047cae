import Foundation
import Logging
import PGClient

/// What one batch of profile updates did. Counts are records of the source.
public struct ProfileImportSummary: Sendable, Equatable {
    public var source: String
    public var batchId: Int64
    /// Records read (blank lines are not records).
    public var records = 0
    /// Updates applied to a profile.
    public var applied = 0
    /// Records refused; each is in `idmerge.refused_records` with its position, field and reason.
    public var refused = 0
    /// Profiles created by the batch (again, after a `$delete`).
    public var created = 0
    /// Profiles the batch deleted (`$delete`) and did not create again.
    public var deleted = 0
}

/// A record a profile import refused, as `idmerge.refused_records` holds it.
public struct RefusedProfileRecord: Sendable, Equatable {
    /// 1-based line of NDJSON, or 0-based index of a JSON array.
    public var position: Int
    public var positionKind: PositionKind
    /// The offending member, for example `$add.visits`, or `(record)`.
    public var field: String
    public var reason: String
}

/// Imports Engage profile updates (`$set`, `$set_once`, `$add`, `$append`, `$union`, `$remove`,
/// `$unset`, `$delete`) into a project: streaming, set-based, one transaction per source.
///
/// Records are cut by ``RecordReader`` (NDJSON or a JSON array, gzip detected) and checked
/// as JSON by ``JSONScanner`` so that nothing can fail the COPY of a whole batch; each is
/// then staged with COPY into a temp table, refused ones with their position and reason.
/// `idmerge.apply_profile_updates` judges the updates' shape and applies them in arrival
/// order, one fold per profile (`sql/300_*.sql` to `sql/303_*.sql` state the rules). The
/// batch is recorded in `idmerge.import_batches` with the source `profiles:NAME`.
///
/// ```swift
/// let summary = try ProfileImporter(connection: db, project: project, logger: logger)
///     .importBytes(body, name: "engage")
/// ```
public final class ProfileImporter {
    let connection: Connection
    let project: Project
    let logger: Logger
    let scanner = JSONScanner(wanted: [])

    public init(connection: Connection, project: Project, logger: Logger) {
        self.connection = connection
        self.project = project
        self.logger = logger
    }

    /// Imports a file, or standard input when `path` is `-`. Gzip is detected by its magic bytes.
    ///
    /// - Throws: ``SourceError`` when the source cannot be read (nothing is written), or
    ///   ``PostgresError`` when the database fails (the batch is rolled back).
    public func importFile(_ path: String) throws -> ProfileImportSummary {
        if path == "-" {
            let source = FileDescriptorSource(fd: STDIN_FILENO, name: "standard input", closeOnDeinit: false)
            return try importSource(source, name: "-")
        }
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw SourceError(source: path, reason: String(cString: strerror(errno))) }
        var info = stat()
        if fstat(fd, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR {
            close(fd)
            throw SourceError(source: path, reason: "is a directory")
        }
        return try importSource(FileDescriptorSource(fd: fd, name: path, closeOnDeinit: true), name: path)
    }

    /// Imports updates held in memory: an HTTP `/engage` body, a test.
    ///
    /// - Parameters:
    ///   - bytes: a JSON array or NDJSON of update objects, gzip or not.
    ///   - name: where they came from; the batch's source is `profiles:NAME`.
    ///   - decompressedLimit: the most bytes gzip may inflate to (nil: no limit).
    public func importBytes(_ bytes: [UInt8], name: String, decompressedLimit: Int? = nil) throws
        -> ProfileImportSummary
    {
        try importSource(MemorySource(bytes), name: name, decompressedLimit: decompressedLimit)
    }

    /// The records a batch refused, in source order (what `/engage?strict=1` answers with).
    public func refusedRecords(batchId: Int64) throws -> [RefusedProfileRecord] {
        try connection.query(
            """
            select position, position_kind, field, reason from idmerge.refused_records
            where batch_id = $1 order by id
            """, [batchId]
        ).rows.map { row in
            RefusedProfileRecord(
                position: try row.decode("position"),
                positionKind: PositionKind(rawValue: try row.decode("position_kind")) ?? .line,
                field: try row.decode("field"), reason: try row.decode("reason"))
        }
    }

    func importSource(_ source: ByteSource, name: String, decompressedLimit: Int? = nil) throws
        -> ProfileImportSummary
    {
        let reader = try RecordReader(source: source, name: name, decompressedLimit: decompressedLimit)
        return try connection.transaction { connection in
            try connection.execute(Self.stageDDL)
            let batchId: Int64 = try connection.query(
                "insert into idmerge.import_batches (project_id, source) values ($1, $2) returning id",
                [project.id, "profiles:" + name]
            ).first!.decode("id")
            var summary = ProfileImportSummary(source: name, batchId: batchId)
            try connection.copyIn(Self.stageCopy) { writer in
                var pos = 0
                while let record = try reader.next() {
                    summary.records += 1
                    defer { pos += 1 }
                    var line: [UInt8] = []
                    line.reserveCapacity(record.bytes.count + 32)
                    appendField(&line, String(pos))
                    appendField(&line, String(record.position))
                    appendField(&line, record.positionKind.rawValue)
                    if let (field, reason) = problem(record) {
                        appendField(&line, nil)
                        appendField(&line, field)
                        appendField(&line, reason)
                        // Invalid UTF-8 and NUL (which text cannot hold) become U+FFFD.
                        var raw = String(decoding: record.bytes, as: UTF8.self)
                        if raw.utf8.contains(0) { raw = raw.replacingOccurrences(of: "\u{0}", with: "\u{FFFD}") }
                        appendField(&line, raw, last: true)
                    } else {
                        record.bytes.withUnsafeBufferPointer { appendEscaped(&line, $0) }
                        line.append(0x09)
                        line.append(contentsOf: "\\N\t\\N\t\\N\n".utf8)
                    }
                    try writer.write(bytes: line)
                }
            }
            let result = try connection.query(
                "select * from idmerge.apply_profile_updates($1, $2)", [project.id, batchId]
            ).first!
            summary.applied = try result.decode("applied")
            summary.refused = try result.decode("refused")
            summary.created = try result.decode("created")
            summary.deleted = try result.decode("deleted")
            // Records refused by the database's checks keep their text as jsonb prints it.
            try connection.query(
                """
                insert into idmerge.refused_records (batch_id, position, position_kind, field, reason, raw)
                select $1, position, position_kind, refused_field, refused_reason, coalesce(raw, record::text)
                from pg_temp.idmerge_profile_stage
                where refused_reason is not null
                order by pos
                """, [batchId])
            try connection.query(
                """
                update idmerge.import_batches
                set finished_at = clock_timestamp(), records = $2, stored = $3, refused = $4
                where id = $1
                """, [batchId, summary.records, summary.applied, summary.refused])
            try connection.execute("truncate pg_temp.idmerge_profile_stage")
            logger.debug(
                "profiles \(name): \(summary.applied) applied, \(summary.refused) refused (batch \(batchId))")
            return summary
        }
    }

    /// Why a record cannot even be staged (broken JSON, too large), or nil.
    func problem(_ record: RawRecord) -> (field: String, reason: String)? {
        if let error = record.structuralError { return ("(record)", error) }
        if let length = record.truncatedLength ?? (record.bytes.count > Self.maxUpdateBytes ? record.bytes.count : nil)
        {
            return ("(record)", "update is \(length) bytes; at most \(Self.maxUpdateBytes) bytes (1 MB) of JSON")
        }
        guard record.bytes.first == UInt8(ascii: "{") else {
            return (
                "(record)", "a profile update must be a JSON object such as {\"$distinct_id\": \"u1\", \"$set\": {...}}"
            )
        }
        do {
            _ = try record.bytes.withUnsafeBufferPointer { try scanner.scan($0) }
        } catch let error as JSONScanError {
            return (error.field, error.reason)
        } catch {
            return ("(record)", "\(error)")
        }
        return nil
    }

    /// Largest accepted update, in bytes of JSON (Mixpanel P-R12: 1 MB per update).
    public static let maxUpdateBytes = EventRules.maxEventBytes

    // MARK: Staging

    static let stageDDL = """
        create temp table if not exists idmerge_profile_stage (
            pos bigint not null,
            position bigint not null,
            position_kind text not null,
            record jsonb,
            refused_field text,
            refused_reason text,
            raw text
        );
        truncate pg_temp.idmerge_profile_stage;
        """

    static let stageCopy = """
        copy pg_temp.idmerge_profile_stage (pos, position, position_kind, record, refused_field, refused_reason, raw)
        from stdin
        """

    private func appendField(_ line: inout [UInt8], _ value: String?, last: Bool = false) {
        if var value {
            value.withUTF8 { appendEscaped(&line, $0) }
        } else {
            line.append(contentsOf: "\\N".utf8)
        }
        line.append(last ? 0x0A : 0x09)
    }

    /// COPY text format: backslash, tab, newline and carriage return are escaped.
    private func appendEscaped(_ line: inout [UInt8], _ bytes: UnsafeBufferPointer<UInt8>) {
        for b in bytes {
            switch b {
            case 0x5C: line.append(contentsOf: [0x5C, 0x5C])
            case 0x09: line.append(contentsOf: [0x5C, UInt8(ascii: "t")])
            case 0x0A: line.append(contentsOf: [0x5C, UInt8(ascii: "n")])
            case 0x0D: line.append(contentsOf: [0x5C, UInt8(ascii: "r")])
            default: line.append(b)
            }
        }
    }
}
