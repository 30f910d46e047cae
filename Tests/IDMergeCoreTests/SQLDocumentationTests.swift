import Foundation
import IDMergeCore
import IDMergeTestSupport
import PGClient
import Testing

/// `\d+` documents what users and operators read: every view, and the tables interfaces.md
/// and the README name, with a comment on the relation and on every column.
@Suite(.enabled(if: TestDatabase.isConfigured, "needs PostgreSQL: run through scripts/test (pg_virtualenv)"))
struct SQLDocumentationTests {
    @Test func everyColumnUsersReadIsDocumented() throws {
        try TestDatabase.withFresh { conninfo in
            let db = try TestDatabase.connect(conninfo)
            defer { db.close() }
            let missing = try db.query(try SQLResources.query("queries/undocumented_columns.sql")).rows.map {
                [$0["relation"], $0["column_name"]].compactMap { $0 }.joined(separator: ".")
            }
            #expect(missing == [], "add comment on for: \(missing)")
        }
    }
}
