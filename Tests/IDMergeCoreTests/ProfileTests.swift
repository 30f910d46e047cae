import Foundation
import IDMergeCore
import IDMergeTestSupport
import PGClient
import Testing

/// Profiles (Engage operations, mixpanel-reference.md section 3), the activity feed and cohort
/// export, against real PostgreSQL.
@Suite(.enabled(if: TestDatabase.isConfigured, "needs PostgreSQL: run through scripts/test (pg_virtualenv)"))
struct ProfileTests {
    /// 2026-01-01T00:00:00Z.
    static let t0 = 1_767_225_600

    static func event(_ name: String, _ seconds: Int, _ properties: [String: Any]) -> [String: Any] {
        var properties = properties
        properties["time"] = seconds
        properties["$insert_id"] = properties["$insert_id"] ?? "\(name)-\(seconds)"
        return ["event": name, "properties": properties]
    }

    /// The stored properties of a visible profile (idmerge.profiles), nil when there is none.
    static func profile(_ id: String, project: String = "default", on db: Connection) throws -> JSONValue? {
        try db.query(
            "select properties from idmerge.profiles where project = $1 and distinct_id = $2", [project, id]
        ).first?.decode("properties")
    }

    /// Expects the profile's properties to equal `expected` (compared as jsonb).
    static func expectProfile(
        _ id: String, _ expected: String, project: String = "default", on db: Connection,
        sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        let row = try db.query(
            """
            select properties = $3::jsonb as same, properties::text as actual
            from idmerge.profiles where project = $1 and distinct_id = $2
            """, [project, id, expected]
        ).first
        #expect(row != nil, "no profile \(id)", sourceLocation: sourceLocation)
        guard let row else { return }
        #expect(
            try row.decode("same", as: Bool.self), "profile \(id) is \(row["actual"] ?? "")",
            sourceLocation: sourceLocation)
    }

    static func withProject(
        _ mode: IDMergeMode = .simplified,
        _ body: (Connection, Project, ProfileImporter) throws -> Void
    ) throws {
        try TestDatabase.withFresh { conninfo in
            let db = try TestDatabase.connect(conninfo)
            defer { db.close() }
            let project =
                mode == .simplified
                ? try Projects.findOrCreateDefault(name: "default", on: db).0
                : try Projects.create(name: "default", mode: mode, on: db).project
            try body(db, project, ProfileImporter(connection: db, project: project, logger: TestDatabase.logger))
        }
    }

    /// P-R3..P-R10: every operation, applied in array order within one batch.
    @Test func eachOperationAppliesInOrder() throws {
        try Self.withProject { db, _, importer in
            let updates: [Any] = [
                ["$distinct_id": "U1", "$set": ["plan": "free", "name": "Ana", "tags": ["a", "b"]]],
                ["$distinct_id": "U1", "$set": ["plan": "pro"]],
                ["$distinct_id": "U1", "$set_once": ["plan": "enterprise", "first_seen_source": "ads"]],
                ["$distinct_id": "U1", "$add": ["visits": 2]],
                ["$distinct_id": "U1", "$add": ["visits": 3.5, "credits": -1]],
                ["$distinct_id": "U1", "$append": ["pages": "/home"]],
                ["$distinct_id": "U1", "$append": ["pages": "/home"]],
                ["$distinct_id": "U1", "$union": ["tags": ["b", "c", "c", 7]]],
                ["$distinct_id": "U1", "$remove": ["tags": "zzz", "pages": "/nowhere", "missing": 1]],
                ["$distinct_id": "U1", "$remove": ["tags": "a"]],
                ["$distinct_id": "U1", "$unset": ["name", "not_there"]],
                ["$distinct_id": "U2", "$set": ["plan": "free"]],
                ["$distinct_id": "U2", "$delete": NSNull()],
                ["$distinct_id": "U3", "$set": ["plan": "free"]],
                ["$distinct_id": "U3", "$delete": ""],
                ["$distinct_id": "U3", "$set_once": ["plan": "trial"]],
                ["$distinct_id": "U4", "$remove": ["tags": "a"]],
                ["$distinct_id": "U4", "$unset": ["tags"]],
            ]
            let body = try JSONSerialization.data(withJSONObject: updates, options: [.sortedKeys])
            let summary = try importer.importBytes(Array(body), name: "ops.json")
            #expect(summary.records == 18)
            #expect(summary.applied == 18)
            #expect(summary.refused == 0)
            #expect(summary.created == 2)
            #expect(summary.deleted == 0)
            try Self.expectProfile(
                "U1",
                #"{"plan": "pro", "first_seen_source": "ads", "visits": 5.5, "credits": -1,"#
                    + #" "pages": ["/home", "/home"], "tags": ["b", "c", 7]}"#, on: db)
            #expect(try Self.profile("U2", on: db) == nil)
            try Self.expectProfile("U3", #"{"plan": "trial"}"#, on: db)
            // $remove and $unset do not create a profile.
            #expect(try Self.profile("U4", on: db) == nil)

            // A second batch builds on the stored profile; $delete of a stored profile counts.
            let second = try importer.importBytes(
                try ndjson([
                    ["$distinct_id": "U1", "$add": ["visits": 1]],
                    ["$distinct_id": "U3", "$delete": NSNull()],
                ]), name: "more.ndjson")
            #expect(second.applied == 2)
            #expect(second.deleted == 1)
            #expect(second.created == 0)
            let visits = try db.query(
                "select properties -> 'visits' as v from idmerge.profiles where distinct_id = 'U1'"
            ).first?["v"]
            #expect(visits == "6.5")
            #expect(try Self.profile("U3", on: db) == nil)
            let batch = try db.query(
                "select source, records, stored, refused from idmerge.import_batches where id = $1", [second.batchId]
            ).first!
            #expect(batch["source"] == "profiles:more.ndjson")
            #expect(batch["records"] == "2")
            #expect(batch["stored"] == "2")
        }
    }

    /// P-R13: `$last_seen` is the update's `$time` (else the moment of import), never moves
    /// back, and is left alone with `$ignore_time`.
    @Test func lastSeenFollowsUpdatesUnlessIgnoreTime() throws {
        try Self.withProject { db, _, importer in
            _ = try importer.importBytes(
                try ndjson([
                    ["$distinct_id": "U1", "$set": ["a": 1], "$time": Self.t0],
                    ["$distinct_id": "U1", "$set": ["a": 2], "$time": (Self.t0 - 60) * 1000],
                    ["$distinct_id": "U1", "$set": ["a": 3], "$time": Self.t0 + 60, "$ignore_time": true],
                    ["$distinct_id": "U2", "$set": ["a": 1], "$ignore_time": true],
                    ["$distinct_id": "U3", "$set": ["a": 1]],
                    // Null members count as not sent (RudderStack sends "$time": null).
                    ["$distinct_id": "U4", "$set": ["a": 1], "$time": NSNull(), "$ignore_time": NSNull()],
                ]), name: "seen.ndjson")
            let rows = try db.query(
                """
                select distinct_id, extract(epoch from last_seen_at)::bigint as seen,
                    last_seen_at > now() - interval '1 hour' as recent
                from idmerge.profiles order by distinct_id
                """
            ).rows
            #expect(rows.map { $0["distinct_id"] } == ["U1", "U2", "U3", "U4"])
            #expect(rows[0]["seen"] == String(Self.t0))
            #expect(rows[1]["seen"] == nil)
            #expect(rows[2]["recent"] == "t")
            #expect(rows[3]["recent"] == "t")
            try Self.expectProfile("U1", #"{"a": 3}"#, on: db)
        }
    }

    /// Malformed updates, and updates the profile cannot take, are refused with their
    /// position, field and reason; the rest of the batch applies.
    @Test func badProfileRecordsAreRefusedWithPositionFieldAndReason() throws {
        try Self.withProject { db, _, importer in
            let lines: [String] = [
                #"{"$distinct_id":"U1","$set":{"plan":"pro","tags":"x"}}"#,  // 1: ok
                #"{"$distinct_id":"U1","$set":{"plan":"#,  // 2: broken JSON
                #"{"$set":{"plan":"pro"}}"#,  // 3: no $distinct_id
                #"{"$distinct_id":"undefined","$set":{"plan":"pro"}}"#,  // 4: placeholder
                #"{"$distinct_id":"U1"}"#,  // 5: no operation
                #"{"$distinct_id":"U1","$set":{"a":1},"$add":{"b":1}}"#,  // 6: two operations
                #"{"$distinct_id":"U1","$add":{"visits":"3"}}"#,  // 7: $add of a text
                #"{"$distinct_id":"U1","$add":{"plan":1}}"#,  // 8: $add to a text property
                #"{"$distinct_id":"U1","$union":{"tags":"y"}}"#,  // 9: $union of a scalar
                #"{"$distinct_id":"U1","$append":{"tags":"y"}}"#,  // 10: $append to a non-list
                #"{"$distinct_id":"U1","$unset":"plan"}"#,  // 11: $unset of a non-list
                #"{"$distinct_id":"U1","$set":["plan"]}"#,  // 12: $set of a list
                #"{"$distinct_id":"U1","$set":{"a":1},"$ignore_time":"yes"}"#,  // 13: $ignore_time
                #"{"$distinct_id":"U1","$set":{"a":1},"$time":1000}"#,  // 14: $time too old
                #"["$distinct_id","U1"]"#,  // 15: not an object
                #"{"$distinct_id":"U1","$add":{"visits":1,"plan":2}}"#,  // 16: partly bad: none of it applies
                #"{"$distinct_id":"U1","$add":{"visits":1},"$token":"t","$device_id":"D1","$ip":"0"}"#,  // 17: ok
            ]
            let summary = try importer.importBytes(
                ndjsonLines(lines), name: "bad.ndjson")
            #expect(summary.records == 17)
            #expect(summary.applied == 2)
            #expect(summary.refused == 15)
            let refused = try importer.refusedRecords(batchId: summary.batchId)
            #expect(refused.map(\.position) == Array(2...16))
            #expect(refused.allSatisfy { $0.positionKind == .line })
            let fields = refused.map(\.field)
            #expect(
                fields == [
                    "$set.plan", "$distinct_id", "$distinct_id", "(record)", "(record)", "$add.visits", "$add.plan",
                    "$union.tags", "$append.tags", "$unset", "$set", "$ignore_time", "$time", "(record)", "$add.plan",
                ])
            let reasons = Dictionary(uniqueKeysWithValues: refused.map { ($0.position, $0.reason) })
            #expect(reasons[3]?.contains("missing") == true)
            #expect(reasons[4]?.contains("placeholder") == true)
            #expect(reasons[5]?.contains("no operation") == true)
            #expect(reasons[6]?.contains("one operation per update") == true)
            #expect(reasons[8]?.contains("not a number") == true)
            #expect(reasons[10]?.contains("not a list") == true)
            #expect(reasons[14]?.contains("1971") == true)
            // Nothing is lost: every refused record is stored whole.
            let raw = try db.query(
                "select raw from idmerge.refused_records where batch_id = $1 and position = 7", [summary.batchId]
            ).first?["raw"]
            #expect(raw?.contains("visits") == true)
            try Self.expectProfile("U1", #"{"plan": "pro", "tags": "x", "visits": 1}"#, on: db)
        }
    }

    /// P-R15: in a simplified project a profile on `$device:D` stays there when D links; the
    /// user's profile does not inherit it, and updates to the device are not redirected.
    @Test func deviceProfileIsNotCarriedToTheUser() throws {
        try Self.withProject { db, project, importer in
            _ = try importer.importBytes(
                try ndjson([["$distinct_id": "$device:D1", "$set": ["theme": "dark", "plan": "anon"]]]),
                name: "before.ndjson")
            let events = Importer(connection: db, project: project, logger: TestDatabase.logger)
            let linked = try events.importBytes(
                try ndjson([
                    Self.event("Page", Self.t0, ["$device_id": "D1"]),
                    Self.event("Login", Self.t0 + 10, ["$device_id": "D1", "$user_id": "U1"]),
                ]), name: "events.ndjson")
            #expect(linked.links == 1)
            _ = try importer.importBytes(
                try ndjson([
                    ["$distinct_id": "U1", "$set": ["plan": "pro"]],
                    ["$distinct_id": "$device:D1", "$set": ["after": true]],
                ]), name: "after.ndjson")
            try Self.expectProfile("U1", #"{"plan": "pro"}"#, on: db)
            try Self.expectProfile("$device:D1", #"{"theme": "dark", "plan": "anon", "after": true}"#, on: db)
            // Reports join profiles on the resolved distinct_id: the device's events belong to U1.
            let joined = try db.query(
                """
                select distinct p.properties ->> 'plan' as plan
                from idmerge.resolved_events as e
                join idmerge.profiles as p on p.project = e.project and p.distinct_id = e.distinct_id
                where e.ingested_distinct_id = '$device:D1'
                """
            ).rows.map { $0["plan"] }
            #expect(joined == ["pro"])
        }
    }

    /// P-R16: in an original project an update to any member id applies to the canonical
    /// profile, and a member's own earlier profile is hidden once merged.
    @Test func originalUpdatesToAMemberApplyToTheCanonicalProfile() throws {
        try Self.withProject(.original) { db, project, importer in
            let anon = "3f2c5a4e-8b1d-4c3e-9f6a-0123456789ab"
            _ = try importer.importBytes(
                try ndjson([["$distinct_id": anon, "$set": ["theme": "dark"]]]), name: "anon.ndjson")
            _ = try Importer(connection: db, project: project, logger: TestDatabase.logger).importBytes(
                try ndjson([
                    Self.event("Page", Self.t0, ["distinct_id": anon]),
                    Self.event("$identify", Self.t0 + 5, ["$identified_id": "U1", "$anon_id": anon]),
                ]), name: "events.ndjson")
            #expect(
                try db.query("select idmerge.resolve_identity($1, $2) as c", [project.id, anon]).first?["c"] == "U1")
            _ = try importer.importBytes(
                try ndjson([
                    ["$distinct_id": anon, "$set": ["plan": "pro"]],
                    ["$distinct_id": "U1", "$add": ["logins": 1]],
                ]), name: "after.ndjson")
            try Self.expectProfile("U1", #"{"plan": "pro", "logins": 1}"#, on: db)
            #expect(try Self.profile(anon, on: db) == nil)
            let hidden = try db.query(
                "select count(*) as n from idmerge.profiles_store where distinct_id = $1", [anon]
            ).first?["n"]
            #expect(hidden == "1")
        }
    }

    /// The activity feed, asked by the device id of a linked person, lists the person's
    /// events (anonymous and identified) newest first.
    @Test func activityByDeviceIdOfLinkedPerson() throws {
        try Self.withProject { db, project, _ in
            _ = try Importer(connection: db, project: project, logger: TestDatabase.logger).importBytes(
                try ndjson([
                    Self.event("Page", Self.t0, ["$device_id": "D1", "$insert_id": "e1"]),
                    Self.event("Signup", Self.t0 + 10, ["$device_id": "D1", "$user_id": "U1", "$insert_id": "e2"]),
                    Self.event("Purchase", Self.t0 + 20, ["$user_id": "U1", "$insert_id": "e3"]),
                    Self.event("Page", Self.t0 + 30, ["$device_id": "D2", "$insert_id": "e4"]),
                    Self.event("Open", Self.t0 + 40, ["$device_id": "D3", "$user_id": "U1", "$insert_id": "e5"]),
                ]), name: "events.ndjson")
            let feed = try ActivityFeed.run(project: project, id: "$device:D1", limit: nil, on: db)
            #expect(feed.distinctId == "U1")
            #expect(feed.events.map(\.insertId) == ["e5", "e3", "e2", "e1"])
            #expect(feed.events.allSatisfy { $0.distinctId == "U1" })
            #expect(feed.events.last?.ingestedDistinctId == "$device:D1")
            #expect(feed.events.first?.time == "2026-01-01T00:00:40.000Z")
            let limited = try ActivityFeed.run(project: project, id: "U1", limit: 2, on: db)
            #expect(limited.events.map(\.insertId) == ["e5", "e3"])
            let anonymous = try ActivityFeed.run(project: project, id: "$device:D2", limit: nil, on: db)
            #expect(anonymous.events.map(\.insertId) == ["e4"])

            let json = try ActivityFeed.render(limited.events, distinctId: limited.distinctId, as: .json)
            let list = try #require(
                try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [[String: Any]])
            #expect(list.count == 2)
            #expect(Set(list[0].keys) == ["insert_id", "event", "time", "distinct_id", "properties"])
            #expect(list[0]["event"] as? String == "Open")
            #expect((list[0]["properties"] as? [String: Any])?["$device_id"] as? String == "D3")
        }
    }

    /// Cohort export: an anonymous person (`$device:<id>`, no user_id) and an identified one
    /// (user id, every linked device), with profile properties as columns (K1, K6).
    @Test func cohortExportWithAnonymousAndIdentifiedPeople() throws {
        try Self.withProject { db, project, importer in
            _ = try Importer(connection: db, project: project, logger: TestDatabase.logger).importBytes(
                try ndjson([
                    Self.event("Page", Self.t0, ["$device_id": "D1"]),
                    Self.event("Page", Self.t0 + 1, ["$device_id": "D2"]),
                    Self.event("Login", Self.t0 + 2, ["$device_id": "D1", "$user_id": "U1"]),
                    Self.event("Login", Self.t0 + 3, ["$device_id": "D3", "$user_id": "U1"]),
                    Self.event("Page", Self.t0 + 86400 * 3, ["$device_id": "D4"]),
                    Self.event("Other", Self.t0, ["$device_id": "D5"]),
                ]), name: "events.ndjson")
            _ = try importer.importBytes(
                try ndjson([
                    ["$distinct_id": "U1", "$set": ["$email": "u1@example.com", "plan": "pro", "seats": 3]],
                    ["$distinct_id": "$device:D2", "$set": ["plan": "anon"]],
                    ["$distinct_id": "$device:D1", "$set": ["plan": "lost"]],
                ]), name: "profiles.ndjson")
            let export = CohortExport(
                event: "Page", fromDate: "2026-01-01", toDate: "2026-01-02", properties: ["$email", "plan", "seats"])
            let members = try export.run(project: project, on: db)
            #expect(members.map(\.distinctId) == ["$device:D2", "U1"])
            #expect(members.map(\.userId) == [nil, "U1"])
            #expect(members.map(\.deviceIds) == [["D2"], ["D1", "D3"]])
            let csv = try export.render(members, as: .csv)
            #expect(
                csv == """
                    distinct_id,user_id,device_ids,$email,plan,seats
                    $device:D2,,D2,,anon,
                    U1,U1,D1;D3,u1@example.com,pro,3

                    """)
            let json = try export.render(members, as: .json)
            let list = try #require(
                try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [[String: Any]])
            #expect(list[1]["device_ids"] as? [String] == ["D1", "D3"])
            #expect(list[1]["seats"] as? Int == 3)
            #expect(list[0]["user_id"] is NSNull)
            #expect(list[0]["$email"] is NSNull)
            // Without dates: all time, D4 too.
            let all = try CohortExport(event: "Page").run(project: project, on: db)
            #expect(all.map(\.distinctId) == ["$device:D2", "$device:D4", "U1"])
        }
    }

    /// Original projects: the canonical id may be the anonymous one ($create_alias keeps the
    /// distinct_id's cluster); user_id is then the alias, and the `$device:` member is a device.
    @Test func cohortExportInAnOriginalProject() throws {
        try Self.withProject(.original) { db, project, importer in
            let anon = "$device:3f2c5a4e-8b1d-4c3e-9f6a-0123456789ab"
            _ = try Importer(connection: db, project: project, logger: TestDatabase.logger).importBytes(
                try ndjson([
                    Self.event("Page", Self.t0, ["distinct_id": anon]),
                    Self.event("$create_alias", Self.t0 + 5, ["distinct_id": anon, "alias": "U9"]),
                    Self.event("Page", Self.t0 + 10, ["distinct_id": "U9"]),
                    Self.event("Page", Self.t0 + 20, ["distinct_id": "server-user"]),
                ]), name: "events.ndjson")
            _ = try importer.importBytes(
                try ndjson([["$distinct_id": "U9", "$set": ["plan": "pro"]]]), name: "profiles.ndjson")
            let export = CohortExport(event: "Page", properties: ["plan"])
            let members = try export.run(project: project, on: db)
            #expect(members.map(\.distinctId) == [anon, "server-user"])
            #expect(members.map(\.userId) == ["U9", "server-user"])
            #expect(members.map(\.deviceIds) == [["3f2c5a4e-8b1d-4c3e-9f6a-0123456789ab"], []])
            #expect(members.first?.properties.first??.object as? String == "pro")
        }
    }
}
