import Foundation
import IDMergeCore
import IDMergeTestSupport
import PGClient
import Testing

/// Builds a typed funnel query from a case's `funnel` object (acceptance/README.md).
func funnelQuery(_ object: [String: Any]) throws -> FunnelQuery {
    var query = FunnelQuery(steps: object["steps"] as? [String] ?? [])
    if let window = object["window"] as? String { query.windowSeconds = try DurationParser.seconds(window) }
    if let counting = object["counting"] as? String { query.counting = try #require(.init(rawValue: counting)) }
    if let order = object["order"] as? String { query.order = try #require(.init(rawValue: order)) }
    if let exclude = object["exclude"] as? [String] {
        query.exclusions = try exclude.map { try FunnelQuery.Exclusion(argument: $0) }
    }
    query.hold = object["hold"] as? String
    query.breakdown = object["breakdown"] as? String
    if let attribution = object["breakdown_attribution"] as? String { query.breakdownAttribution = attribution }
    if let grace = object["grace"] as? String { query.graceSeconds = try DurationParser.seconds(grace) }
    query.fromDate = object["from"] as? String
    query.toDate = object["to"] as? String
    return query
}

func attributionQuery(_ object: [String: Any]) throws -> AttributionQuery {
    var query = AttributionQuery(
        conversion: try #require(object["conversion"] as? String),
        touchpoint: try #require(object["touchpoint"] as? String))
    query.valueProperty = object["value"] as? String
    if let model = object["model"] as? String { query.model = try #require(.init(rawValue: model)) }
    if let lookback = object["lookback"] as? String { query.lookbackSeconds = try DurationParser.seconds(lookback) }
    if let perUser = object["per_user"] as? String {
        query.perUser = AttributionQuery.PerUser(rawValue: perUser)
        try #require(query.perUser != nil, "unknown per_user \(perUser)")
    }
    if let weights = object["weights"] as? [Double] { query.weights = weights }
    if let weights = object["weights"] as? String {
        query.weights = weights.split(separator: ",").compactMap { Double($0) }
    }
    query.fromDate = object["from"] as? String
    query.toDate = object["to"] as? String
    return query
}

func number(_ value: Any?) -> Double? {
    (value as? NSNumber)?.doubleValue
}

/// Checks one query's expectations; `context` names the case, the query and the phase.
func checkReportQuery(_ item: [String: Any], project: Project, on db: Connection, context: String) throws {
    let expect = item["expect"] as? [String: Any] ?? [:]
    if let funnel = item["funnel"] as? [String: Any] {
        let report = try FunnelReport.run(try funnelQuery(funnel), project: project, on: db)
        if let steps = expect["steps"] as? [Int] {
            #expect(report.steps.map(\.count) == steps, "\(context): steps")
        }
        if let inProgress = expect["in_progress"] as? Int {
            #expect(report.inProgress == inProgress, "\(context): in_progress")
        }
        if let breakdown = expect["breakdown"] as? [String: [Int]] {
            let actual = Dictionary(uniqueKeysWithValues: report.breakdown.map { ($0.value, $0.steps.map(\.count)) })
            for (value, counts) in breakdown {
                #expect(actual[value] ?? counts.map { _ in 0 } == counts, "\(context): breakdown \(value)")
            }
            for (value, counts) in actual where breakdown[value] == nil {
                #expect(counts.allSatisfy { $0 == 0 }, "\(context): unexpected segment \(value) \(counts)")
            }
        }
        // The JSON output carries the freshness fields.
        let json = try ReportOutput.render(report, as: .json)
        #expect(json.contains("\"pending_links\""), "\(context): json")
    } else if let attribution = item["attribution"] as? [String: Any] {
        let report = try AttributionReport.run(try attributionQuery(attribution), project: project, on: db)
        let actual = Dictionary(uniqueKeysWithValues: report.rows.map { ($0.touchpoint, $0) })
        let rows = expect["rows"] as? [String: [String: Any]] ?? [:]
        for (touchpoint, fields) in rows {
            let row = actual[touchpoint]
            if let conversions = number(fields["conversions"]) {
                #expect(abs((row?.conversions ?? 0) - conversions) < 1e-6, "\(context): \(touchpoint) conversions")
            }
            if let value = number(fields["value"]) {
                #expect(abs((row?.value ?? 0) - value) < 1e-6, "\(context): \(touchpoint) value")
            }
        }
        for (touchpoint, row) in actual where rows[touchpoint] == nil {
            #expect(abs(row.conversions) < 1e-6, "\(context): unexpected touchpoint \(touchpoint)")
        }
    } else {
        Issue.record("\(context): unknown query kind \(item.keys.sorted())")
    }
}

@Suite(.enabled(if: TestDatabase.isConfigured, "needs PostgreSQL: run through scripts/test (pg_virtualenv)"))
struct ReportAcceptanceTests {
    static func cases() -> [String] { Shared.caseFiles("reports") }

    /// Every report case, before and after the nightly job (both must give the same answer).
    @Test("acceptance: reports", arguments: cases())
    func reportCase(path: String) throws {
        let name = URL(fileURLWithPath: path).lastPathComponent
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        let object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let mode = IDMergeMode(rawValue: object["id_merge"] as? String ?? "simplified") ?? .simplified
        try TestDatabase.withFresh { conninfo in
            let db = try TestDatabase.connect(conninfo)
            defer { db.close() }
            let project = try Projects.create(name: "default", mode: mode, on: db).project
            let importer = Importer(connection: db, project: project, logger: TestDatabase.logger)
            for (index, batch) in (object["batches"] as? [[Any]] ?? []).enumerated() {
                let summary = try importer.importBytes(try ndjson(batch), name: "batch-\(index)")
                #expect(summary.refused == 0, "\(name): batch \(index) refused records")
            }
            let queries = object["queries"] as? [[String: Any]] ?? []
            for (index, item) in queries.enumerated() {
                try checkReportQuery(item, project: project, on: db, context: "\(name) query \(index) before nightly")
            }
            _ = try NightlyJob(connection: db, project: project, logger: TestDatabase.logger).run()
            for (index, item) in queries.enumerated() {
                try checkReportQuery(item, project: project, on: db, context: "\(name) query \(index) after nightly")
            }
        }
    }
}
