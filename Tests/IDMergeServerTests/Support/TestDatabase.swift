import Foundation
import IDMergeCore
import Logging
import PGClient

/// A fresh, migrated database per test, on the PostgreSQL the environment names
/// (`DATABASE_URL`, or the `PG*` variables `pg_virtualenv` exports). Never a mock.
/// (A copy of the helper of IDMergeCoreTests: test targets cannot share sources.)
enum TestDatabase {
    static var isConfigured: Bool {
        let env = ProcessInfo.processInfo.environment
        return env["DATABASE_URL"] != nil || env["PGHOST"] != nil || env["PGPORT"] != nil || env["PGDATABASE"] != nil
    }

    static let logger: Logger = {
        var logger = Logger(label: "idmerge.test")
        logger.logLevel = .warning
        return logger
    }()

    static var baseConninfo: String { ProcessInfo.processInfo.environment["DATABASE_URL"] ?? "" }

    /// Creates a database, migrates it, runs `body` with a connection string for it, and drops it.
    static func withFresh<T>(_ body: (_ conninfo: String) async throws -> T) async throws -> T {
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

    /// The connection string for another database on the same server.
    static func conninfo(forDatabase name: String) -> String {
        let base = baseConninfo
        if base.isEmpty { return "dbname=\(name)" }
        if base.hasPrefix("postgres://") || base.hasPrefix("postgresql://") {
            var components = URLComponents(string: base)!
            components.path = "/" + name
            return components.string!
        }
        return base + " dbname=\(name)"
    }

    static func connect(_ conninfo: String) throws -> Connection {
        try Connection.connect(conninfo, logger: logger)
    }

    static func count(_ sql: String, _ conninfo: String, _ parameters: [any PostgresBindable] = []) throws -> Int {
        let db = try connect(conninfo)
        defer { db.close() }
        return try db.query(sql, parameters).first!.decode("n", as: Int.self)
    }
}

/// The shared folder (`IDMERGE_SHARED`, default `../shared`).
enum Shared {
    static var root: URL {
        if let path = ProcessInfo.processInfo.environment["IDMERGE_SHARED"], !path.isEmpty {
            return URL(fileURLWithPath: path, isDirectory: true)
        }
        let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent()
        return packageRoot.deletingLastPathComponent().appendingPathComponent("shared", isDirectory: true)
    }

    static var isCI: Bool { ProcessInfo.processInfo.environment["CI"] == "true" }
}
