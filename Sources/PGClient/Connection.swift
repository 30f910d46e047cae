import CLibPQ
import Foundation
import Logging

/// One connection to PostgreSQL over libpq: the only place in IDMerge that calls libpq.
///
/// A connection is used by one task or thread at a time (it is not `Sendable`); open one per
/// worker. Every result goes through one `check` that maps libpq's status and the server's
/// SQLSTATE to a ``PostgresError``. The connection is closed on every path: by ``close()``,
/// or when the object is released, or at once when connecting fails.
///
/// Sessions run with `TimeZone = 'UTC'` and `DateStyle = 'ISO'`, so timestamps are read and
/// written in UTC. NOTICE and WARNING messages from the server go to the logger instead of
/// stderr.
public final class Connection {
    private var handle: OpaquePointer?
    private let noticeBox: NoticeBox
    /// The logger that receives the server's notices.
    public let logger: Logger

    private init(handle: OpaquePointer, logger: Logger) {
        self.handle = handle
        self.logger = logger
        self.noticeBox = NoticeBox(logger: logger)
        let context = Unmanaged.passUnretained(noticeBox).toOpaque()
        PQsetNoticeReceiver(handle, noticeReceiver, context)
    }

    deinit { close() }

    /// Opens a connection.
    ///
    /// - Parameters:
    ///   - conninfo: a `postgresql://` URL or a `key=value` string, passed to libpq unchanged
    ///     (`PQconnectdbParams` with `expand_dbname`), so `sslmode`, service files, `.pgpass`
    ///     and the `PG*` variables all work. An empty string means libpq's defaults.
    ///   - applicationName: shown in `pg_stat_activity` unless the URL sets its own.
    ///   - logger: receives the server's NOTICE messages.
    /// - Throws: ``PostgresError`` of kind `.connection` with libpq's message (which names
    ///   the host and port tried, never the password).
    public static func connect(
        _ conninfo: String, applicationName: String = "idmerge", logger: Logger = Logger(label: "idmerge.pg")
    ) throws -> Connection {
        let keys = ["dbname", "fallback_application_name", "client_encoding"]
        let values = [conninfo, applicationName, "UTF8"]
        let handle = withArrayOfCStrings(keys) { keyPointers in
            withArrayOfCStrings(values) { valuePointers in
                PQconnectdbParams(keyPointers, valuePointers, 1)
            }
        }
        guard let handle else {
            throw PostgresError(kind: .connection, code: .clientError, message: "libpq could not allocate a connection")
        }
        guard PQstatus(handle) == CONNECTION_OK else {
            let message = redactSecrets(
                String(cString: PQerrorMessage(handle)).trimmingCharacters(in: .whitespacesAndNewlines),
                conninfo: conninfo)
            PQfinish(handle)
            throw PostgresError(
                kind: .connection, code: .sqlclientUnableToEstablishSQLConnection, message: message)
        }
        let connection = Connection(handle: handle, logger: logger)
        try connection.execute("set time zone 'UTC'; set datestyle = 'ISO, YMD'; set intervalstyle = 'postgres'")
        return connection
    }

    /// Closes the connection. Safe to call more than once.
    public func close() {
        if let handle {
            PQfinish(handle)
            self.handle = nil
        }
    }

    /// The server's version number, for example `150018`.
    public var serverVersion: Int { handle.map { Int(PQserverVersion($0)) } ?? 0 }

    private func requireHandle() throws -> OpaquePointer {
        guard let handle else {
            throw PostgresError(kind: .connection, code: .connectionFailure, message: "the connection is closed")
        }
        return handle
    }

    // MARK: Queries

    /// Runs one statement with bound parameters and returns its rows.
    ///
    /// - Parameters:
    ///   - sql: one SQL statement with `$1`, `$2`, ... placeholders.
    ///   - parameters: values bound in order; never spliced into the SQL text.
    /// - Throws: ``PostgresError`` with the server's SQLSTATE.
    /// - Important: identifiers cannot be parameters; quote them with ``quoteIdentifier(_:)``.
    @discardableResult
    public func query(_ sql: String, _ parameters: [any PostgresBindable] = []) throws -> QueryResult {
        let handle = try requireHandle()
        let texts = parameters.map { $0.postgresText }
        let result: OpaquePointer? = withArrayOfOptionalCStrings(texts) { pointers in
            PQexecParams(handle, sql, Int32(texts.count), nil, pointers, nil, nil, 0)
        }
        return try consume(result, kind: .statement)
    }

    /// Runs one or more statements without parameters (migrations, `set`, DDL).
    ///
    /// - Important: never build `sql` from values; use ``query(_:_:)`` with parameters.
    public func execute(_ sql: String) throws {
        let handle = try requireHandle()
        _ = try consume(PQexec(handle, sql), kind: .statement)
    }

    private func consume(_ result: OpaquePointer?, kind: PostgresError.Kind) throws -> QueryResult {
        defer { if let result { PQclear(result) } }
        try check(result, kind: kind)
        guard let result else { return QueryResult(columns: [], rows: [], affectedRows: 0) }
        let columnCount = Int(PQnfields(result))
        let rowCount = Int(PQntuples(result))
        var columns: [String] = []
        columns.reserveCapacity(columnCount)
        var index: [String: Int] = [:]
        for c in 0..<columnCount {
            let name = String(cString: PQfname(result, Int32(c)))
            columns.append(name)
            if index[name] == nil { index[name] = c }
        }
        var rows: [Row] = []
        rows.reserveCapacity(rowCount)
        for r in 0..<rowCount {
            var values: [String?] = []
            values.reserveCapacity(columnCount)
            for c in 0..<columnCount {
                if PQgetisnull(result, Int32(r), Int32(c)) == 1 {
                    values.append(nil)
                } else {
                    values.append(String(cString: PQgetvalue(result, Int32(r), Int32(c))))
                }
            }
            rows.append(Row(columnIndex: index, values: values))
        }
        let affected = Int(String(cString: PQcmdTuples(result))) ?? 0
        return QueryResult(columns: columns, rows: rows, affectedRows: affected)
    }

    /// The one place that turns a libpq result status into success or a typed error.
    private func check(_ result: OpaquePointer?, kind: PostgresError.Kind) throws {
        guard let result else {
            throw PostgresError(kind: kind, code: .connectionFailure, message: lastErrorMessage())
        }
        switch PQresultStatus(result) {
        case PGRES_COMMAND_OK, PGRES_TUPLES_OK, PGRES_EMPTY_QUERY, PGRES_COPY_IN, PGRES_COPY_OUT,
            PGRES_SINGLE_TUPLE:
            return
        default:
            throw makeError(result, kind: kind)
        }
    }

    private func makeError(_ result: OpaquePointer, kind: PostgresError.Kind) -> PostgresError {
        func field(_ code: Int32) -> String? {
            guard let pointer = PQresultErrorField(result, code) else { return nil }
            return String(cString: pointer)
        }
        let state = field(clibpq_diag_sqlstate()).map { SQLState($0) } ?? .clientError
        let message =
            field(clibpq_diag_message_primary())
            ?? String(cString: PQresultErrorMessage(result)).trimmingCharacters(in: .whitespacesAndNewlines)
        return PostgresError(
            kind: kind, code: state, message: message.isEmpty ? lastErrorMessage() : message,
            detail: field(clibpq_diag_message_detail()), hint: field(clibpq_diag_message_hint()),
            constraint: field(clibpq_diag_constraint_name()))
    }

    private func lastErrorMessage() -> String {
        guard let handle else { return "the connection is closed" }
        let text = String(cString: PQerrorMessage(handle)).trimmingCharacters(in: .whitespacesAndNewlines)
        return text.isEmpty ? "unknown libpq error" : text
    }

    // MARK: Transactions

    /// Runs `body` inside `BEGIN` ... `COMMIT`; any thrown error rolls back and is rethrown.
    ///
    /// - Important: transactions do not nest. Inside another transaction PostgreSQL only
    ///   warns about the second `BEGIN`, and this method's `COMMIT` would end the outer one.
    /// - Throws: `body`'s error (after the rollback), or ``PostgresError``.
    public func transaction<T>(_ body: (Connection) throws -> T) throws -> T {
        try execute("begin")
        do {
            let value = try body(self)
            try execute("commit")
            return value
        } catch {
            try? execute("rollback")
            throw error
        }
    }

    // MARK: Advisory locks

    /// Takes a session-level advisory lock, runs `body`, and releases it on every path.
    ///
    /// - Parameters:
    ///   - key: the lock's 64-bit key (IDMerge derives keys with ``advisoryKey(_:)``).
    ///   - wait: when false and another session holds the lock, returns `nil` at once
    ///     instead of waiting.
    /// - Returns: `body`'s value, or `nil` when `wait` is false and the lock was busy.
    public func withAdvisoryLock<T>(key: Int64, wait: Bool = true, _ body: () throws -> T) throws -> T? {
        if wait {
            try query("select pg_advisory_lock($1)", [key])
        } else {
            let row = try query("select pg_try_advisory_lock($1) as locked", [key]).first
            guard try row?.decode("locked", as: Bool.self) == true else { return nil }
        }
        defer { _ = try? query("select pg_advisory_unlock($1)", [key]) }
        return try body()
    }

    /// A stable 64-bit advisory-lock key for a name (FNV-1a of its UTF-8 bytes).
    public static func advisoryKey(_ name: String) -> Int64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in name.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x100_0000_01b3
        }
        return Int64(bitPattern: hash)
    }

    // MARK: COPY

    /// Streams rows into `COPY ... FROM STDIN`.
    ///
    /// `producer` writes the COPY payload (text or CSV format, as `sql` says) through the
    /// ``CopyWriter``. Data is sent in chunks as it is written, so memory stays flat. If
    /// `producer` throws, the COPY is aborted with `PQputCopyEnd(errormsg)` (CopyFail), the
    /// server's results are drained, and the producer's error is rethrown.
    ///
    /// - Returns: the number of rows the server copied.
    /// - Throws: the producer's error, or ``PostgresError`` of kind `.copy`.
    /// - Important: `sql` is sent as is; table and column names in it are not escaped.
    @discardableResult
    public func copyIn(_ sql: String, _ producer: (CopyWriter) throws -> Void) throws -> Int {
        let handle = try requireHandle()
        let start = PQexec(handle, sql)
        defer { if let start { PQclear(start) } }
        try check(start, kind: .copy)
        guard let start, PQresultStatus(start) == PGRES_COPY_IN else {
            drain()
            throw PostgresError(kind: .copy, code: .clientError, message: "the statement did not start COPY FROM STDIN")
        }
        let writer = CopyWriter(handle: handle)
        do {
            try producer(writer)
            try writer.flush()
        } catch {
            PQputCopyEnd(handle, "the producer failed: \(type(of: error))")
            drain()
            throw error
        }
        guard PQputCopyEnd(handle, nil) == 1 else {
            let message = lastErrorMessage()
            drain()
            throw PostgresError(kind: .copy, code: .connectionFailure, message: message)
        }
        var firstError: PostgresError?
        var copied = 0
        while let result = PQgetResult(handle) {
            if firstError == nil {
                if PQresultStatus(result) == PGRES_COMMAND_OK {
                    copied = Int(String(cString: PQcmdTuples(result))) ?? 0
                } else {
                    firstError = makeError(result, kind: .copy)
                }
            }
            PQclear(result)
        }
        if let firstError { throw firstError }
        return copied
    }

    /// Runs `COPY ... TO STDOUT` and hands each row's bytes (with its newline) to `handler`.
    public func copyOut(_ sql: String, _ handler: (UnsafeRawBufferPointer) throws -> Void) throws {
        let handle = try requireHandle()
        let start = PQexec(handle, sql)
        defer { if let start { PQclear(start) } }
        try check(start, kind: .copy)
        var failure: Error?
        while true {
            var buffer: UnsafeMutablePointer<CChar>?
            let length = PQgetCopyData(handle, &buffer, 0)
            if length > 0, let buffer {
                if failure == nil {
                    do { try handler(UnsafeRawBufferPointer(start: buffer, count: Int(length))) } catch {
                        failure = error
                    }
                }
                PQfreemem(buffer)
            } else {
                break
            }
        }
        var serverError: PostgresError?
        while let result = PQgetResult(handle) {
            if serverError == nil, PQresultStatus(result) != PGRES_COMMAND_OK {
                serverError = makeError(result, kind: .copy)
            }
            PQclear(result)
        }
        if let failure { throw failure }
        if let serverError { throw serverError }
    }

    private func drain() {
        guard let handle else { return }
        while let result = PQgetResult(handle) { PQclear(result) }
    }

    // MARK: Cancellation

    /// A token that cancels the statement this connection is running, from any thread
    /// (for example a signal handler).
    public func makeCancelToken() -> CancelToken? {
        guard let handle, let cancel = PQgetCancel(handle) else { return nil }
        return CancelToken(cancel: cancel)
    }

    // MARK: Quoting

    /// Quotes an identifier (a table, schema or column name) for SQL text: `"my ""table"""`.
    public static func quoteIdentifier(_ name: String) -> String {
        "\"" + name.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }
}

/// Removes passwords from a libpq message: libpq quotes the connection string (or a piece
/// of it) when it cannot parse it, and the password may be in it.
///
/// Every password written in `conninfo` (URL user info, or `password=`), raw and
/// percent-decoded, becomes `***`, as does the password part of any URL in the message.
public func redactSecrets(_ message: String, conninfo: String) -> String {
    var secrets: [String] = []
    if let scheme = conninfo.range(of: "://") {
        let rest = conninfo[scheme.upperBound...]
        if let at = rest.lastIndex(of: "@") {
            let userInfo = rest[..<at]
            if let colon = userInfo.firstIndex(of: ":") {
                secrets.append(String(userInfo[userInfo.index(after: colon)...]))
            }
        }
        if let query = conninfo.range(of: "password=") {
            secrets.append(String(conninfo[query.upperBound...].prefix { $0 != "&" }))
        }
    } else if let key = conninfo.range(of: #"password\s*=\s*"#, options: .regularExpression) {
        var value = conninfo[key.upperBound...]
        if value.first == "'" {
            value = value.dropFirst()
            secrets.append(String(value.prefix { $0 != "'" }))
        } else {
            secrets.append(String(value.prefix { !$0.isWhitespace }))
        }
    }
    var text = message
    for secret in secrets where !secret.isEmpty {
        text = text.replacingOccurrences(of: secret, with: "***")
        if let decoded = secret.removingPercentEncoding, !decoded.isEmpty {
            text = text.replacingOccurrences(of: decoded, with: "***")
        }
    }
    // Any URL the message quotes: postgresql://user:secret@host -> postgresql://user:***@host.
    return text.replacingOccurrences(
        of: #"(://[^:/@\s"]*:)[^@\s"]*@"#, with: "$1***@", options: .regularExpression)
}

/// Writes the payload of a `COPY ... FROM STDIN`; see ``Connection/copyIn(_:_:)``.
///
/// Lengths are counted in bytes, never characters, so non-ASCII text arrives whole.
public final class CopyWriter {
    private let handle: OpaquePointer
    private var buffer: [UInt8] = []
    private let chunkSize = 1 << 18
    /// Bytes handed to libpq so far.
    public private(set) var bytesSent = 0

    init(handle: OpaquePointer) {
        self.handle = handle
        buffer.reserveCapacity(chunkSize + 4096)
    }

    /// Appends UTF-8 text.
    public func write(_ text: String) throws {
        buffer.append(contentsOf: text.utf8)
        if buffer.count >= chunkSize { try flush() }
    }

    /// Appends raw bytes.
    public func write<C: Collection>(bytes: C) throws where C.Element == UInt8 {
        buffer.append(contentsOf: bytes)
        if buffer.count >= chunkSize { try flush() }
    }

    /// Appends one byte.
    public func write(byte: UInt8) {
        buffer.append(byte)
    }

    /// Lets `body` append to the buffer in place (no intermediate array per row), then sends
    /// the buffer once it holds a chunk (256 KiB).
    public func append(_ body: (inout [UInt8]) throws -> Void) throws {
        try body(&buffer)
        if buffer.count >= chunkSize { try flush() }
    }

    /// Sends what is buffered to the server.
    public func flush() throws {
        guard !buffer.isEmpty else { return }
        let status = buffer.withUnsafeBufferPointer { pointer in
            pointer.withMemoryRebound(to: CChar.self) { chars in
                PQputCopyData(handle, chars.baseAddress, Int32(chars.count))
            }
        }
        guard status == 1 else {
            throw PostgresError(
                kind: .copy, code: .connectionFailure,
                message: String(cString: PQerrorMessage(handle)).trimmingCharacters(in: .whitespacesAndNewlines))
        }
        bytesSent += buffer.count
        buffer.removeAll(keepingCapacity: true)
    }
}

/// Cancels a running statement; see ``Connection/makeCancelToken()``.
public final class CancelToken: @unchecked Sendable {
    private let cancel: OpaquePointer

    init(cancel: OpaquePointer) { self.cancel = cancel }
    deinit { PQfreeCancel(cancel) }

    /// Asks the server to cancel the current statement. Returns false when the request could
    /// not be sent.
    @discardableResult
    public func cancelStatement() -> Bool {
        var buffer = [CChar](repeating: 0, count: 256)
        return PQcancel(cancel, &buffer, Int32(buffer.count)) == 1
    }
}

private final class NoticeBox {
    let logger: Logger
    init(logger: Logger) { self.logger = logger }
}

private func noticeReceiver(_ context: UnsafeMutableRawPointer?, _ result: OpaquePointer?) {
    guard let context, let result else { return }
    let box = Unmanaged<NoticeBox>.fromOpaque(context).takeUnretainedValue()
    let severity = PQresultErrorField(result, clibpq_diag_severity()).map { String(cString: $0) } ?? "NOTICE"
    let message = PQresultErrorField(result, clibpq_diag_message_primary()).map { String(cString: $0) } ?? ""
    let level: Logger.Level = severity == "WARNING" ? .warning : (severity == "NOTICE" ? .notice : .debug)
    box.logger.log(level: level, "\(severity): \(message)")
}

private func withArrayOfCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafePointer<CChar>?>) -> R) -> R {
    let duplicates = strings.map { strdup($0) }
    defer { duplicates.forEach { free($0) } }
    var pointers: [UnsafePointer<CChar>?] = duplicates.map { $0.map { UnsafePointer($0) } }
    pointers.append(nil)
    return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
}

private func withArrayOfOptionalCStrings<R>(
    _ strings: [String?], _ body: (UnsafePointer<UnsafePointer<CChar>?>?) -> R
) -> R {
    let duplicates: [UnsafeMutablePointer<CChar>?] = strings.map { $0.flatMap { strdup($0) } }
    defer { duplicates.forEach { free($0) } }
    let pointers: [UnsafePointer<CChar>?] = duplicates.map { $0.map { UnsafePointer($0) } }
    if pointers.isEmpty { return body(nil) }
    return pointers.withUnsafeBufferPointer { body($0.baseAddress) }
}
