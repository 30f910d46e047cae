import Foundation
import PGClient

/// One person of a cohort export.
public struct CohortMember: @unchecked Sendable {
    /// Canonical distinct_id: the user id, or `$device:<id>` for an anonymous person (K1).
    public var distinctId: String
    /// The person's user id; nil for an anonymous person.
    public var userId: String?
    /// Every device linked to the person, without the `$device:` prefix, sorted.
    public var deviceIds: [String]
    /// The requested profile properties, in the order asked, as the `jsonb` text PostgreSQL
    /// sends (exact, even for numbers no double holds, such as `1e400`); nil when the profile
    /// lacks one (or the person has no profile).
    public var propertiesJSON: [String?]
    /// The requested profile properties, parsed; nil when the profile lacks one, or when
    /// Foundation cannot hold its value (`1e400`: read ``propertiesJSON``).
    public var properties: [JSONValue?] { propertiesJSON.map { $0.flatMap { JSONValue.decode(postgresText: $0) } } }
}

/// The people who did an event, for another tool: `idmerge cohort export`.
///
/// People are resolved live. `select * from idmerge.cohort_export(project, event, from, to)`
/// gives the same people in SQL, with the whole profile as `properties`.
public struct CohortExport {
    public var event: String
    /// First UTC date (YYYY-MM-DD) of the event, inclusive; nil for no bound.
    public var fromDate: String?
    /// Last UTC date (YYYY-MM-DD) of the event, inclusive; nil for no bound.
    public var toDate: String?
    /// Profile properties to export, one column each (K6).
    public var properties: [String] = []

    public init(event: String, fromDate: String? = nil, toDate: String? = nil, properties: [String] = []) {
        self.event = event
        self.fromDate = fromDate
        self.toDate = toDate
        self.properties = properties
    }

    /// Checks the dates and the column names.
    ///
    /// - Throws: ``CohortExportError`` with a message for the command line.
    public func validate() throws {
        for date in [fromDate, toDate].compactMap({ $0 }) where !ReportDates.isDate(date) {
            throw CohortExportError(message: "invalid date \(date): use YYYY-MM-DD (UTC)")
        }
        if let fromDate, let toDate, fromDate > toDate {
            throw CohortExportError(message: "--from \(fromDate) is after --to \(toDate)")
        }
        for property in properties where ["distinct_id", "user_id", "device_ids"].contains(property) {
            throw CohortExportError(message: "--property \(property) would repeat a column every export has")
        }
    }

    /// Runs the export.
    public func run(project: Project, on connection: Connection) throws -> [CohortMember] {
        try validate()
        let rows = try connection.query(
            """
            select distinct_id, user_id, to_jsonb(device_ids)::text as device_ids,
                to_jsonb(array(select (properties -> name)::text from unnest($5::text[]) as name))::text
                    as requested
            from idmerge.cohort_export($1, $2, $3::date, $4::date)
            order by distinct_id
            """, [project.name, event, fromDate, toDate, PostgresArray.text(properties)])
        return try rows.rows.map { row in
            let devices: JSONValue = try row.decode("device_ids")
            let requested: JSONValue = try row.decode("requested")
            let values = (requested.object as? [Any]) ?? []
            return CohortMember(
                distinctId: try row.decode("distinct_id"), userId: try row.decode("user_id"),
                deviceIds: (devices.object as? [String]) ?? [],
                propertiesJSON: properties.indices.map { index in
                    index < values.count ? values[index] as? String : nil
                })
        }
    }

    /// Renders the export. `csv` (the default of the command): `distinct_id,user_id,device_ids`
    /// then one column per property; device ids are joined with `;`, text properties are
    /// written as text and other values as JSON. `json`: a list of objects with the same keys.
    /// `table`: aligned columns.
    public func render(_ members: [CohortMember], as format: OutputFormat) throws -> String {
        switch format {
        case .json:
            // Keys sorted; property values as stored, so no value is lost to a double.
            let list = ReportJSON.array(
                members.map { member in
                    var object: [String: ReportJSON] = [
                        "distinct_id": .string(member.distinctId),
                        "user_id": member.userId.map(ReportJSON.string) ?? .null,
                        "device_ids": .array(member.deviceIds.map(ReportJSON.string)),
                    ]
                    for (name, value) in zip(properties, member.propertiesJSON) {
                        object[name] = value.map(ReportJSON.raw) ?? .null
                    }
                    return .object(object.sorted { $0.key < $1.key }.map { ($0.key, $0.value) })
                })
            return list.text + "\n"
        case .csv, .table:
            var rows = [["distinct_id", "user_id", "device_ids"] + properties]
            for member in members {
                rows.append(
                    [member.distinctId, member.userId ?? "", member.deviceIds.joined(separator: ";")]
                        + member.propertiesJSON.map(Self.cell))
            }
            if format == .csv {
                return rows.map { $0.map(ReportOutput.csvField).joined(separator: ",") }.joined(separator: "\n") + "\n"
            }
            let widths = rows[0].indices.map { column in rows.map { $0[column].count }.max() ?? 0 }
            return rows.map { row in
                "  " + zip(row, widths).map { ReportOutput.pad($0, $1) }.joined(separator: "  ")
            }.map { $0.replacingOccurrences(of: "\\s+$", with: "", options: .regularExpression) }
                .joined(separator: "\n") + "\n"
        }
    }

    /// A property value (its JSON text) as one CSV cell: text as is, anything else as JSON;
    /// empty when missing or null.
    static func cell(_ json: String?) -> String {
        guard let json, json != "null" else { return "" }
        if json.hasPrefix("\""), let text = JSONValue.decode(postgresText: json)?.object as? String { return text }
        return json
    }
}

/// A cohort export that cannot run, with a message for the command line.
public struct CohortExportError: Error, CustomStringConvertible {
    public var message: String
    public init(message: String) { self.message = message }
    public var description: String { message }
}
