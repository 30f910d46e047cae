import Foundation
import IDMergeCore
import IDMergeTestSupport
import PGClient
import Testing

@Suite(.enabled(if: TestDatabase.isConfigured, "needs PostgreSQL: run through scripts/test (pg_virtualenv)"))
struct GeneratorTests {
    func generate(_ count: Int, mode: IDMergeMode) throws -> [UInt8] {
        var bytes: [UInt8] = []
        try Generator(events: count, seed: 9, mode: mode).generate { line in
            bytes.append(contentsOf: line.utf8)
            bytes.append(0x0A)
        }
        return bytes
    }

    @Test func theSameSeedGivesTheSameBytes() throws {
        #expect(try generate(500, mode: .simplified) == generate(500, mode: .simplified))
        #expect(try generate(500, mode: .original) == generate(500, mode: .original))
    }

    /// Generated data imports cleanly in both APIs, links people, and the nightly invariant holds.
    @Test(arguments: [IDMergeMode.simplified, .original])
    func importsCleanlyAndLinks(mode: IDMergeMode) throws {
        try TestDatabase.withFresh { conninfo in
            let db = try TestDatabase.connect(conninfo)
            defer { db.close() }
            let project = try Projects.create(name: "gen", mode: mode, on: db).project
            let summary = try Importer(connection: db, project: project, logger: TestDatabase.logger)
                .importBytes(try generate(3000, mode: mode), name: "generated")
            #expect(summary.refused == 0)
            #expect(summary.duplicates > 0)
            let linked: Int = try db.query(
                "select count(*) as n from idmerge.identity_map where project_id = $1", [project.id]
            ).first!.decode("n")
            #expect(linked > 50)
            if mode == .original {
                let failed: Int = try db.query(
                    "select count(*) as n from idmerge.events where event = '$identify' and identity_failure_reason is not null"
                ).first!.decode("n")
                #expect(failed == 0)
            }
            _ = try NightlyJob(connection: db, project: project, logger: TestDatabase.logger).run()
            #expect(try invariantViolations(db, projectId: project.id) == 0)
        }
    }
}
