import Foundation
import IDMergeCore
import IDMergeTestSupport
import PGClient
import Testing

/// The Original ID Merge API and the legacy alias mode, beyond the shared acceptance cases:
/// the cluster cap, failure descriptions, canonical-id changes across merges, and legacy
/// aliases that map only later events.
@Suite(.enabled(if: TestDatabase.isConfigured, "needs PostgreSQL: run through scripts/test (pg_virtualenv)"))
struct OriginalIDMergeTests {
    static let baseTime = 1_767_225_600

    /// One event in the import format; `index` orders the times.
    static func event(_ name: String, _ insertId: String, _ index: Int, _ properties: [String: Any]) -> [String: Any] {
        var props = properties
        props["time"] = baseTime + index
        props["$insert_id"] = insertId
        return ["event": name, "properties": props]
    }

    /// One event read back, by `$insert_id`.
    struct Stored: Equatable {
        var distinctId: String?
        var beforeIdentity: String?
        var reason: String?
        var description: String?
    }

    static func read(_ relation: String, projectId: Int, on db: Connection) throws -> [String: Stored] {
        let rows = try db.query(
            """
            select insert_id, distinct_id, distinct_id_before_identity, identity_failure_reason,
                identity_failure_description
            from \(relation) where project_id = $1
            """, [projectId]
        ).rows
        var result: [String: Stored] = [:]
        for row in rows {
            result[row["insert_id"] ?? ""] = Stored(
                distinctId: row["distinct_id"], beforeIdentity: row["distinct_id_before_identity"],
                reason: row["identity_failure_reason"], description: row["identity_failure_description"])
        }
        return result
    }

    /// Expects every listed event to resolve to `distinctId` in the live view.
    static func expectResolved(
        _ insertIds: [String], to distinctId: String, in stored: [String: Stored], _ context: String,
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        for insertId in insertIds {
            #expect(
                stored[insertId]?.distinctId == distinctId, "\(context): \(insertId)", sourceLocation: sourceLocation)
        }
    }

    /// Where results are read: the live view before the nightly job, then the live view and
    /// the rewritten events after it (the job runs before the first "after nightly" read).
    static let passes: [(relation: String, pass: String)] = [
        ("idmerge.resolved_events", "before nightly"),
        ("idmerge.resolved_events", "after nightly"),
        ("idmerge.events", "after nightly"),
    ]

    /// Runs the nightly job, then expects the rewritten events to equal the live view.
    static func runNightlyAndCheckInvariant(_ db: Connection, project: Project) throws {
        _ = try NightlyJob(connection: db, project: project, logger: TestDatabase.logger).run()
        let violations = try db.query(
            try SQLResources.query("queries/invariant_rewritten_equals_live.sql"), [project.id])
        #expect(violations.rows.isEmpty, "rewritten equals live after the nightly job")
    }

    // MARK: Cluster cap

    /// O-R7 and decisions.md: a cluster may hold 500 ids; the merge that would make 501 fails
    /// with errManyIDs, and the new id stays its own user.
    @Test func clusterCapAllows500AndRefuses501() throws {
        try TestDatabase.withFresh { conninfo in
            let db = try TestDatabase.connect(conninfo)
            defer { db.close() }
            let project = try Projects.create(name: "default", mode: .original, on: db).project
            #expect(project.clusterCap == 500)
            var events: [[String: Any]] = [Self.event("Sign Up", "root", 0, ["distinct_id": "R"])]
            for n in 1...500 {
                events.append(Self.event("$create_alias", "alias-\(n)", n, ["distinct_id": "R", "alias": "a\(n)"]))
            }
            let anon = "9b2e4c1a-7d3f-4e8a-b1c2-d3e4f5a6b7c8"
            events.append(Self.event("Page View", "anon-view", 600, ["distinct_id": anon]))
            events.append(
                Self.event("$identify", "identify", 601, ["distinct_id": "R", "$identified_id": "R", "$anon_id": anon]))
            events.append(Self.event("Page View", "a500-view", 602, ["distinct_id": "a500"]))
            events.append(Self.event("Page View", "a499-view", 603, ["distinct_id": "a499"]))
            let importer = Importer(connection: db, project: project, logger: TestDatabase.logger)
            let summary = try importer.importBytes(try ndjson(events), name: "cap")
            #expect(summary.stored == 505)
            #expect(summary.links == 499)

            let size = try db.query(
                "select idmerge.identity_cluster_size($1, 'R') as n", [project.id]
            ).first!.decode("n", as: Int.self)
            #expect(size == 500)

            for (relation, context) in Self.passes {
                if context == "after nightly" && relation == "idmerge.resolved_events" {
                    try Self.runNightlyAndCheckInvariant(db, project: project)
                }
                let stored = try Self.read(relation, projectId: project.id, on: db)
                let place = "\(relation) \(context)"
                #expect(stored["alias-499"]?.reason == nil, "\(place)")
                #expect(stored["alias-500"]?.reason == "errManyIDs", "\(place)")
                #expect(
                    stored["alias-500"]?.description
                        == "too many distinctIDs mapped together, Cluster size: 501 Max limit: 500", "\(place)")
                #expect(stored["identify"]?.reason == "errManyIDs", "\(place)")
                #expect(
                    stored["identify"]?.description
                        == "too many distinctIDs mapped together, Cluster size: 501 Max limit: 500", "\(place)")
                Self.expectResolved(["anon-view"], to: anon, in: stored, place)
                Self.expectResolved(["a500-view"], to: "a500", in: stored, place)
                Self.expectResolved(["a499-view", "alias-1", "root"], to: "R", in: stored, place)
            }
        }
    }

    /// The cap is the project's setting: with a cap of 3, a merge of two 2-id clusters fails.
    @Test func clusterCapIsAProjectSetting() throws {
        try TestDatabase.withFresh { conninfo in
            let db = try TestDatabase.connect(conninfo)
            defer { db.close() }
            let project = try Projects.create(name: "default", mode: .original, on: db).project
            try db.query("update idmerge.projects set cluster_cap = 3 where id = $1", [project.id])
            let events: [[String: Any]] = [
                Self.event("$create_alias", "c1", 1, ["distinct_id": "A", "alias": "A2"]),
                Self.event("$create_alias", "c2", 2, ["distinct_id": "B", "alias": "B2"]),
                Self.event("$merge", "m1", 3, ["$distinct_ids": ["A", "B"]]),
                Self.event("$create_alias", "c3", 4, ["distinct_id": "B", "alias": "B3"]),
            ]
            let importer = Importer(connection: db, project: project, logger: TestDatabase.logger)
            _ = try importer.importBytes(try ndjson(events), name: "cap-3")
            let stored = try Self.read("idmerge.resolved_events", projectId: project.id, on: db)
            #expect(stored["m1"]?.reason == "errManyIDs")
            #expect(stored["m1"]?.description == "too many distinctIDs mapped together, Cluster size: 4 Max limit: 3")
            #expect(stored["c3"]?.reason == nil)
        }
    }

    // MARK: $identify failures

    /// O-R3 and table 2.2: each $identify failure carries its reason and description, merges
    /// nothing, and the UUID test follows decisions.md (case-insensitive, version 4, variant
    /// 8/9/a/b, `$device:` stripped; `$anon_distinct_id` as a synonym).
    @Test func identifyFailureReasonsAndDescriptions() throws {
        try TestDatabase.withFresh { conninfo in
            let db = try TestDatabase.connect(conninfo)
            defer { db.close() }
            let project = try Projects.create(name: "default", mode: .original, on: db).project
            let d1 = "3f2b6f5e-8c1d-4a7b-9e2f-1a2b3c4d5e6f"
            let version1 = "3f2b6f5e-8c1d-1a7b-9e2f-1a2b3c4d5e6f"
            let badVariant = "3f2b6f5e-8c1d-4a7b-7e2f-1a2b3c4d5e6f"
            let upper = "7C9E6679-7425-40DE-944B-E07FC1F90AE7"
            let device = "$device:0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
            let events: [[String: Any]] = [
                Self.event("$identify", "same", 1, ["distinct_id": "abc", "$identified_id": "abc", "$anon_id": "abc"]),
                Self.event(
                    "$identify", "not-guid", 2,
                    ["distinct_id": "U1", "$identified_id": "U1", "$anon_id": "anonymous111"]),
                Self.event(
                    "$identify", "version-1", 3,
                    ["distinct_id": "U1", "$identified_id": "U1", "$anon_id": version1]),
                Self.event(
                    "$identify", "bad-variant", 4,
                    ["distinct_id": "U1", "$identified_id": "U1", "$anon_id": badVariant]),
                Self.event("Page View", "d1-view", 5, ["distinct_id": d1]),
                Self.event("$identify", "ok", 6, ["distinct_id": "U1", "$identified_id": "U1", "$anon_id": d1]),
                Self.event("$identify", "again", 7, ["distinct_id": "U1", "$identified_id": "U1", "$anon_id": d1]),
                Self.event("$identify", "taken", 8, ["distinct_id": "U2", "$identified_id": "U2", "$anon_id": d1]),
                Self.event("Page View", "upper-view", 9, ["distinct_id": upper]),
                Self.event("$identify", "upper", 10, ["distinct_id": "U2", "$identified_id": "U2", "$anon_id": upper]),
                // The JS SDK: distinct_id is the new id, $anon_distinct_id the previous one.
                Self.event("Page View", "device-view", 11, ["distinct_id": device]),
                Self.event("$identify", "sdk", 12, ["distinct_id": "U3", "$anon_distinct_id": device]),
                Self.event("$identify", "missing", 13, ["distinct_id": "U4"]),
            ]
            let importer = Importer(connection: db, project: project, logger: TestDatabase.logger)
            let summary = try importer.importBytes(try ndjson(events), name: "identify")
            #expect(summary.links == 3)

            for (relation, pass) in Self.passes {
                if pass == "after nightly" && relation == "idmerge.resolved_events" {
                    try Self.runNightlyAndCheckInvariant(db, project: project)
                }
                do {
                    let stored = try Self.read(relation, projectId: project.id, on: db)
                    let context = "\(relation) \(pass)"
                    #expect(stored["same"]?.reason == "errSameIDs", "\(context)")
                    #expect(
                        stored["same"]?.description == "Identified and anon ID are same in the identify request abc",
                        "\(context)")
                    #expect(stored["not-guid"]?.reason == "errAnonDistinctIdNonGUIDForm", "\(context)")
                    #expect(
                        stored["not-guid"]?.description
                            == "$anon_distinct_id didn't match expected GUID pattern: anonymous111", "\(context)")
                    #expect(stored["version-1"]?.reason == "errAnonDistinctIdNonGUIDForm", "\(context)")
                    #expect(stored["bad-variant"]?.reason == "errAnonDistinctIdNonGUIDForm", "\(context)")
                    #expect(stored["ok"]?.reason == nil, "\(context)")
                    #expect(stored["ok"]?.description == nil, "\(context)")
                    #expect(stored["again"]?.reason == nil, "\(context): re-identifying the same pair is no failure")
                    #expect(stored["taken"]?.reason == "errAnonDistinctIdAssignedAlready", "\(context)")
                    #expect(stored["taken"]?.description == "$anon_distinct_id already identified: \(d1)", "\(context)")
                    #expect(stored["upper"]?.reason == nil, "\(context): upper-case UUID v4")
                    #expect(stored["sdk"]?.reason == nil, "\(context): $device: prefix and $anon_distinct_id")
                    #expect(stored["missing"]?.reason == "errInvalidIdentifier", "\(context)")
                    Self.expectResolved(["d1-view", "ok", "again"], to: "U1", in: stored, context)
                    #expect(stored["d1-view"]?.beforeIdentity == d1, "\(context)")
                    Self.expectResolved(["taken", "upper-view", "upper"], to: "U2", in: stored, context)
                    Self.expectResolved(["device-view", "sdk"], to: "U3", in: stored, context)
                    Self.expectResolved(["same"], to: "abc", in: stored, context)
                }
            }
        }
    }

    // MARK: Canonical id changes

    /// A joins B's cluster (canonical B); later B's cluster joins C's, whose earliest id was
    /// seen first (canonical C). Every member, B included, moves to C: in the live view at
    /// once, in the events after the nightly job, whether or not the job ran in between.
    @Test(arguments: [false, true])
    func canonicalIdChangesAcrossMerges(nightlyBetween: Bool) throws {
        try TestDatabase.withFresh { conninfo in
            let db = try TestDatabase.connect(conninfo)
            defer { db.close() }
            let project = try Projects.create(name: "default", mode: .original, on: db).project
            let importer = Importer(connection: db, project: project, logger: TestDatabase.logger)
            _ = try importer.importBytes(
                try ndjson([
                    Self.event("E", "c-1", 1, ["distinct_id": "C"]),
                    Self.event("E", "a-1", 2, ["distinct_id": "A"]),
                    Self.event("E", "b-1", 3, ["distinct_id": "B"]),
                    Self.event("$create_alias", "alias", 4, ["distinct_id": "B", "alias": "A"]),
                    Self.event("E", "a-2", 5, ["distinct_id": "A"]),
                ]), name: "first")
            var stored = try Self.read("idmerge.resolved_events", projectId: project.id, on: db)
            Self.expectResolved(["a-1", "a-2", "b-1", "alias"], to: "B", in: stored, "after the alias")
            Self.expectResolved(["c-1"], to: "C", in: stored, "after the alias")
            // The batch's own events were resolved through A->B as they were stored: nothing is
            // left for the nightly job (and for the live view to correct).
            let pending = "select count(*) as n from idmerge.identity_map where project_id = $1 and not rewritten"
            #expect(try db.query(pending, [project.id]).first!.decode("n", as: Int.self) == 0)
            if nightlyBetween { try Self.runNightlyAndCheckInvariant(db, project: project) }

            let summary = try importer.importBytes(
                try ndjson([
                    Self.event("E", "b-2", 6, ["distinct_id": "B"]),
                    Self.event("$merge", "merge", 7, ["$distinct_ids": ["B", "C"]]),
                    Self.event("E", "a-3", 8, ["distinct_id": "A"]),
                ]), name: "second")
            #expect(summary.links == 1)
            let all = ["c-1", "a-1", "b-1", "alias", "a-2", "b-2", "merge", "a-3"]
            stored = try Self.read("idmerge.resolved_events", projectId: project.id, on: db)
            Self.expectResolved(all, to: "C", in: stored, "live, after the merge")
            #expect(stored["b-1"]?.beforeIdentity == "B")
            #expect(stored["c-1"]?.beforeIdentity == nil)

            let map = try db.query(
                "select id, canonical_id from idmerge.identity_map where project_id = $1 order by id", [project.id]
            ).rows.map { "\($0["id"] ?? "")->\($0["canonical_id"] ?? "")" }
            #expect(map == ["A->C", "B->C"])
            // Both now change events stored by the first batch: pending until the nightly job.
            #expect(try db.query(pending, [project.id]).first!.decode("n", as: Int.self) == 2)

            try Self.runNightlyAndCheckInvariant(db, project: project)
            for relation in ["idmerge.resolved_events", "idmerge.events"] {
                stored = try Self.read(relation, projectId: project.id, on: db)
                Self.expectResolved(all, to: "C", in: stored, "\(relation) after the nightly job")
            }
        }
    }

    /// Re-importing a file changes nothing: an identity event takes effect once, at its first
    /// arrival, so a repeated $create_alias is a duplicate, not an alias used twice.
    @Test func reimportIsIdempotent() throws {
        try TestDatabase.withFresh { conninfo in
            let db = try TestDatabase.connect(conninfo)
            defer { db.close() }
            let project = try Projects.create(name: "default", mode: .original, on: db).project
            let importer = Importer(connection: db, project: project, logger: TestDatabase.logger)
            let bytes = try ndjson([
                Self.event("E", "e1", 1, ["distinct_id": "E1"]),
                Self.event("$create_alias", "c1", 2, ["distinct_id": "E1", "alias": "N1"]),
                Self.event("E", "e2", 3, ["distinct_id": "N1"]),
            ])
            _ = try importer.importBytes(bytes, name: "first")
            let before = try Self.read("idmerge.events", projectId: project.id, on: db)
            let again = try importer.importBytes(bytes, name: "again")
            #expect(again.duplicates == 3)
            #expect(again.links == 0)
            let after = try Self.read("idmerge.events", projectId: project.id, on: db)
            #expect(after == before)
            #expect(after["c1"]?.reason == nil)
            Self.expectResolved(["e1", "c1", "e2"], to: "E1", in: after, "after re-import")
        }
    }

    // MARK: Legacy alias

    /// L-R1..L-R5: an alias maps only the events that arrive after it; an alias value can be
    /// used once; chains resolve; $identify and $merge do nothing; the nightly job and the
    /// live view never re-map earlier events.
    @Test func legacyAliasMapsOnlyLaterEventsAndIsUsedOnce() throws {
        try TestDatabase.withFresh { conninfo in
            let db = try TestDatabase.connect(conninfo)
            defer { db.close() }
            let project = try Projects.create(name: "default", mode: .legacy, on: db).project
            let importer = Importer(connection: db, project: project, logger: TestDatabase.logger)
            let anon = "3f2b6f5e-8c1d-4a7b-9e2f-1a2b3c4d5e6f"
            let first = try ndjson([
                Self.event("Web", "w1", 1, ["distinct_id": "12345"]),
                Self.event("Early", "s0", 2, ["distinct_id": "sally@example.com"]),
                Self.event("$create_alias", "alias", 3, ["distinct_id": "12345", "alias": "sally@example.com"]),
                Self.event("Later", "s1", 4, ["distinct_id": "sally@example.com"]),
                Self.event("Page View", "anon-view", 5, ["distinct_id": anon]),
                Self.event(
                    "$identify", "identify", 6, ["distinct_id": "U9", "$identified_id": "U9", "$anon_id": anon]),
                Self.event("$merge", "merge", 7, ["$distinct_ids": ["U9", "12345"]]),
            ])
            let summary = try importer.importBytes(first, name: "first")
            #expect(summary.links == 1)
            _ = try importer.importBytes(
                try ndjson([
                    Self.event("Phone", "p1", 10, ["distinct_id": "P9"]),
                    Self.event("$create_alias", "again", 11, ["distinct_id": "P9", "alias": "sally@example.com"]),
                    Self.event("Phone", "s2", 12, ["distinct_id": "sally@example.com"]),
                    Self.event(
                        "$create_alias", "chain", 13, ["distinct_id": "sally@example.com", "alias": "sally-42"]),
                    Self.event("Chained", "s3", 14, ["distinct_id": "sally-42"]),
                ]), name: "second")
            // Re-importing the first file changes nothing (the earlier event stays unmapped).
            let reimport = try importer.importBytes(first, name: "first again")
            #expect(reimport.duplicates == 7)
            #expect(reimport.links == 0)

            for (relation, pass) in Self.passes {
                if pass == "after nightly" && relation == "idmerge.resolved_events" {
                    try Self.runNightlyAndCheckInvariant(db, project: project)
                }
                do {
                    let stored = try Self.read(relation, projectId: project.id, on: db)
                    let context = "\(relation) \(pass)"
                    Self.expectResolved(["w1", "alias", "s1", "s2", "s3"], to: "12345", in: stored, context)
                    #expect(stored["s1"]?.beforeIdentity == "sally@example.com", "\(context)")
                    Self.expectResolved(["s0"], to: "sally@example.com", in: stored, context)
                    #expect(stored["s0"]?.beforeIdentity == nil, "\(context)")
                    Self.expectResolved(["p1", "again"], to: "P9", in: stored, context)
                    #expect(stored["again"]?.reason == "errAliasAlreadyExists", "\(context)")
                    #expect(stored["again"]?.description == "alias already exists with the id", "\(context)")
                    #expect(stored["alias"]?.reason == nil, "\(context)")
                    #expect(stored["chain"]?.reason == nil, "\(context)")
                    Self.expectResolved(["anon-view"], to: anon, in: stored, context)
                    Self.expectResolved(["identify"], to: "U9", in: stored, context)
                    Self.expectResolved(["merge"], to: "U9", in: stored, context)
                    #expect(stored["identify"]?.reason == nil, "\(context)")
                }
            }
            let mapped = try db.query(
                "select count(*) as n from idmerge.identity_map where project_id = $1", [project.id]
            )
            .first!.decode("n", as: Int.self)
            #expect(mapped == 0)
        }
    }
}
