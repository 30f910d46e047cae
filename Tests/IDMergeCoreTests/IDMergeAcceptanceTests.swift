import Foundation
import IDMergeCore
import IDMergeTestSupport
import PGClient
import Testing

/// One identity case of `../shared/acceptance/id-merge` (format: its README).
struct IdentityCase {
    struct Batch {
        var events: [Any]
        var expect: [String: [String: Any]]
    }

    var name: String
    var mode: IDMergeMode
    var batches: [Batch]
    var expectRejected: [String: String]

    init(path: String) throws {
        name = URL(fileURLWithPath: path).lastPathComponent
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        let object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        mode = try #require(IDMergeMode(rawValue: object["id_merge"] as? String ?? "simplified"))
        batches = try (object["batches"] as? [[String: Any]] ?? []).map { batch in
            Batch(
                events: try #require(batch["events"] as? [Any]),
                expect: batch["expect"] as? [String: [String: Any]] ?? [:])
        }
        expectRejected = object["expect_rejected"] as? [String: String] ?? [:]
    }
}

/// Maps the case format's keys to `idmerge.resolved_events` / `idmerge.events` columns.
let expectationColumns: [String: String] = [
    "distinct_id": "distinct_id",
    "$distinct_id_before_identity": "distinct_id_before_identity",
    "$identity_failure_reason": "identity_failure_reason",
    "$failure_reason": "identity_failure_reason",
]

/// NDJSON text lines, as written (a test's hand-made or malformed records): one per line.
func ndjsonLines<Lines: Sequence<String>>(_ lines: Lines) -> [UInt8] {
    Array(lines.map { $0 + "\n" }.joined().utf8)
}

func ndjson(_ events: [Any]) throws -> [UInt8] {
    var bytes: [UInt8] = []
    for event in events {
        bytes.append(contentsOf: try JSONSerialization.data(withJSONObject: event, options: [.sortedKeys]))
        bytes.append(0x0A)
    }
    return bytes
}

/// Checks every expectation against a relation (`idmerge.resolved_events` or `idmerge.events`).
func checkExpectations(
    _ expected: [String: [String: Any]], relation: String, projectId: Int, on db: Connection, context: String
) throws {
    let rows = try db.query(
        """
        select insert_id, distinct_id, distinct_id_before_identity, identity_failure_reason
        from \(relation) where project_id = $1
        """, [projectId]
    ).rows
    var byInsertId: [String: Row] = [:]
    for row in rows { byInsertId[row["insert_id"] ?? ""] = row }
    for (insertId, fields) in expected.sorted(by: { $0.key < $1.key }) {
        guard let row = byInsertId[insertId] else {
            Issue.record("\(context): event \(insertId) not found in \(relation)")
            continue
        }
        for (key, value) in fields {
            guard let column = expectationColumns[key] else { continue }
            let want = value is NSNull ? nil : "\(value)"
            #expect(row[column] == want, "\(context): \(insertId).\(key) in \(relation)")
        }
    }
}

@Suite(.enabled(if: TestDatabase.isConfigured, "needs PostgreSQL: run through scripts/test (pg_virtualenv)"))
struct IdentityAcceptanceTests {
    /// The project modes this build implements.
    static let implementedModes: Set<IDMergeMode> = [.simplified, .original, .legacy]

    /// Every case file of `acceptance/id-merge` whose project mode this build implements.
    static func cases() -> [String] {
        Shared.caseFiles("id-merge").filter { path in
            guard let testCase = try? IdentityCase(path: path) else { return true }
            return implementedModes.contains(testCase.mode)
        }
    }

    @Test("acceptance: id-merge", arguments: cases())
    func acceptanceCase(path: String) throws {
        let testCase = try IdentityCase(path: path)
        try TestDatabase.withFresh { conninfo in
            let db = try TestDatabase.connect(conninfo)
            defer { db.close() }
            let project = try Projects.create(name: "default", mode: testCase.mode, on: db).project
            let importer = Importer(connection: db, project: project, logger: TestDatabase.logger)
            var state: [String: [String: Any]] = [:]
            for (index, batch) in testCase.batches.enumerated() {
                _ = try importer.importBytes(try ndjson(batch.events), name: "batch-\(index)")
                try checkExpectations(
                    batch.expect, relation: "idmerge.resolved_events", projectId: project.id, on: db,
                    context: "\(testCase.name) batch \(index)")
                for (insertId, fields) in batch.expect { state[insertId, default: [:]].merge(fields) { $1 } }
            }
            for (insertId, reason) in testCase.expectRejected {
                let refused = try db.query(
                    "select reason, field from idmerge.refused_records where insert_id = $1", [insertId]
                ).first
                #expect(refused != nil, "\(testCase.name): \(insertId) must be refused")
                if let refused {
                    let text = (refused["field"] ?? "") + ": " + (refused["reason"] ?? "")
                    #expect(text.contains(reason), "\(testCase.name): \(insertId) refused for \(text)")
                }
            }
            // After the nightly job, the last state holds in the view and in the events.
            _ = try NightlyJob(connection: db, project: project, logger: TestDatabase.logger).run()
            for relation in ["idmerge.resolved_events", "idmerge.events"] {
                try checkExpectations(
                    state, relation: relation, projectId: project.id, on: db, context: "\(testCase.name) after nightly")
            }
            let violations = try db.query(
                try SQLResources.query("queries/invariant_rewritten_equals_live.sql"), [project.id])
            #expect(violations.rows.isEmpty, "\(testCase.name): rewritten equals live after the nightly job")
        }
    }
}
