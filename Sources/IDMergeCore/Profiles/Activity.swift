import Foundation
import PGClient

/// One event of a person's activity feed.
public struct ActivityEvent: @unchecked Sendable {
    public var insertId: String
    public var event: String
    /// Event time, ISO 8601 in UTC with milliseconds (`2026-01-02T03:04:05.678Z`).
    public var time: String
    /// The person's canonical distinct_id (resolved live).
    public var distinctId: String
    /// The id the event was ingested under (`$device:D1` for an anonymous event).
    public var ingestedDistinctId: String
    /// The event's properties as stored: the `jsonb` text PostgreSQL sends, exact (numbers
    /// such as `1e400` or `12345678901234567890` included, which no double holds).
    public var propertiesJSON: String
    /// The event's properties, parsed; nil when Foundation cannot hold a value (`1e400`).
    public var properties: JSONValue? { JSONValue.decode(postgresText: propertiesJSON) }
}

/// A person's events, newest first: `idmerge activity ID`.
///
/// The id may be any of the person's ids (a user id, `$device:D`, a member of an original
/// cluster); it is resolved live, so the feed is right the moment an import commits.
/// `select * from idmerge.activity(project, id, limit)` gives the same rows in SQL.
public enum ActivityFeed {
    /// Reads the feed.
    ///
    /// - Parameters:
    ///   - id: any id of the person.
    ///   - limit: the most events returned; nil for all of them.
    /// - Returns: the canonical distinct_id the id resolved to, and the events newest first.
    public static func run(project: Project, id: String, limit: Int?, on connection: Connection) throws -> (
        distinctId: String, events: [ActivityEvent]
    ) {
        let canonical: String = try connection.query(
            "select idmerge.resolve_identity($1, $2) as id", [project.id, id]
        ).first!.decode("id")
        let rows = try connection.query(
            """
            select insert_id, event,
                to_char(time at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') as time,
                distinct_id, ingested_distinct_id, properties
            from idmerge.activity($1, $2, $3)
            """, [project.name, id, limit])
        let events = try rows.rows.map { row in
            ActivityEvent(
                insertId: try row.decode("insert_id"), event: try row.decode("event"), time: try row.decode("time"),
                distinctId: try row.decode("distinct_id"), ingestedDistinctId: try row.decode("ingested_distinct_id"),
                propertiesJSON: try row.decode("properties"))
        }
        return (canonical, events)
    }

    /// Renders the feed: `json` is a list of `{insert_id, event, time, distinct_id, properties}`;
    /// `table` one line per event; `csv` the same columns as the table.
    public static func render(_ events: [ActivityEvent], distinctId: String, as format: OutputFormat) throws -> String {
        switch format {
        case .json:
            // Keys sorted; the properties as stored, so no value is lost to a double.
            let list = ReportJSON.array(
                events.map {
                    .object([
                        ("distinct_id", .string($0.distinctId)), ("event", .string($0.event)),
                        ("insert_id", .string($0.insertId)), ("properties", .raw($0.propertiesJSON)),
                        ("time", .string($0.time)),
                    ])
                })
            return list.text + "\n"
        case .csv:
            var lines = ["time,event,distinct_id,sent_as,insert_id"]
            for e in events {
                lines.append(
                    [e.time, e.event, e.distinctId, e.ingestedDistinctId, e.insertId].map(ReportOutput.csvField)
                        .joined(separator: ","))
            }
            return lines.joined(separator: "\n") + "\n"
        case .table:
            var out =
                "Activity of \(distinctId): \(events.count) event\(events.count == 1 ? "" : "s"), newest first\n\n"
            guard !events.isEmpty else { return out }
            let eventWidth = max(5, events.map { $0.event.count }.max() ?? 0)
            let sentWidth = max(7, events.map { $0.ingestedDistinctId.count }.max() ?? 0)
            out +=
                "  " + ReportOutput.pad("time", 24) + "  " + ReportOutput.pad("event", eventWidth) + "  "
                + ReportOutput.pad("sent as", sentWidth) + "  insert_id\n"
            for e in events {
                out +=
                    "  " + ReportOutput.pad(e.time, 24) + "  " + ReportOutput.pad(e.event, eventWidth) + "  "
                    + ReportOutput.pad(e.ingestedDistinctId, sentWidth) + "  " + e.insertId + "\n"
            }
            return out
        }
    }
}
