import Foundation
import PGClient

/// A funnel question, typed: what `idmerge funnel` and the report tests ask.
///
/// Defaults follow decisions.md ("Funnels"): all time, uniques, specific (loose) order, a
/// 7-day conversion window (at most 366 days), breakdown attribution from step 1, and the
/// 2-second grace (Mixpanel F6).
public struct FunnelQuery: Sendable, Equatable {
    /// An exclusion step: `event` between the 1-based steps `from` and `to` (all steps when nil).
    public struct Exclusion: Sendable, Equatable {
        public var event: String
        public var from: Int?
        public var to: Int?
        public init(event: String, from: Int? = nil, to: Int? = nil) {
            self.event = event
            self.from = from
            self.to = to
        }

        /// Parses `EVENT` or `EVENT:FROM-TO` (1-based steps).
        public init(argument: String) throws {
            if let colon = argument.lastIndex(of: ":") {
                let range = argument[argument.index(after: colon)...].split(separator: "-")
                if range.count == 2, let from = Int(range[0]), let to = Int(range[1]) {
                    guard from >= 1, to > from else {
                        throw FunnelError(message: "exclusion \(argument): FROM-TO must name two steps, FROM before TO")
                    }
                    self.init(event: String(argument[..<colon]), from: from, to: to)
                    return
                }
            }
            self.init(event: argument)
        }
    }

    public enum Counting: String, Sendable, CaseIterable { case uniques, totals }
    public enum Order: String, Sendable, CaseIterable { case specific, any }

    public var steps: [String]
    /// Conversion window in seconds (default 7 days).
    public var windowSeconds: Double = 7 * 86400
    /// UTC dates (`yyyy-MM-dd`), inclusive, bounding the step-1 event.
    public var fromDate: String?
    public var toDate: String?
    public var counting: Counting = .uniques
    public var order: Order = .specific
    public var exclusions: [Exclusion] = []
    public var hold: String?
    public var breakdown: String?
    /// `step1`, `first-defined`, `last-defined` or `stepN`.
    public var breakdownAttribution = "step1"
    public var graceSeconds: Double = 2

    public init(steps: [String]) { self.steps = steps }

    /// Checks the query against decisions.md's limits.
    ///
    /// - Throws: ``FunnelError`` naming the option and the reason.
    public func validate() throws {
        guard steps.count >= 2 else { throw FunnelError(message: "a funnel needs at least two --step options") }
        guard windowSeconds > 0, windowSeconds <= 366 * 86400 else {
            throw FunnelError(message: "--window must be more than 0 and at most 366d")
        }
        guard graceSeconds >= 0, graceSeconds <= 86400 else {
            throw FunnelError(message: "--grace must be between 0s and 1d")
        }
        for exclusion in exclusions {
            if let to = exclusion.to, to > steps.count {
                throw FunnelError(message: "exclusion \(exclusion.event): step \(to) does not exist")
            }
        }
        let attribution = breakdownAttribution
        let stepN = attribution.hasPrefix("step") ? Int(attribution.dropFirst(4)) : nil
        guard
            ["first-defined", "last-defined"].contains(attribution)
                || (stepN.map { $0 >= 1 && $0 <= steps.count } ?? false)
        else {
            throw FunnelError(
                message: "--breakdown-attribution must be step1..step\(steps.count), first-defined or last-defined")
        }
        try ReportDates.validate(from: fromDate, to: toDate)
    }
}

/// A funnel query that cannot run, with a message for the command line.
public struct FunnelError: Error, CustomStringConvertible {
    public var message: String
    public init(message: String) { self.message = message }
    public var description: String { message }
}

/// The answer to a ``FunnelQuery``: counts per step, overall and per breakdown segment, with
/// the identity freshness every report states.
public struct FunnelReport: Sendable, Equatable {
    public struct Step: Sendable, Equatable {
        public var event: String
        public var count: Int
        public var conversionRate: Double
        /// Seconds from the previous step, over attempts that reached this one; nil for step 1.
        public var medianSecondsToConvert: Double?
        public var averageSecondsToConvert: Double?
    }

    public struct Segment: Sendable, Equatable {
        public var value: String
        public var steps: [Step]
        public var inProgress: Int
    }

    public var query: FunnelQuery
    public var steps: [Step]
    public var inProgress: Int
    /// Segments sorted by entries, largest first (then by value).
    public var breakdown: [Segment]
    public var freshness: Freshness

    /// Runs the query through `idmerge.funnel` (sql/210_funnel.sql); every name and value is
    /// a bound parameter.
    ///
    /// - Throws: ``FunnelError`` for an invalid query or an unknown project; ``PostgresError``.
    public static func run(_ query: FunnelQuery, project: Project, on connection: Connection) throws -> FunnelReport {
        try query.validate()
        let exclusions = query.exclusions.map { exclusion -> [String: Any] in
            var object: [String: Any] = ["event": exclusion.event]
            if let from = exclusion.from { object["from"] = from }
            if let to = exclusion.to { object["to"] = to }
            return object
        }
        let exclusionsJSON = String(decoding: try JSONSerialization.data(withJSONObject: exclusions), as: UTF8.self)
        let rows = try connection.query(
            """
            select segment, step, event, count, conversion_rate, in_progress, median_seconds_to_convert,
                   average_seconds_to_convert
            from idmerge.funnel($1, $2::text[], $3, $4::date, $5::date, $6, $7, $8::jsonb, $9, $10, $11, $12)
            """,
            [
                project.name, PostgresArray.text(query.steps), query.windowSeconds, query.fromDate, query.toDate,
                query.counting.rawValue, query.order.rawValue, exclusionsJSON, query.hold, query.breakdown,
                query.breakdownAttribution, query.graceSeconds,
            ]
        ).rows
        var overall: [Step] = []
        var overallInProgress = 0
        var segments: [String: (steps: [Step], inProgress: Int)] = [:]
        for row in rows {
            let step = Step(
                event: try row.decode("event"), count: try row.decode("count"),
                conversionRate: try row.decode("conversion_rate"),
                medianSecondsToConvert: try row.decode("median_seconds_to_convert"),
                averageSecondsToConvert: try row.decode("average_seconds_to_convert"))
            let inProgress: Int = try row.decode("in_progress")
            if let segment = row["segment"] {
                segments[segment, default: ([], 0)].steps.append(step)
                segments[segment]!.inProgress = inProgress
            } else {
                overall.append(step)
                overallInProgress = inProgress
            }
        }
        let breakdown = segments.map { Segment(value: $0.key, steps: $0.value.steps, inProgress: $0.value.inProgress) }
            .sorted { ($0.steps.first?.count ?? 0, $1.value) > ($1.steps.first?.count ?? 0, $0.value) }
        return FunnelReport(
            query: query, steps: overall, inProgress: overallInProgress, breakdown: breakdown,
            freshness: try Freshness.read(project: project, on: connection))
    }
}

/// UTC date helpers for report options.
public enum ReportDates {
    /// True for a valid `yyyy-MM-dd` date from 1970 to 9999.
    public static func isDate(_ text: String) -> Bool {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0].count == 4, parts[1].count == 2, parts[2].count == 2,
            parts.allSatisfy({ $0.allSatisfy(\.isASCII) && $0.allSatisfy(\.isNumber) }),
            let y = Int(parts[0]), let m = Int(parts[1]), let d = Int(parts[2]), (1970...9999).contains(y),
            (1...12).contains(m), d >= 1
        else { return false }
        let days = [31, (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
        return d <= days[m - 1]
    }

    /// Checks `--from` and `--to`: valid dates, from not after to.
    ///
    /// - Throws: ``FunnelError`` naming the date and the reason.
    public static func validate(from: String?, to: String?) throws {
        for date in [from, to].compactMap({ $0 }) where !isDate(date) {
            throw FunnelError(message: "invalid date \(date): use YYYY-MM-DD (UTC, 1970 to 9999)")
        }
        if let from, let to, from > to {
            throw FunnelError(message: "--from \(from) is after --to \(to)")
        }
    }
}
