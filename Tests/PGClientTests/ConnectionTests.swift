import Foundation
import Logging
import PGClient
import Testing

/// Runs against the PostgreSQL that the environment names (`DATABASE_URL`, or libpq's `PG*`
/// variables as `pg_virtualenv` exports them). Never a mock.
enum TestServer {
    static var conninfo: String { ProcessInfo.processInfo.environment["DATABASE_URL"] ?? "" }
    static var isConfigured: Bool {
        let env = ProcessInfo.processInfo.environment
        return env["DATABASE_URL"] != nil || env["PGHOST"] != nil || env["PGPORT"] != nil || env["PGDATABASE"] != nil
    }

    static func connect() throws -> Connection {
        try Connection.connect(conninfo, logger: Logger(label: "test"))
    }
}

@Suite(.enabled(if: TestServer.isConfigured, "needs PostgreSQL: run through scripts/test (pg_virtualenv)"))
struct ConnectionTests {
    @Test func copyRoundTripsNonASCIIText() throws {
        let db = try TestServer.connect()
        defer { db.close() }
        try db.execute("create temp table copy_text (id int, body text)")
        let rows = ["Zoë 😀", "plain", "tab\there", "back\\slash", "日本語のテキスト"]
        let copied = try db.copyIn("copy copy_text (id, body) from stdin") { writer in
            for (index, row) in rows.enumerated() {
                let escaped =
                    row.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\t", with: "\\t")
                try writer.write("\(index)\t\(escaped)\n")
            }
        }
        #expect(copied == rows.count)
        let back = try db.query("select body from copy_text order by id").rows.map { $0["body"] }
        #expect(back == rows)
    }

    @Test func uniqueViolationHasItsSQLState() throws {
        let db = try TestServer.connect()
        defer { db.close() }
        try db.execute("create temp table unique_t (id int primary key)")
        try db.query("insert into unique_t values ($1)", [1])
        let error = try #require(throws: PostgresError.self) {
            try db.query("insert into unique_t values ($1)", [1])
        }
        #expect(error.code == .uniqueViolation)
        #expect(SQLState.Class.integrityConstraintViolation ~= error.code)
        #expect(error.constraint == "unique_t_pkey")
    }

    @Test func divisionByZeroHasItsSQLState() throws {
        let db = try TestServer.connect()
        defer { db.close() }
        let error = try #require(throws: PostgresError.self) { try db.query("select 1 / $1::int", [0]) }
        #expect(error.code == .divisionByZero)
        #expect(SQLState.Class.dataException ~= error.code)
    }

    @Test func failedConnectionReportsLibpqMessageAndLeaksNothing() throws {
        let error = try #require(throws: PostgresError.self) {
            try Connection.connect("postgresql://someone:hunter2secret@127.0.0.1:1/nowhere")
        }
        #expect(error.kind == .connection)
        #expect(error.message.contains("127.0.0.1"))
        #expect(!error.description.contains("hunter2secret"))
        #expect(!error.debugDescription.contains("hunter2secret"))
    }

    @Test func injectionTextIsStoredLiterally() throws {
        let db = try TestServer.connect()
        defer { db.close() }
        try db.execute("create temp table literal_t (body text)")
        let value = "'); drop table literal_t; --"
        try db.query("insert into literal_t values ($1)", [value])
        let back = try db.query("select body from literal_t").first?["body"]
        #expect(back == value)
    }

    @Test func transactionRollsBackOnThrow() throws {
        let db = try TestServer.connect()
        defer { db.close() }
        try db.execute("create temp table tx_t (id int)")
        struct Boom: Error {}
        #expect(throws: Boom.self) {
            try db.transaction { db in
                try db.query("insert into tx_t values (1)")
                throw Boom()
            }
        }
        #expect(try db.query("select count(*) as n from tx_t").first?.decode("n", as: Int.self) == 0)
    }

    @Test func copyFailsCleanlyWhenTheProducerThrows() throws {
        let db = try TestServer.connect()
        defer { db.close() }
        try db.execute("create temp table copy_fail (id int)")
        struct ProducerFailed: Error {}
        #expect(throws: ProducerFailed.self) {
            try db.copyIn("copy copy_fail from stdin") { writer in
                try writer.write("1\n")
                throw ProducerFailed()
            }
        }
        // The connection is usable afterwards and nothing was copied.
        #expect(try db.query("select count(*) as n from copy_fail").first?.decode("n", as: Int.self) == 0)
    }

    @Test func decodesTypedValues() throws {
        let db = try TestServer.connect()
        defer { db.close() }
        let row = try #require(
            try db.query(
                "select 42::bigint as i, 2.5::float8 as d, true as b, timestamptz '2026-01-02 03:04:05.678+00' as t, '{\"a\": [1]}'::jsonb as j, null::text as n"
            ).first)
        #expect(try row.decode("i", as: Int64.self) == 42)
        #expect(try row.decode("d", as: Double.self) == 2.5)
        #expect(try row.decode("b", as: Bool.self) == true)
        let date = try row.decode("t", as: Date.self)
        #expect(PostgresTimestamp.format(date) == "2026-01-02T03:04:05.678Z")
        let json = try row.decode("j", as: JSONValue.self)
        #expect((json.object as? [String: Any])?["a"] != nil)
        #expect(try row.decode("n", as: String?.self) == nil)
    }

    @Test func advisoryLockIsExclusive() throws {
        let a = try TestServer.connect()
        let b = try TestServer.connect()
        defer {
            a.close()
            b.close()
        }
        let key = Connection.advisoryKey("test.lock.\(UUID())")
        let inner = try a.withAdvisoryLock(key: key) {
            try b.withAdvisoryLock(key: key, wait: false) { true }
        }
        #expect(inner == .some(nil))
        let after = try b.withAdvisoryLock(key: key, wait: false) { true }
        #expect(after == true)
    }
}

@Suite struct RedactionTests {
    @Test func passwordsInLibpqMessagesAreRedacted() {
        let url = "postgresql://alice:hunter2@[::1/db"
        #expect(!redactSecrets("invalid IPv6 host address in URI: \"\(url)\"", conninfo: url).contains("hunter2"))
        let encoded = "postgresql://alice:hunter2%zz@localhost/db"
        #expect(!redactSecrets("invalid percent-encoded token: \"hunter2%zz\"", conninfo: encoded).contains("hunter2"))
        let keyValue = "host=x password='s3cret word' user=a"
        #expect(!redactSecrets("bad: password='s3cret word'", conninfo: keyValue).contains("s3cret"))
        #expect(redactSecrets("plain message", conninfo: "") == "plain message")
    }
}
