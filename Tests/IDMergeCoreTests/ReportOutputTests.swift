import Foundation
import IDMergeCore
import IDMergeTestSupport
import PGClient
import Testing

/// The JSON and CSV of `idmerge funnel` and `idmerge attribution`, whole, against
/// interfaces.md: its keys in its order, counts as integers, rates, seconds, conversions and
/// values as floats even when whole (`1.0`), null where nothing is known, and numbers in CSV
/// in full.
@Suite(.enabled(if: TestDatabase.isConfigured, "needs PostgreSQL: run through scripts/test (pg_virtualenv)"))
struct ReportOutputTests {
    /// 2026-01-01T00:00:00Z.
    static let start = 1_767_225_600

    /// u1 does A (touchpoint `g,o"o` + newline + `x`) then B worth 1234567.5 100 s later; u2
    /// does A only, and its window is still open at the newest event.
    static func events() throws -> [UInt8] {
        try ndjson([
            [
                "event": "A",
                "properties": [
                    "time": start, "distinct_id": "u1", "$insert_id": "a1", "utm": "g,o\"o\nx",
                ] as [String: Any],
            ],
            [
                "event": "A",
                "properties": ["time": start + 10, "distinct_id": "u2", "$insert_id": "a2"] as [String: Any],
            ],
            [
                "event": "B",
                "properties": [
                    "time": start + 100, "distinct_id": "u1", "$insert_id": "b1", "revenue": 1_234_567.5,
                ] as [String: Any],
            ],
        ])
    }

    @Test func funnelAndAttributionOutputMatchInterfaces() throws {
        try TestDatabase.withFresh { conninfo in
            let db = try TestDatabase.connect(conninfo)
            defer { db.close() }
            let (project, _) = try Projects.findOrCreateDefault(name: "default", on: db)
            let importer = Importer(connection: db, project: project, logger: TestDatabase.logger)
            _ = try importer.importBytes(try Self.events(), name: "events")

            let funnel = try FunnelReport.run(FunnelQuery(steps: ["A", "B"]), project: project, on: db)
            let funnelJSON = try ReportOutput.render(funnel, as: .json)
            #expect(
                funnelJSON
                    == #"{"steps":[{"event":"A","count":2,"conversion_rate":1.0,"median_seconds_to_convert":null,"#
                    + #""average_seconds_to_convert":null},{"event":"B","count":1,"conversion_rate":0.5,"#
                    + #""median_seconds_to_convert":100.0,"average_seconds_to_convert":100.0}],"in_progress":1,"#
                    + #""breakdown":[],"newest_event_at":"2026-01-01T00:01:40Z","identity_as_of":null,"#
                    + #""pending_links":0}"# + "\n")
            #expect(try JSONSerialization.jsonObject(with: Data(funnelJSON.utf8)) is [String: Any])

            var attributionQuery = AttributionQuery(conversion: "B", touchpoint: "utm")
            attributionQuery.valueProperty = "revenue"
            let attribution = try AttributionReport.run(attributionQuery, project: project, on: db)
            let attributionJSON = try ReportOutput.render(attribution, as: .json)
            #expect(
                attributionJSON
                    == #"{"model":"last-touch","lookback_seconds":2592000,"rows":[{"touchpoint":"g,o\"o\nx","#
                    + #""conversions":1.0,"value":1234567.5}],"total":{"conversions":1.0,"value":1234567.5},"#
                    + #""newest_event_at":"2026-01-01T00:01:40Z","identity_as_of":null,"pending_links":0}"# + "\n")
            let parsed = try JSONSerialization.jsonObject(with: Data(attributionJSON.utf8)) as? [String: Any]
            let rows = parsed?["rows"] as? [[String: Any]]
            #expect(rows?.first?["touchpoint"] as? String == "g,o\"o\nx")

            // CSV: RFC 4180 quoting, and the value in full (it was 1.23457e+06).
            #expect(
                try ReportOutput.render(attribution, as: .csv)
                    == "touchpoint,conversions,value,share\n\"g,o\"\"o\nx\",1,1234567.5,1\n")
        }
    }

    /// Values that no double holds (`1e400`, `12345678901234567890`) are valid JSON, and import
    /// and profiles import store them; `idmerge activity` failed on such an event ("cannot be
    /// decoded as JSONValue") and `cohort export` showed such a property as missing.
    @Test func activityAndCohortExportKeepValuesNoDoubleHolds() throws {
        try TestDatabase.withFresh { conninfo in
            let db = try TestDatabase.connect(conninfo)
            defer { db.close() }
            let (project, _) = try Projects.findOrCreateDefault(name: "default", on: db)
            let values = #""huge":1e400,"big":12345678901234567890,"price":19.99"#
            let event =
                #"{"event":"E","properties":{"time":\#(Self.start),"distinct_id":"u1","$insert_id":"e1",\#(values)}}"#
            let importer = Importer(connection: db, project: project, logger: TestDatabase.logger)
            #expect(try importer.importBytes(Array((event + "\n").utf8), name: "events").stored == 1)
            let update = #"{"$distinct_id":"u1","$set":{\#(values)}}"#
            let profiles = ProfileImporter(connection: db, project: project, logger: TestDatabase.logger)
            _ = try profiles.importBytes(Array((update + "\n").utf8), name: "profiles")

            let huge = "1" + String(repeating: "0", count: 400)
            let feed = try ActivityFeed.run(project: project, id: "u1", limit: nil, on: db)
            let activity = try ActivityFeed.render(feed.events, distinctId: feed.distinctId, as: .json)
            for expected in [#""huge": \#(huge)"#, #""big": 12345678901234567890"#, #""price": 19.99"#] {
                #expect(activity.contains(expected), "activity JSON lacks \(expected): \(activity.prefix(300))")
            }

            let export = CohortExport(event: "E", properties: ["huge", "big", "price", "absent"])
            let members = try export.run(project: project, on: db)
            #expect(
                try export.render(members, as: .csv)
                    == "distinct_id,user_id,device_ids,huge,big,price,absent\nu1,u1,,\(huge),12345678901234567890,19.99,\n"
            )
            #expect(
                try export.render(members, as: .json)
                    == #"[{"absent":null,"big":12345678901234567890,"device_ids":[],"distinct_id":"u1","huge":\#(huge),"#
                    + #""price":19.99,"user_id":"u1"}]"# + "\n")
        }
    }
}
