import Foundation
import IDMergeCore
import Logging
import PGClient

/// A fresh, migrated database per test, on the PostgreSQL the environment names
/// (`DATABASE_URL`, or the `PG*` variables `pg_virtualenv` exports). Never a mock.
public enum TestDatabase {
    public static var isConfigured: Bool {
        let env = ProcessInfo.processInfo.environment
        return env["DATABASE_URL"] != nil || env["PGHOST"] != nil || env["PGPORT"] != nil || env["PGDATABASE"] != nil
    }

    public static let logger: Logger = {
        var logger = Logger(label: "idmerge.test")
        logger.logLevel = .warning
        return logger
    }()

    public static var baseConninfo: String { ProcessInfo.processInfo.environment["DATABASE_URL"] ?? "" }

    /// Creates a database, migrates it, runs `body` with a connection string for it, and
    /// drops it.
    public static func withFresh<T>(_ body: (_ conninfo: String) throws -> T) throws -> T {
        let name = "idmerge_test_" + UUID().uuidString.prefix(12).lowercased().replacingOccurrences(of: "-", with: "")
        let admin = try Connection.connect(baseConninfo, logger: logger)
        try admin.execute("create database \(Connection.quoteIdentifier(name))")
        defer {
            _ = try? admin.execute("drop database if exists \(Connection.quoteIdentifier(name)) with (force)")
            admin.close()
        }
        let conninfo = conninfo(forDatabase: name)
        let db = try Connection.connect(conninfo, logger: logger)
        try Migrator(connection: db, logger: logger).migrate()
        db.close()
        return try body(conninfo)
    }

    /// The same as ``withFresh(_:)`` for an async body (a separate name keeps trailing closures unambiguous).
    public static func withFreshAsync<T>(_ body: (_ conninfo: String) async throws -> T) async throws -> T {
        let name = "idmerge_test_" + UUID().uuidString.prefix(12).lowercased().replacingOccurrences(of: "-", with: "")
        let admin = try Connection.connect(baseConninfo, logger: logger)
        try admin.execute("create database \(Connection.quoteIdentifier(name))")
        defer {
            _ = try? admin.execute("drop database if exists \(Connection.quoteIdentifier(name)) with (force)")
            admin.close()
        }
        let conninfo = conninfo(forDatabase: name)
        let db = try Connection.connect(conninfo, logger: logger)
        try Migrator(connection: db, logger: logger).migrate()
        db.close()
        return try await body(conninfo)
    }

    /// Runs a query whose single row has a count column `n`.
    public static func count(_ sql: String, _ conninfo: String, _ parameters: [any PostgresBindable] = []) throws
        -> Int
    {
        let db = try connect(conninfo)
        defer { db.close() }
        return try db.query(sql, parameters).first!.decode("n", as: Int.self)
    }

    /// The connection string for another database on the same server.
    public static func conninfo(forDatabase name: String) -> String {
        let base = baseConninfo
        if base.isEmpty { return "dbname=\(name)" }
        if base.hasPrefix("postgres://") || base.hasPrefix("postgresql://") {
            var components = URLComponents(string: base)!
            components.path = "/" + name
            return components.string!
        }
        return base + " dbname=\(name)"
    }

    public static func connect(_ conninfo: String) throws -> Connection {
        try Connection.connect(conninfo, logger: logger)
    }
}

/// The shared folder (`IDMERGE_SHARED`, default `../shared`): acceptance cases and data.
public enum Shared {
    public static var root: URL {
        if let path = ProcessInfo.processInfo.environment["IDMERGE_SHARED"], !path.isEmpty {
            return URL(fileURLWithPath: path, isDirectory: true)
        }
        // The package root is two levels above this file (Tests/IDMergeTestSupport).
        let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        return packageRoot.deletingLastPathComponent().appendingPathComponent("shared", isDirectory: true)
    }

    public static var isAvailable: Bool {
        FileManager.default.fileExists(atPath: root.appendingPathComponent("acceptance").path)
    }

    public static var isCI: Bool { ProcessInfo.processInfo.environment["CI"] == "true" }

    /// Files under `acceptance/<folder>` whose names pass `filter`, sorted. Prints a notice
    /// when the folder is missing (outside CI; under CI a missing folder fails the run).
    public static func caseFiles(_ folder: String, _ filter: (String) -> Bool = { _ in true }) -> [String] {
        let directory = root.appendingPathComponent("acceptance").appendingPathComponent(folder)
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory.path) else {
            if !isCI { print("notice: \(directory.path) not found; acceptance cases skipped (set IDMERGE_SHARED)") }
            return isCI ? ["<missing shared folder: \(directory.path)>"] : []
        }
        return names.filter { $0.hasSuffix(".json") && filter($0) }.sorted()
            .map { directory.appendingPathComponent($0).path }
    }
}
