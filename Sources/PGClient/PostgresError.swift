/// An error from PostgreSQL or from libpq.
///
/// `description` is safe to log: it carries the SQLSTATE and the server's message but never
/// the SQL text or bound values. `debugDescription` adds detail and hint, which may quote
/// data (for example the duplicate key of a unique violation), so keep it out of logs that
/// leave the machine.
public struct PostgresError: Error, CustomStringConvertible, CustomDebugStringConvertible, Sendable {
    /// What failed: the connection, a statement, or a COPY stream.
    public enum Kind: String, Sendable {
        case connection
        case statement
        case copy
        case protocolViolation
    }

    public var kind: Kind
    /// The SQLSTATE, or ``SQLState/clientError`` when libpq failed on its own.
    public var code: SQLState
    /// The server's (or libpq's) primary message, without a trailing newline.
    public var message: String
    public var detail: String?
    public var hint: String?
    public var constraint: String?

    public init(
        kind: Kind, code: SQLState, message: String, detail: String? = nil, hint: String? = nil,
        constraint: String? = nil
    ) {
        self.kind = kind
        self.code = code
        self.message = message
        self.detail = detail
        self.hint = hint
        self.constraint = constraint
    }

    public var description: String {
        "PostgreSQL \(kind.rawValue) error \(code.rawValue): \(message)"
    }

    public var debugDescription: String {
        var text = description
        if let detail { text += "\nDETAIL: \(detail)" }
        if let hint { text += "\nHINT: \(hint)" }
        return text
    }
}
