import Foundation
import PGClient

/// How a report is printed: `table` for people, `csv` and `json` for tools.
public enum OutputFormat: String, Sendable, CaseIterable {
    case table, csv, json
}

/// Renders reports. JSON follows interfaces.md exactly (keys sorted); CSV is RFC 4180; the
/// table draws a bar per row with Unicode block characters.
public enum ReportOutput {
    // MARK: Funnel

    public static func render(_ report: FunnelReport, as format: OutputFormat) throws -> String {
        switch format {
        case .json: return try json(funnelObject(report))
        case .csv: return funnelCSV(report)
        case .table: return funnelTable(report)
        }
    }

    static func funnelObject(_ report: FunnelReport) -> [String: Any] {
        func steps(_ steps: [FunnelReport.Step]) -> [[String: Any]] {
            steps.map { step in
                [
                    "event": step.event, "count": step.count, "conversion_rate": step.conversionRate,
                    "median_seconds_to_convert": step.medianSecondsToConvert ?? NSNull(),
                    "average_seconds_to_convert": step.averageSecondsToConvert ?? NSNull(),
                ]
            }
        }
        var object: [String: Any] = [
            "steps": steps(report.steps),
            "in_progress": report.inProgress,
            "breakdown": report.breakdown.map { segment in
                ["value": segment.value, "steps": steps(segment.steps), "in_progress": segment.inProgress]
                    as [String: Any]
            },
        ]
        object.merge(freshnessObject(report.freshness)) { $1 }
        return object
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
            var object: [String: Any] = [
                "model": report.query.model.rawValue,
                "lookback_seconds": report.query.lookbackSeconds,
                "rows": report.rows.map {
                    ["touchpoint": $0.touchpoint, "conversions": $0.conversions, "value": $0.value] as [String: Any]
                },
                "total": ["conversions": report.totalConversions, "value": report.totalValue],
            ]
            object.merge(freshnessObject(report.freshness)) { $1 }
            return try json(object)
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

    static func freshnessObject(_ freshness: Freshness) -> [String: Any] {
        [
            "newest_event_at": freshness.newestEventAt.map(PostgresTimestamp.formatSeconds) ?? NSNull(),
            "identity_as_of": freshness.identityAsOf.map(PostgresTimestamp.formatSeconds) ?? NSNull(),
            "pending_links": freshness.pendingLinks,
        ]
    }

    static func freshnessLine(_ freshness: Freshness) -> String {
        let newest = freshness.newestEventAt.map(PostgresTimestamp.formatSeconds) ?? "none"
        let asOf = freshness.identityAsOf.map(PostgresTimestamp.formatSeconds) ?? "never"
        return
            "newest event \(newest); identities live (nightly rewrite as of \(asOf), \(freshness.pendingLinks) links pending)\n"
    }

    static func json(_ object: [String: Any]) throws -> String {
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
        return String(decoding: data, as: UTF8.self) + "\n"
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

    static func number(_ value: Double) -> String {
        if value == value.rounded() && abs(value) < 1e15 { return String(Int64(value)) }
        return String(format: "%.6g", value)
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
