import Foundation
import PGClient

/// How a report is printed: `table` for people, `csv` and `json` for tools.
public enum OutputFormat: String, Sendable, CaseIterable {
    case table, csv, json
}

/// Renders reports. JSON follows interfaces.md exactly (keys in its order, floats always with a
/// fraction: ``ReportJSON``); CSV is RFC 4180; the
/// table draws a bar per row with Unicode block characters.
public enum ReportOutput {
    // MARK: Funnel

    public static func render(_ report: FunnelReport, as format: OutputFormat) throws -> String {
        switch format {
        case .json: return funnelObject(report).text + "\n"
        case .csv: return funnelCSV(report)
        case .table: return funnelTable(report)
        }
    }

    static func funnelObject(_ report: FunnelReport) -> ReportJSON {
        func steps(_ steps: [FunnelReport.Step]) -> ReportJSON {
            .array(
                steps.map { step in
                    .object([
                        ("event", .string(step.event)), ("count", .integer(step.count)),
                        ("conversion_rate", .real(step.conversionRate)),
                        ("median_seconds_to_convert", step.medianSecondsToConvert.map(ReportJSON.real) ?? .null),
                        ("average_seconds_to_convert", step.averageSecondsToConvert.map(ReportJSON.real) ?? .null),
                    ])
                })
        }
        return .object(
            [
                ("steps", steps(report.steps)),
                ("in_progress", .integer(report.inProgress)),
                (
                    "breakdown",
                    .array(
                        report.breakdown.map { segment in
                            .object([
                                ("value", .string(segment.value)), ("steps", steps(segment.steps)),
                                ("in_progress", .integer(segment.inProgress)),
                            ])
                        })
                ),
            ] + freshnessMembers(report.freshness))
    }

    static func funnelCSV(_ report: FunnelReport) -> String {
        var lines = [
            "segment,step,event,count,conversion_rate,in_progress,median_seconds_to_convert,average_seconds_to_convert"
        ]
        func add(_ segment: String, _ steps: [FunnelReport.Step], _ inProgress: Int) {
            for (index, step) in steps.enumerated() {
                lines.append(
                    [
                        csvField(segment), String(index + 1), csvField(step.event), String(step.count),
                        number(step.conversionRate), String(inProgress),
                        step.medianSecondsToConvert.map(number) ?? "", step.averageSecondsToConvert.map(number) ?? "",
                    ].joined(separator: ","))
            }
        }
        add("(all)", report.steps, report.inProgress)
        for segment in report.breakdown { add(segment.value, segment.steps, segment.inProgress) }
        return lines.joined(separator: "\n") + "\n"
    }

    static func funnelTable(_ report: FunnelReport) -> String {
        let query = report.query
        var out = "Funnel: \(printable(query.steps.joined(separator: " → ")))\n"
        out +=
            "\(query.counting.rawValue), \(query.order.rawValue) order, window \(duration(query.windowSeconds))"
        if let from = query.fromDate { out += ", from \(from)" }
        if let to = query.toDate { out += ", to \(to)" }
        if let breakdown = query.breakdown { out += ", breakdown by \(breakdown) (\(query.breakdownAttribution))" }
        out += "\n\n"
        out += stepTable(report.steps, inProgress: report.inProgress)
        for segment in report.breakdown {
            out += "\n\(printable(query.breakdown ?? "segment")) = \(printable(segment.value))\n"
            out += stepTable(segment.steps, inProgress: segment.inProgress)
        }
        out += "\n" + freshnessLine(report.freshness)
        return out
    }

    static func stepTable(_ steps: [FunnelReport.Step], inProgress: Int) -> String {
        let nameWidth = max(5, steps.map { $0.event.count }.max() ?? 0)
        let countWidth = max(5, steps.map { grouped($0.count).count }.max() ?? 0)
        var out =
            "  #  " + pad("step", nameWidth) + "  " + leftPad("count", countWidth)
            + "  conversion  " + pad("", 24) + "  median time from previous step\n"
        for (index, step) in steps.enumerated() {
            out += "  \(index + 1)  " + pad(step.event, nameWidth) + "  " + leftPad(grouped(step.count), countWidth)
            out += "  " + leftPad(String(format: "%.1f%%", step.conversionRate * 100), 10) + "  "
            out += bar(step.conversionRate, width: 24)
            if let median = step.medianSecondsToConvert { out += "  " + duration(median) }
            out += "\n"
        }
        if inProgress > 0 { out += "     in progress (window still open): \(grouped(inProgress))\n" }
        return out
    }

    // MARK: Attribution

    public static func render(_ report: AttributionReport, as format: OutputFormat) throws -> String {
        switch format {
        case .json:
            let lookback = report.query.lookbackSeconds
            let object = ReportJSON.object(
                [
                    ("model", .string(report.query.model.rawValue)),
                    (
                        "lookback_seconds",
                        lookback == lookback.rounded() && abs(lookback) < 1e15
                            ? .integer(Int(lookback)) : .real(lookback)
                    ),
                    (
                        "rows",
                        .array(
                            report.rows.map {
                                .object([
                                    ("touchpoint", .string($0.touchpoint)), ("conversions", .real($0.conversions)),
                                    ("value", .real($0.value)),
                                ])
                            })
                    ),
                    (
                        "total",
                        .object([("conversions", .real(report.totalConversions)), ("value", .real(report.totalValue))])
                    ),
                ] + freshnessMembers(report.freshness))
            return object.text + "\n"
        case .csv:
            var lines = ["touchpoint,conversions,value,share"]
            for row in report.rows {
                lines.append(
                    [csvField(row.touchpoint), number(row.conversions), number(row.value), number(row.share)].joined(
                        separator: ","))
            }
            return lines.joined(separator: "\n") + "\n"
        case .table:
            let query = report.query
            var out =
                "Attribution of \(query.conversion)\(query.valueProperty.map { " (value: \($0))" } ?? "") by \(query.touchpoint)\n"
            out += "\(query.model.rawValue), lookback \(duration(query.lookbackSeconds))"
            if let perUser = query.perUser { out += ", one conversion per person (\(perUser.rawValue))" }
            out += "\n\n"
            let nameWidth = max(10, report.rows.map { $0.touchpoint.count }.max() ?? 0)
            out +=
                "  " + pad("touchpoint", nameWidth) + "  " + leftPad("conversions", 12) + "  " + leftPad("value", 14)
                + "  " + leftPad("share", 6) + "\n"
            for row in report.rows {
                out +=
                    "  " + pad(row.touchpoint, nameWidth) + "  " + leftPad(String(format: "%.2f", row.conversions), 12)
                out += "  " + leftPad(String(format: "%.2f", row.value), 14) + "  "
                out += leftPad(String(format: "%.1f%%", row.share * 100), 6) + "  " + bar(row.share, width: 20) + "\n"
            }
            out +=
                "  " + pad("total", nameWidth) + "  " + leftPad(String(format: "%.2f", report.totalConversions), 12)
                + "  " + leftPad(String(format: "%.2f", report.totalValue), 14) + "\n"
            out += "\n" + freshnessLine(report.freshness)
            return out
        }
    }

    // MARK: Shared pieces

    static func freshnessMembers(_ freshness: Freshness) -> [(String, ReportJSON)] {
        [
            ("newest_event_at", freshness.newestEventAt.map { .string(PostgresTimestamp.formatSeconds($0)) } ?? .null),
            ("identity_as_of", freshness.identityAsOf.map { .string(PostgresTimestamp.formatSeconds($0)) } ?? .null),
            ("pending_links", .integer(freshness.pendingLinks)),
        ]
    }

    static func freshnessLine(_ freshness: Freshness) -> String {
        let newest = freshness.newestEventAt.map(PostgresTimestamp.formatSeconds) ?? "none"
        let asOf = freshness.identityAsOf.map(PostgresTimestamp.formatSeconds) ?? "never"
        return
            "newest event \(newest); identities live (nightly rewrite as of \(asOf), \(freshness.pendingLinks) links pending)\n"
    }

    /// Eight-step Unicode blocks: `███▍`.
    static func bar(_ fraction: Double, width: Int) -> String {
        let clamped = max(0, min(1, fraction.isFinite ? fraction : 0))
        let eighths = Int((clamped * Double(width * 8)).rounded())
        let partials = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"]
        var text = String(repeating: "█", count: eighths / 8) + partials[eighths % 8]
        text += String(repeating: " ", count: max(0, width - text.count))
        return text
    }

    static func duration(_ seconds: Double) -> String {
        let s = Int(seconds.rounded())
        if s < 60 { return "\(s)s" }
        if s < 3600 { return "\(s / 60)m \(s % 60)s" }
        if s < 86400 { return "\(s / 3600)h \(s % 3600 / 60)m" }
        if s % 86400 == 0 { return "\(s / 86400)d" }
        return "\(s / 86400)d \(s % 86400 / 3600)h"
    }

    static func grouped(_ value: Int) -> String {
        let digits = String(value.magnitude)
        var out = ""
        for (index, character) in digits.enumerated() {
            if index > 0 && (digits.count - index) % 3 == 0 { out += "," }
            out.append(character)
        }
        return (value < 0 ? "-" : "") + out
    }

    /// A number for CSV: whole values without a fraction, others in full (the shortest text
    /// that reads back as the same double: `1234567.5`, not `1.23457e+06`).
    static func number(_ value: Double) -> String {
        if value == value.rounded() && abs(value) < 1e15 { return String(Int64(value)) }
        return value.isFinite ? "\(value)" : ""
    }

    static func csvField(_ text: String) -> String {
        if text.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }) {
            return "\"" + text.replacingOccurrences(of: "\"", with: "\"\"") + "\""
        }
        return text
    }

    static func pad(_ raw: String, _ width: Int) -> String {
        let text = printable(raw)
        return text.count >= width ? text : text + String(repeating: " ", count: width - text.count)
    }

    /// A value as it may appear in a terminal table: control characters (newlines, tabs,
    /// escape sequences) become U+FFFD, so data cannot break the layout or drive the terminal.
    static func printable(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else { return text }
        return String(
            String.UnicodeScalarView(
                text.unicodeScalars.map { $0.properties.generalCategory == .control ? "\u{FFFD}" : $0 }))
    }

    static func leftPad(_ text: String, _ width: Int) -> String {
        text.count >= width ? text : String(repeating: " ", count: width - text.count) + text
    }
}

extension PostgresTimestamp {
    /// ISO 8601 in UTC to the second: `2026-01-02T00:00:00Z` (as interfaces.md shows).
    public static func formatSeconds(_ date: Date) -> String {
        let text = format(date)
        return String(text.prefix(19)) + "Z"
    }
}

/// JSON text for the reports, written in the order interfaces.md documents. Counts are
/// integers; rates, seconds, conversions and values are always written with a fraction or an
/// exponent (`1.0`, `0.5`, `50.0`), so a typed reader sees a float even when the value is
/// whole.
public indirect enum ReportJSON: Sendable {
    case object([(String, ReportJSON)])
    case array([ReportJSON])
    case string(String)
    case integer(Int)
    case real(Double)
    case null
    /// JSON text written as is, such as a `jsonb` value as PostgreSQL sends it (exact, even
    /// for numbers no double holds).
    case raw(String)

    var text: String {
        var out = ""
        write(to: &out)
        return out
    }

    func write(to out: inout String) {
        switch self {
        case .object(let members):
            out += "{"
            for (index, member) in members.enumerated() {
                if index > 0 { out += "," }
                Self.writeString(member.0, to: &out)
                out += ":"
                member.1.write(to: &out)
            }
            out += "}"
        case .array(let elements):
            out += "["
            for (index, element) in elements.enumerated() {
                if index > 0 { out += "," }
                element.write(to: &out)
            }
            out += "]"
        case .string(let text):
            Self.writeString(text, to: &out)
        case .integer(let value):
            out += String(value)
        case .real(let value):
            // JSON has no NaN or infinity.
            guard value.isFinite else {
                out += "null"
                return
            }
            // Swift's shortest round-trip text: "1.0", "0.1", "1e-05", "1e+16" (all valid JSON).
            out += "\(value)"
        case .null:
            out += "null"
        case .raw(let text):
            out += text
        }
    }

    /// A JSON string: quotes, backslashes and control characters escaped, the rest as is.
    public static func writeString(_ text: String, to out: inout String) {
        out += "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20: out += String(format: "\\u%04x", scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
    }
}
