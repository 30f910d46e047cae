import Foundation
import IDMergeCore
import IDMergeTestSupport
import PGClient
import Testing

@Suite(.enabled(if: TestDatabase.isConfigured, "needs PostgreSQL: run through scripts/test (pg_virtualenv)"))
struct ImportTests {
    /// The real Olist lead funnel: nothing refused, every signed-up lead resolves to its
    /// seller, and a second import stores nothing new.
    @Test func olistImportsAndResolvesEverySignedUpLead() throws {
        let path = Shared.root.appendingPathComponent("data/olist/events.ndjson").path
        guard FileManager.default.fileExists(atPath: path) else {
            #expect(!Shared.isCI, "the shared folder must be present under CI")
            return
        }
        try TestDatabase.withFresh { conninfo in
            let db = try TestDatabase.connect(conninfo)
            defer { db.close() }
            let (project, _) = try Projects.findOrCreateDefault(name: "default", on: db)
            let importer = Importer(connection: db, project: project, logger: TestDatabase.logger)
            let first = try importer.importFile(path)
            #expect(first.records == 8842)
            #expect(first.refused == 0)
            #expect(first.stored == 8842)
            let signedUp = try db.query(
                """
                select count(distinct device_id) as leads,
                       count(distinct device_id) filter (where distinct_id = user_id) as resolved
                from (
                    select l.device_id, l.distinct_id, s.user_id
                    from idmerge.resolved_events as l
                    join idmerge.resolved_events as s
                        on s.device_id = l.device_id and s.event = 'Seller Signed Up'
                    where l.event = 'Lead Captured'
                ) as pairs
                """
            ).first!
            #expect(try signedUp.decode("leads", as: Int.self) == 842)
            #expect(try signedUp.decode("resolved", as: Int.self) == 842)
            let second = try importer.importFile(path)
            #expect(second.duplicates == 8842)
            let count = try db.query("select count(*) as n from idmerge.events").first!.decode("n", as: Int.self)
            #expect(count == 8842)
        }
    }

    /// Bad records are refused with their line, field and reason; good ones are stored.
    @Test func badRecordsAreRefusedWithLineFieldAndReason() throws {
        let now = Int(Date().timeIntervalSince1970)
        let big = String(repeating: "x", count: 1_100_000)
        let lines: [String] = [
            #"{"event":"Good","properties":{"time":1767225600,"$device_id":"D1","$insert_id":"g1"}}"#,
            #"{"event":"Broken","properties":{"time":1767225600,"$device_id":"D1""#,
            #"{"event":"WrongTime","properties":{"time":"yesterday","$device_id":"D1","$insert_id":"w1"}}"#,
            #"{"event":"Old","properties":{"time":1000,"$device_id":"D1","$insert_id":"o1"}}"#,
            "{\"event\":\"Future\",\"properties\":{\"time\":\(now + 7200),\"$device_id\":\"D1\",\"$insert_id\":\"f1\"}}",
            "{\"event\":\"Huge\",\"properties\":{\"time\":1767225600,\"$device_id\":\"D1\",\"blob\":\"\(big)\"}}",
            #"{"event":"NoIds","properties":{"time":1767225600,"$user_id":"undefined","$insert_id":"n1"}}"#,
            #"{"event":"Nul","properties":{"time":1767225600,"$device_id":"D1","x":"a\u0000b","$insert_id":"z1"}}"#,
            #"{"event":"","properties":{"time":1767225600,"$device_id":"D1","$insert_id":"e1"}}"#,
            #"{"event":"NoProps"}"#,
            #"[1,2,3]"#,
            #"{"event":"Placeholder","properties":{"time":1767225600,"$device_id":"D2","$user_id":"null","$insert_id":"p1"}}"#,
            #"{"event":"Good2","properties":{"time":1767225601000,"$user_id":"U1","$insert_id":"g2"}}"#,
        ]
        var bytes = Array(lines.joined(separator: "\n").utf8)
        bytes.append(0x0A)
        // Invalid UTF-8 inside a string.
        bytes.append(
            contentsOf: Array(#"{"event":"BadUTF8","properties":{"time":1767225600,"$device_id":"D1","s":""#.utf8))
        bytes.append(contentsOf: [0xC3, 0x28])
        bytes.append(contentsOf: Array("\"}}\n".utf8))
        try TestDatabase.withFresh { conninfo in
            let db = try TestDatabase.connect(conninfo)
            defer { db.close() }
            let (project, _) = try Projects.findOrCreateDefault(name: "default", on: db)
            let summary = try Importer(connection: db, project: project, logger: TestDatabase.logger)
                .importBytes(bytes, name: "bad.ndjson")
            #expect(summary.records == 14)
            #expect(summary.stored == 3)
            #expect(summary.refused == 11)
            #expect(summary.warnings == 1)
            let refused = try db.query(
                "select position, position_kind, field, reason from idmerge.refused_records order by position"
            ).rows
            let byLine = Dictionary(uniqueKeysWithValues: refused.map { (Int($0["position"]!)!, $0) })
            func expectRefused(_ line: Int, field: String, reason: String) {
                let row = byLine[line]
                #expect(row?["field"] == field, "line \(line)")
                #expect(row?["reason"]?.contains(reason) == true, "line \(line): \(row?["reason"] ?? "not refused")")
                #expect(row?["position_kind"] == "line")
            }
            expectRefused(2, field: "properties", reason: "malformed JSON")
            expectRefused(3, field: "properties.time", reason: "must be a number")
            expectRefused(4, field: "properties.time", reason: "before 1971")
            expectRefused(5, field: "properties.time", reason: "future")
            expectRefused(6, field: "(record)", reason: "1 MB")
            expectRefused(7, field: "properties.distinct_id", reason: "no usable identifier")
            expectRefused(8, field: "properties.x", reason: "\\u0000")
            expectRefused(9, field: "event", reason: "must not be empty")
            expectRefused(10, field: "properties", reason: "missing")
            expectRefused(11, field: "(record)", reason: "JSON object")
            expectRefused(14, field: "properties.s", reason: "UTF-8")
            let placeholder = try db.query(
                "select distinct_id, identity_failure_reason from idmerge.resolved_events where insert_id = 'p1'"
            ).first
            #expect(placeholder?["distinct_id"] == "$device:D2")
            #expect(placeholder?["identity_failure_reason"] == "errInvalidIdentifier")
            let millis = try db.query("select time from idmerge.events where insert_id = 'g2'").first
            #expect(
                millis.flatMap { try? $0.decode("time", as: Date.self) }.map(PostgresTimestamp.format)
                    == "2026-01-01T00:00:01.000Z")
        }
    }

    /// A JSON array, gzip-compressed, with a duplicate inside the batch and `$ignore`.
    @Test func gzipJSONArrayWithDuplicatesAndIgnore() throws {
        let events: [[String: Any]] = [
            ["event": "A", "properties": ["time": 1_767_225_600, "$device_id": "D1", "$insert_id": "a1", "v": 1]],
            ["event": "A", "properties": ["time": 1_767_225_600, "$device_id": "D1", "$insert_id": "a1", "v": 2]],
            ["event": "B", "properties": ["time": 1767225601.5, "$device_id": "D1", "$ignore": true]],
            ["event": "C", "properties": ["time": 1_767_225_602, "$device_id": "D1"]],
        ]
        let json = try JSONSerialization.data(withJSONObject: events)
        let gzipped = try gzip(Array(json))
        try TestDatabase.withFresh { conninfo in
            let db = try TestDatabase.connect(conninfo)
            defer { db.close() }
            let (project, _) = try Projects.findOrCreateDefault(name: "default", on: db)
            let importer = Importer(connection: db, project: project, logger: TestDatabase.logger)
            let summary = try importer.importBytes(gzipped, name: "events.json.gz")
            #expect(summary.records == 4)
            #expect(summary.stored == 2)
            #expect(summary.duplicates == 1)
            #expect(summary.ignored == 1)
            let latest = try db.query("select properties->>'v' as v from idmerge.events where insert_id = 'a1'").first
            #expect(latest?["v"] == "2")
            // A missing $insert_id is derived deterministically: importing again is idempotent.
            let again = try importer.importBytes(gzipped, name: "events.json.gz")
            #expect(again.duplicates == 3)
            #expect(try db.query("select count(*) as n from idmerge.events").first?.decode("n", as: Int.self) == 2)
        }
    }

    /// A failure half-way leaves nothing behind.
    @Test func aFailedBatchLeavesNothing() throws {
        try TestDatabase.withFresh { conninfo in
            let db = try TestDatabase.connect(conninfo)
            defer { db.close() }
            let (project, _) = try Projects.findOrCreateDefault(name: "default", on: db)
            let importer = Importer(connection: db, project: project, logger: TestDatabase.logger)
            var good = Array(#"{"event":"A","properties":{"time":1767225600,"$device_id":"D1"}}"#.utf8)
            good.append(0x0A)
            let truncatedGzip = Array(try gzip(good + good + good).dropLast(12))
            #expect(throws: SourceError.self) { try importer.importBytes(truncatedGzip, name: "cut.gz") }
            let counts = try db.query(
                "select (select count(*) from idmerge.events) as e, (select count(*) from idmerge.import_batches) as b"
            ).first!
            #expect(try counts.decode("e", as: Int.self) == 0)
            #expect(try counts.decode("b", as: Int.self) == 0)
        }
    }

    /// A batch under an eighth of the identity map takes index probes instead of hash joins
    /// (sql/020_merge_staged_simplified.sql): it still resolves through stored links, flags a
    /// device linked to another user, links a new device, replaces a stored copy and counts
    /// it, and leaves the session's join settings as they were.
    @Test func aSmallBatchAgainstALargeMapIsExact() throws {
        try TestDatabase.withFresh { conninfo in
            let db = try TestDatabase.connect(conninfo)
            defer { db.close() }
            let (project, _) = try Projects.findOrCreateDefault(name: "default", on: db)
            let importer = Importer(connection: db, project: project, logger: TestDatabase.logger)
            let t = 1_767_225_600
            let links = (0..<200).map { n in
                #"{"event":"Login","properties":{"time":\#(t + n),"$device_id":"D\#(n)","$user_id":"U\#(n)","$insert_id":"l\#(n)"}}"#
            }
            let first = try importer.importBytes(Array(links.joined(separator: "\n").utf8), name: "links")
            #expect(first.links == 200)
            try db.execute("analyze idmerge.identity_map")
            let small = [
                #"{"event":"View","properties":{"time":\#(t + 500),"$device_id":"D7","$insert_id":"s1"}}"#,
                #"{"event":"View","properties":{"time":\#(t + 501),"$device_id":"D8","$user_id":"U9","$insert_id":"s2"}}"#,
                #"{"event":"View","properties":{"time":\#(t + 502),"$device_id":"NEW","$user_id":"U1","$insert_id":"s3"}}"#,
                #"{"event":"Login","properties":{"time":\#(t + 3),"$device_id":"D3","$user_id":"U3","$insert_id":"l3","v":2}}"#,
            ]
            let summary = try importer.importBytes(Array(small.joined(separator: "\n").utf8), name: "small")
            #expect(summary.stored == 4)
            #expect(summary.duplicates == 1)
            #expect(summary.links == 1)
            let rows = try db.query(
                """
                select insert_id, distinct_id, coalesce(identity_failure_reason, '') as failure,
                    coalesce(properties->>'v', '') as v
                from idmerge.events where insert_id in ('s1', 's2', 's3', 'l3') order by insert_id
                """
            ).rows.map { "\($0["insert_id"]!) \($0["distinct_id"]!) \($0["failure"]!) \($0["v"]!)" }
            #expect(
                rows == [
                    "l3 U3  2", "s1 U7  ", "s2 U9 errAnonDistinctIdAssignedAlready ", "s3 U1  ",
                ])
            let link = try db.query("select canonical_id from idmerge.identity_map where id = '$device:NEW'").first
            #expect(link?["canonical_id"] == "U1")
            let settings = try db.query(
                "select current_setting('enable_hashjoin') as h, current_setting('enable_mergejoin') as m"
            ).first
            #expect(settings?["h"] == "on")
            #expect(settings?["m"] == "on")
        }
    }
}
