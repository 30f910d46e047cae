import Foundation
import IDMergeCore
import IDMergeTestSupport
import PGClient
import Testing

/// The project's own case files, `Tests/Cases/id-merge` and `Tests/Cases/reports`, in the
/// format of `../shared/acceptance/README.md`: edge cases of the rules, checked against brute
/// force or taken from bug reports, each holding a value a bug once got wrong. A new file is
/// a new test, with no code change.
///
/// Each case runs as the shared cases do (the nightly job after the last batch), and again
/// with the nightly job after every batch, so that imports landing on derived tables and
/// rewritten events are checked too; the shared acceptance cases also run on that second
/// schedule here.
enum CaseFiles {
    /// When the nightly job runs while a case's batches are imported.
    enum Schedule: String, CaseIterable, CustomTestStringConvertible, Sendable {
        /// After the last batch only, as the shared acceptance cases run.
        case nightlyAtEnd
        /// After every batch.
        case nightlyAfterEachBatch

        var testDescription: String { rawValue }
    }

    /// `Tests/Cases`, found from this file (Tests/IDMergeCoreTests).
    static var root: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Cases", isDirectory: true)
    }

    /// The `*.json` files of `Tests/Cases/<folder>`, sorted.
    static func files(_ folder: String) -> [String] {
        let directory = root.appendingPathComponent(folder)
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return names.filter { $0.hasSuffix(".json") }.sorted().map { directory.appendingPathComponent($0).path }
    }

    /// Every run of a folder: the project's cases under both schedules, and the shared
    /// acceptance cases with the nightly job after every batch (the acceptance tests run
    /// them with it at the end).
    static func runs(_ folder: String) -> [(String, Schedule)] {
        files(folder).flatMap { path in Schedule.allCases.map { (path, $0) } }
            + Shared.caseFiles(folder).filter { $0.hasSuffix(".json") }.map { ($0, .nightlyAfterEachBatch) }
    }
}

@Suite(.enabled(if: TestDatabase.isConfigured, "needs PostgreSQL: run through scripts/test (pg_virtualenv)"))
struct CaseFileTests {
    @Test("cases: id-merge", arguments: CaseFiles.runs("id-merge"))
    func identityCase(path: String, schedule: CaseFiles.Schedule) throws {
        let testCase = try IdentityCase(path: path)
        let name = "\(testCase.name) (\(schedule.rawValue))"
        try TestDatabase.withFresh { conninfo in
            let db = try TestDatabase.connect(conninfo)
            defer { db.close() }
            let project = try Projects.create(name: "default", mode: testCase.mode, on: db).project
            let importer = Importer(connection: db, project: project, logger: TestDatabase.logger)
            let nightly = NightlyJob(connection: db, project: project, logger: TestDatabase.logger)
            var state: [String: [String: Any]] = [:]
            for (index, batch) in testCase.batches.enumerated() {
                _ = try importer.importBytes(try ndjson(batch.events), name: "batch-\(index)")
                try checkExpectations(
                    batch.expect, relation: "idmerge.resolved_events", projectId: project.id, on: db,
                    context: "\(name) batch \(index)")
                for (insertId, fields) in batch.expect { state[insertId, default: [:]].merge(fields) { $1 } }
                if schedule == .nightlyAfterEachBatch {
                    _ = try nightly.run()
                    for relation in ["idmerge.resolved_events", "idmerge.events"] {
                        try checkExpectations(
                            state, relation: relation, projectId: project.id, on: db,
                            context: "\(name) nightly after batch \(index)")
                    }
                }
            }
            for (insertId, reason) in testCase.expectRejected {
                let refused = try db.query(
                    "select reason, field from idmerge.refused_records where insert_id = $1", [insertId]
                ).first
                #expect(refused != nil, "\(name): \(insertId) must be refused")
                if let refused {
                    let text = (refused["field"] ?? "") + ": " + (refused["reason"] ?? "")
                    #expect(text.contains(reason), "\(name): \(insertId) refused for \(text)")
                }
            }
            _ = try nightly.run()
            for relation in ["idmerge.resolved_events", "idmerge.events"] {
                try checkExpectations(
                    state, relation: relation, projectId: project.id, on: db, context: "\(name) after nightly")
            }
            let violations = try db.query(
                try SQLResources.query("queries/invariant_rewritten_equals_live.sql"), [project.id])
            #expect(violations.rows.isEmpty, "\(name): rewritten equals live after the nightly job")
        }
    }

    @Test("cases: reports", arguments: CaseFiles.runs("reports"))
    func reportCase(path: String, schedule: CaseFiles.Schedule) throws {
        let name = "\(URL(fileURLWithPath: path).lastPathComponent) (\(schedule.rawValue))"
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        let object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let mode = try #require(IDMergeMode(rawValue: object["id_merge"] as? String ?? "simplified"))
        try TestDatabase.withFresh { conninfo in
            let db = try TestDatabase.connect(conninfo)
            defer { db.close() }
            let project = try Projects.create(name: "default", mode: mode, on: db).project
            let importer = Importer(connection: db, project: project, logger: TestDatabase.logger)
            let nightly = NightlyJob(connection: db, project: project, logger: TestDatabase.logger)
            let batches = object["batches"] as? [[Any]] ?? []
            for (index, batch) in batches.enumerated() {
                let summary = try importer.importBytes(try ndjson(batch), name: "batch-\(index)")
                #expect(summary.refused == 0, "\(name): batch \(index) refused records")
                if schedule == .nightlyAfterEachBatch && index < batches.count - 1 { _ = try nightly.run() }
            }
            let queries = object["queries"] as? [[String: Any]] ?? []
            for (index, item) in queries.enumerated() {
                try checkReportQuery(item, project: project, on: db, context: "\(name) query \(index) before nightly")
            }
            _ = try nightly.run()
            for (index, item) in queries.enumerated() {
                try checkReportQuery(item, project: project, on: db, context: "\(name) query \(index) after nightly")
            }
        }
    }
}
