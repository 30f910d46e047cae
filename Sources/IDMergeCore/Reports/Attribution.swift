import Foundation
import PGClient

/// An attribution question, typed: which touchpoint values earned a conversion's credit.
///
/// Defaults follow decisions.md ("Attribution"): all time, last touch, a 30-day lookback
/// (Mixpanel A2), every conversion counted.
public struct AttributionQuery: Sendable, Equatable {
    public enum Model: String, Sendable, CaseIterable {
        case firstTouch = "first-touch"
        case lastTouch = "last-touch"
        case linear
        case participation
        case timeDecay = "time-decay"
        case uShaped = "u-shaped"
        case jShaped = "j-shaped"
        case inverseJ = "inverse-j"
        case custom
    }

    /// One conversion per person: the first or the last in the date range (Mixpanel A7).
    public enum PerUser: String, Sendable, CaseIterable { case first, last }

    public var conversion: String
    public var touchpoint: String
    /// The conversion's numeric property whose value is credited (for example `revenue`).
    public var valueProperty: String?
    public var model: Model = .lastTouch
    /// Lookback window in seconds (default 30 days).
    public var lookbackSeconds: Double = 30 * 86400
    public var perUser: PerUser?
    /// UTC dates (`yyyy-MM-dd`), inclusive, bounding the conversion.
    public var fromDate: String?
    public var toDate: String?
    /// Custom weights FIRST, MIDDLE, LAST in percent, summing to 100.
    public var weights: [Double]?

    public init(conversion: String, touchpoint: String) {
        self.conversion = conversion
        self.touchpoint = touchpoint
    }

    /// Checks the options.
    ///
    /// - Throws: ``FunnelError`` naming the option and the reason.
    public func validate() throws {
        guard lookbackSeconds >= 0, lookbackSeconds <= 3650 * 86400 else {
            throw FunnelError(message: "--lookback must be between 0s and 3650d")
        }
        if model == .custom {
            guard let weights, weights.count == 3, weights.allSatisfy({ $0 >= 0 }),
                abs(weights.reduce(0, +) - 100) < 1e-9
            else {
                throw FunnelError(message: "--model custom needs --weights FIRST,MIDDLE,LAST in percent summing to 100")
            }
        } else if weights != nil {
            throw FunnelError(message: "--weights applies to --model custom only")
        }
        try ReportDates.validate(from: fromDate, to: toDate)
    }
}

/// The answer to an ``AttributionQuery``.
public struct AttributionReport: Sendable, Equatable {
    public struct Row: Sendable, Equatable {
        public var touchpoint: String
        /// Credited conversions (weights summed).
        public var conversions: Double
        /// Credited value (weight times the conversion's value property).
        public var value: Double
        /// Share of the total value (of conversions when no value property is given).
        public var share: Double
    }

    public var query: AttributionQuery
    /// Sorted by value, then conversions, largest first.
    public var rows: [Row]
    public var totalConversions: Double
    public var totalValue: Double
    public var freshness: Freshness

    /// Runs the query through `idmerge.attribution` (sql/220_attribution.sql) with bound parameters.
    public static func run(_ query: AttributionQuery, project: Project, on connection: Connection) throws
        -> AttributionReport
    {
        try query.validate()
        let weights = query.weights.map { "{" + $0.map { String($0) }.joined(separator: ",") + "}" }
        let result = try connection.query(
            """
            select touchpoint, conversions, value, share
            from idmerge.attribution($1, $2, $3, $4, $5, $6, $7, $8::date, $9::date, $10::double precision[])
            """,
            [
                project.name, query.conversion, query.touchpoint, query.valueProperty, query.model.rawValue,
                query.lookbackSeconds, query.perUser?.rawValue, query.fromDate, query.toDate, weights,
            ])
        let rows = try result.rows.map { row in
            Row(
                touchpoint: try row.decode("touchpoint"), conversions: try row.decode("conversions"),
                value: try row.decode("value"), share: try row.decode("share"))
        }
        return AttributionReport(
            query: query, rows: rows, totalConversions: rows.reduce(0) { $0 + $1.conversions },
            totalValue: rows.reduce(0) { $0 + $1.value },
            freshness: try Freshness.read(project: project, on: connection))
    }
}
