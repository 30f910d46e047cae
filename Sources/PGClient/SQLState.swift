/// A PostgreSQL SQLSTATE error code, such as `23505` (unique violation).
///
/// An open struct rather than a closed enum, so codes this library has never heard of are
/// kept as they came. The first two characters are the class (`23` integrity constraint
/// violation, `40` transaction rollback, `08` connection exception); match a whole class in
/// a `catch` or `switch` with ``SQLState/Class`` and `~=`:
///
/// ```swift
/// do { try connection.execute("insert ...") }
/// catch let error as PostgresError where SQLState.Class.integrityConstraintViolation ~= error.code { ... }
/// ```
///
/// Source: PostgreSQL manual, appendix A "PostgreSQL Error Codes".
public struct SQLState: Hashable, Sendable, CustomStringConvertible, ExpressibleByStringLiteral {
    /// The five-character code, for example `"22012"`.
    public let rawValue: String

    public init(_ rawValue: String) { self.rawValue = rawValue }
    public init(stringLiteral value: String) { self.rawValue = value }

    /// The two-character class of the code.
    public var `class`: Class { Class(String(rawValue.prefix(2))) }
    public var description: String { rawValue }

    /// Client-side failure with no server code (connection lost, protocol error).
    public static let clientError: SQLState = "XX000"
    public static let uniqueViolation: SQLState = "23505"
    public static let foreignKeyViolation: SQLState = "23503"
    public static let notNullViolation: SQLState = "23502"
    public static let checkViolation: SQLState = "23514"
    public static let divisionByZero: SQLState = "22012"
    public static let invalidTextRepresentation: SQLState = "22P02"
    public static let untranslatableCharacter: SQLState = "22P05"
    public static let characterNotInRepertoire: SQLState = "22021"
    public static let serializationFailure: SQLState = "40001"
    public static let deadlockDetected: SQLState = "40P01"
    public static let lockNotAvailable: SQLState = "55P03"
    public static let undefinedTable: SQLState = "42P01"
    public static let undefinedFunction: SQLState = "42883"
    public static let syntaxError: SQLState = "42601"
    public static let insufficientPrivilege: SQLState = "42501"
    public static let queryCanceled: SQLState = "57014"
    public static let raiseException: SQLState = "P0001"
    public static let connectionFailure: SQLState = "08006"
    public static let sqlclientUnableToEstablishSQLConnection: SQLState = "08001"

    /// The class of a SQLSTATE: its first two characters.
    public struct Class: Hashable, Sendable, CustomStringConvertible {
        public let rawValue: String
        public init(_ rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        public static let connectionException = Class("08")
        public static let dataException = Class("22")
        public static let integrityConstraintViolation = Class("23")
        public static let transactionRollback = Class("40")
        public static let syntaxErrorOrAccessRuleViolation = Class("42")
        public static let objectNotInPrerequisiteState = Class("55")
        public static let operatorIntervention = Class("57")

        /// True when `code` belongs to this class.
        public static func ~= (pattern: Class, code: SQLState) -> Bool {
            code.class == pattern
        }
    }
}
