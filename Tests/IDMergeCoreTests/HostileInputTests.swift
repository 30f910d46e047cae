import Foundation
import IDMergeTestSupport
import PGClient
import Testing

@testable import IDMergeCore

/// Input found to break imports or reports (bugs fixed; each test holds the right value).
@Suite(.enabled(if: TestDatabase.isConfigured, "needs PostgreSQL: run through scripts/test (pg_virtualenv)"))
struct HostileInputTests {
    @Test func oversizedKeysAndNumbersAreRefusedNotFatal() throws {
        let long = String(repeating: "k7Q", count: 1400)
        let digits = "1" + String(repeating: "0", count: 140_000)
        let lines = [
            #"{"event":"Good","properties":{"time":1767225600,"distinct_id":"a","$insert_id":"g1"}}"#,
            "{\"event\":\"\(long)\",\"properties\":{\"time\":1767225600,\"distinct_id\":\"x\"}}",
            "{\"event\":\"E\",\"properties\":{\"time\":1767225600,\"distinct_id\":\"\(long)\"}}",
            "{\"event\":\"E\",\"properties\":{\"time\":1767225600,\"$device_id\":\"\(long)\",\"$user_id\":\"u\"}}",
            "{\"event\":\"E\",\"properties\":{\"time\":1767225600,\"distinct_id\":\"x\",\"big\":\(digits)}}",
            #"{"event":"Good","properties":{"time":1767225600,"distinct_id":"b","$insert_id":"g2"}}"#,
        ]
        try TestDatabase.withFresh { conninfo in
            let db = try TestDatabase.connect(conninfo)
            defer { db.close() }
            let (project, _) = try Projects.findOrCreateDefault(name: "default", on: db)
            let summary = try Importer(connection: db, project: project, logger: TestDatabase.logger)
                .importBytes(ndjsonLines(lines), name: "hostile")
            #expect(summary.stored == 2)
            #expect(summary.refused == 4)
            let fields = try db.query("select field from idmerge.refused_records order by position").rows.map {
                $0["field"] ?? ""
            }
            #expect(fields == ["event", "properties.distinct_id", "properties.$device_id", "properties.big"])
        }
    }

    @Test func identifierEdgeCases() throws {
        let lines = [
            // A byte order mark before the first record.
            "\u{FEFF}" + #"{"event":"A","properties":{"time":1767225600,"distinct_id":"bom","$insert_id":"i1"}}"#,
            // Exactly 1e11 is seconds (year 5138), so it is refused as future.
            #"{"event":"A","properties":{"time":100000000000,"distinct_id":"t","$insert_id":"i2"}}"#,
            // A no-break space is blank; 0.0 is the placeholder 0.
            #"{"event":"A","properties":{"time":1767225600,"$device_id":"d1","$user_id":"\u00a0","$insert_id":"i3"}}"#,
            #"{"event":"A","properties":{"time":1767225600,"$device_id":"d2","distinct_id":0.0,"$insert_id":"i4"}}"#,
            // A $device_id sent with its prefix is the same device.
            #"{"event":"A","properties":{"time":1767225600,"$device_id":"$device:d3","$insert_id":"i5"}}"#,
            // A line separator is not printable.
            #"{"event":"A","properties":{"time":1767225600,"distinct_id":"p","$insert_id":"a\u2028b"}}"#,
            // Without $insert_id, 1767225700 and 1767225700.0 are the same event.
            #"{"event":"B","properties":{"time":1767225700,"distinct_id":"n"}}"#,
            #"{"event":"B","properties":{"time":1767225700.0,"distinct_id":"n"}}"#,
        ]
        try TestDatabase.withFresh { conninfo in
            let db = try TestDatabase.connect(conninfo)
            defer { db.close() }
            let (project, _) = try Projects.findOrCreateDefault(name: "default", on: db)
            let summary = try Importer(connection: db, project: project, logger: TestDatabase.logger)
                .importBytes(ndjsonLines(lines), name: "edges")
            #expect(summary.refused == 2)
            #expect(summary.duplicates == 1)
            let rows = Dictionary(
                uniqueKeysWithValues: try db.query(
                    "select insert_id, ingested_distinct_id, identity_failure_reason from idmerge.events"
                ).rows.map { ($0["insert_id"] ?? "", $0) })
            #expect(rows["i1"]?["ingested_distinct_id"] == "bom")
            #expect(rows["i3"]?["ingested_distinct_id"] == "$device:d1")
            #expect(rows["i3"]?["identity_failure_reason"] == "errInvalidIdentifier")
            #expect(rows["i4"]?["ingested_distinct_id"] == "$device:d2")
            #expect(rows["i4"]?["identity_failure_reason"] == "errInvalidIdentifier")
            #expect(rows["i5"]?["ingested_distinct_id"] == "$device:d3")
            let refused = try db.query("select position, field, reason from idmerge.refused_records order by position")
                .rows
            #expect(refused.map { $0["field"] } == ["properties.time", "properties.$insert_id"])
            #expect(refused.first?["reason"]?.contains("future") == true)
        }
    }

    @Test func aBOMBeforeAJSONArray() throws {
        let body = "\u{FEFF}[" + #"{"event":"A","properties":{"time":1767225600,"distinct_id":"x"}}"# + "]"
        try TestDatabase.withFresh { conninfo in
            let db = try TestDatabase.connect(conninfo)
            defer { db.close() }
            let (project, _) = try Projects.findOrCreateDefault(name: "default", on: db)
            let summary = try Importer(connection: db, project: project, logger: TestDatabase.logger)
                .importBytes(Array(body.utf8), name: "bom.json")
            #expect(summary.stored == 1)
            #expect(summary.refused == 0)
        }
    }

    @Test func hugeValuesDoNotBreakAttribution() throws {
        let lines = [
            #"{"event":"Buy","properties":{"time":1767225600,"distinct_id":"r1","revenue":1e400,"utm_source":"fb"}}"#,
            #"{"event":"Buy","properties":{"time":1767225601,"distinct_id":"r2","revenue":1.7e308,"utm_source":"fb"}}"#,
            #"{"event":"Buy","properties":{"time":1767225602,"distinct_id":"r3","revenue":1.7e308,"utm_source":"fb"}}"#,
            #"{"event":"Buy","properties":{"time":1767225603,"distinct_id":"r4","revenue":"12.5","utm_source":"fb"}}"#,
        ]
        try TestDatabase.withFresh { conninfo in
            let db = try TestDatabase.connect(conninfo)
            defer { db.close() }
            let (project, _) = try Projects.findOrCreateDefault(name: "default", on: db)
            _ = try Importer(connection: db, project: project, logger: TestDatabase.logger)
                .importBytes(ndjsonLines(lines), name: "huge")
            var query = AttributionQuery(conversion: "Buy", touchpoint: "utm_source")
            query.valueProperty = "revenue"
            let report = try AttributionReport.run(query, project: project, on: db)
            #expect(report.rows.count == 1)
            #expect(report.rows.first?.conversions == 4)
            #expect(report.rows.first?.value == 12.5)
        }
    }
}

@Suite struct ReportOptionTests {
    @Test func datesAndBoundsAreChecked() {
        #expect(ReportDates.isDate("2026-02-28"))
        #expect(!ReportDates.isDate("2026-02-30"))
        #expect(!ReportDates.isDate("0000-01-01"))
        #expect(!ReportDates.isDate("+202-01-01"))
        #expect(throws: FunnelError.self) { try ReportDates.validate(from: "2026-01-10", to: "2026-01-01") }
        var attribution = AttributionQuery(conversion: "C", touchpoint: "t")
        attribution.lookbackSeconds = 1e308
        #expect(throws: FunnelError.self) { try attribution.validate() }
        var funnel = FunnelQuery(steps: ["A", "B"])
        funnel.graceSeconds = 1e308
        #expect(throws: FunnelError.self) { try funnel.validate() }
    }

    @Test func tableOutputNeutralisesControlCharacters() {
        #expect(ReportOutput.printable("a\nb\u{1b}[31m") == "a\u{FFFD}b\u{FFFD}[31m")
    }
}
