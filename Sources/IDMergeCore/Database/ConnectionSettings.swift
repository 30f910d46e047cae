import Foundation
import Logging
import PGClient

/// Where IDMerge connects, in the documented order of precedence (interfaces.md,
/// "Connection"):
///
/// 1. `--database-url URL`;
/// 2. else `DATABASE_URL`;
/// 3. else, when any of `PGHOST`, `PGHOSTADDR`, `PGPORT`, `PGDATABASE`, `PGUSER` or
///    `PGSERVICE` is set, libpq's own defaults (`PG*`, service files, `.pgpass`);
/// 4. else the local database of `idmerge db start`, when it is running;
/// 5. else libpq's defaults again.
public struct ConnectionSettings: Sendable {
    /// How the connection string was chosen, for error messages.
    public enum Source: Sendable, Equatable {
        case option
        case environmentURL
        case libpqEnvironment([String])
        case localDatabase(home: String)
        case libpqDefaults
    }

    /// The string handed to libpq unchanged (a URL, `key=value` pairs, or empty).
    public var conninfo: String
    public var source: Source

    /// Chooses the connection string.
    ///
    /// - Parameters:
    ///   - option: the value of `--database-url`, if given.
    ///   - environment: the process environment.
    public static func resolve(
        option: String?, environment: [String: String] = ProcessInfo.processInfo.environment
    ) -> ConnectionSettings {
        if let option, !option.isEmpty { return ConnectionSettings(conninfo: option, source: .option) }
        if let url = environment["DATABASE_URL"], !url.isEmpty {
            return ConnectionSettings(conninfo: url, source: .environmentURL)
        }
        let pgNames = ["PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGSERVICE"]
        let set = pgNames.filter { !(environment[$0] ?? "").isEmpty }
        if !set.isEmpty { return ConnectionSettings(conninfo: "", source: .libpqEnvironment(set)) }
        let local = LocalDatabase.fromEnvironment(environment)
        if let layout = local.layout(), local.isRunning() {
            return ConnectionSettings(
                conninfo: LocalDatabase.url(for: layout), source: .localDatabase(home: local.home.path))
        }
        return ConnectionSettings(conninfo: "", source: .libpqDefaults)
    }

    /// Connects, or throws ``ConnectionFailure`` naming what was tried and how to fix it.
    public func connect(logger: Logger, applicationName: String = "idmerge") throws -> Connection {
        do {
            let connection = try Connection.connect(conninfo, applicationName: applicationName, logger: logger)
            return connection
        } catch let error as PostgresError {
            throw ConnectionFailure(source: source, libpqMessage: error.message)
        }
    }
}

/// A connection that could not be opened, with what was tried and how to fix it.
///
/// The message never contains a password: libpq's own message names the host and port only,
/// and the URL itself is not repeated.
public struct ConnectionFailure: Error, CustomStringConvertible {
    public var source: ConnectionSettings.Source
    public var libpqMessage: String

    public var description: String {
        let tried: String
        switch source {
        case .option: tried = "the URL given with --database-url"
        case .environmentURL: tried = "the URL in DATABASE_URL"
        case .libpqEnvironment(let names):
            tried = "libpq's defaults with \(names.joined(separator: ", ")) from the environment"
        case .localDatabase(let home): tried = "the local database under \(home)"
        case .libpqDefaults:
            tried = "libpq's defaults (no --database-url, no DATABASE_URL, no PG* variables, no running local database)"
        }
        return """
            cannot connect to PostgreSQL: \(libpqMessage)
            tried: \(tried)
            fix: start the local database with `idmerge db start`, or pass --database-url postgresql://USER@HOST:PORT/DB (or set DATABASE_URL)
            """
    }
}
