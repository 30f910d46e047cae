import Foundation

/// The rows of a finished query, decoded from PostgreSQL's text format.
///
/// The whole result is copied out of libpq before it is returned, so it outlives the
/// connection call that produced it. For large results prefer `COPY ... TO STDOUT` or a
/// server-side aggregate.
public struct QueryResult: Sendable {
    /// Column names, in order.
    public let columns: [String]
    /// Each row's values as text; `nil` is SQL `NULL`.
    public let rows: [Row]
    /// The number of rows the command affected (`UPDATE`, `INSERT`, `DELETE`, `COPY`), or 0.
    public let affectedRows: Int

    public var isEmpty: Bool { rows.isEmpty }
    public var first: Row? { rows.first }
}

/// One row of a ``QueryResult``.
public struct Row: Sendable {
    let columnIndex: [String: Int]
    /// The values as text, `nil` for SQL `NULL`.
    public let values: [String?]

    /// The text of a column by position; `nil` for SQL `NULL`.
    public subscript(index: Int) -> String? { values[index] }

    /// The text of a column by name; `nil` for SQL `NULL` or an unknown column.
    public subscript(name: String) -> String? {
        guard let index = columnIndex[name] else { return nil }
        return values[index]
    }

    /// Decodes a column into a Swift value.
    ///
    /// - Throws: ``PostgresError`` (kind `.protocolViolation`) when the column is missing or
    ///   its text is not a valid `T`. A SQL `NULL` decodes as `nil` through `Optional`.
    public func decode<T: PostgresDecodable>(_ name: String, as type: T.Type = T.self) throws -> T {
        guard let index = columnIndex[name] else {
            throw PostgresError(kind: .protocolViolation, code: .clientError, message: "no column named \(name)")
        }
        return try decode(index, as: type)
    }

    /// Decodes a column by position; see ``decode(_:as:)-swift.method``.
    public func decode<T: PostgresDecodable>(_ index: Int, as type: T.Type = T.self) throws -> T {
        guard let value = T.decode(postgresText: values[index]) else {
            throw PostgresError(
                kind: .protocolViolation, code: .clientError,
                message: "column \(index) cannot be decoded as \(T.self)")
        }
        return value
    }
}

/// A Swift type that can be read from PostgreSQL's text output.
public protocol PostgresDecodable {
    /// Decodes the text of a value (`nil` for SQL `NULL`); returns `nil` when it cannot.
    static func decode(postgresText: String?) -> Self?
}

extension String: PostgresDecodable {
    public static func decode(postgresText: String?) -> String? { postgresText }
}

extension Int: PostgresDecodable {
    public static func decode(postgresText: String?) -> Int? { postgresText.flatMap { Int($0) } }
}

extension Int64: PostgresDecodable {
    public static func decode(postgresText: String?) -> Int64? { postgresText.flatMap { Int64($0) } }
}

extension Double: PostgresDecodable {
    public static func decode(postgresText: String?) -> Double? {
        guard let text = postgresText else { return nil }
        switch text {
        case "NaN": return .nan
        case "Infinity": return .infinity
        case "-Infinity": return -.infinity
        default: return Double(text)
        }
    }
}

extension Bool: PostgresDecodable {
    public static func decode(postgresText: String?) -> Bool? {
        switch postgresText {
        case "t", "true": return true
        case "f", "false": return false
        default: return nil
        }
    }
}

extension Date: PostgresDecodable {
    /// Reads `timestamptz` text (the session runs with `TimeZone = 'UTC'`).
    public static func decode(postgresText: String?) -> Date? {
        postgresText.flatMap { PostgresTimestamp.parse($0) }
    }
}

/// A `jsonb` or `json` value, decoded with Foundation's `JSONSerialization`.
public struct JSONValue: PostgresDecodable, @unchecked Sendable {
    /// The parsed document: `[String: Any]`, `[Any]`, `String`, `NSNumber` or `NSNull`.
    public let object: Any
    /// The text as the server sent it.
    public let text: String

    public static func decode(postgresText: String?) -> JSONValue? {
        guard let text = postgresText, let data = text.data(using: .utf8),
            let object = try? JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed])
        else { return nil }
        return JSONValue(object: object, text: text)
    }
}

extension Optional: PostgresDecodable where Wrapped: PostgresDecodable {
    public static func decode(postgresText: String?) -> Wrapped?? {
        guard let text = postgresText else { return .some(nil) }
        guard let value = Wrapped.decode(postgresText: text) else { return nil }
        return .some(value)
    }
}
