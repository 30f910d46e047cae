/// Parses durations written as a number and a unit: `30s`, `15m`, `1h`, `7d`
/// (interfaces.md). Fractions are allowed (`1.5h`).
public enum DurationParser {
    public struct InvalidDuration: Error, CustomStringConvertible {
        public var text: String
        public var description: String {
            "invalid duration \"\(text)\": use a number and a unit s, m, h or d (for example 7d)"
        }
    }

    /// The duration in seconds.
    ///
    /// - Throws: ``InvalidDuration`` for anything else, and for negative values.
    public static func seconds(_ text: String) throws -> Double {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        guard let unit = trimmed.last, let number = Double(trimmed.dropLast()), number >= 0, number.isFinite else {
            throw InvalidDuration(text: text)
        }
        switch unit {
        case "s": return number
        case "m": return number * 60
        case "h": return number * 3600
        case "d": return number * 86400
        default: throw InvalidDuration(text: text)
        }
    }
}
