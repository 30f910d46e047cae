import Foundation
import Logging
import PGClient

/// Applies `migrations/` and `sql/` to a database.
///
/// - Migrations run in name order, each in its own transaction, and are recorded with a
///   SHA-256 checksum in `idmerge.schema_migrations`. An applied migration whose file has
///   changed is refused (forward-only: write a new migration instead).
/// - The files of `sql/` (views and functions, written with `create or replace`) are
///   re-applied, in name order and in one transaction, whenever any of them changed; their
///   checksums live in `idmerge.schema_objects`.
/// - An advisory lock makes concurrent runs safe: the second waits, then finds nothing to do.
public struct Migrator {
    public let connection: Connection
    public let logger: Logger

    public init(connection: Connection, logger: Logger) {
        self.connection = connection
        self.logger = logger
    }

    /// What a run did.
    public struct Report: Sendable {
        public var appliedMigrations: [String] = []
        public var reappliedObjects = false
    }

    /// Brings the schema up to date. Idempotent.
    ///
    /// - Throws: ``MigrationError`` for an edited applied migration; ``PostgresError`` when
    ///   a file fails (that file's transaction is rolled back, and the error names it).
    @discardableResult
    public func migrate() throws -> Report {
        let migrations = try SQLResources.migrations()
        let objects = try SQLResources.objects()
        let lockKey = Connection.advisoryKey("idmerge.migrate")
        return try connection.withAdvisoryLock(key: lockKey) {
            try connection.execute(
                """
                set client_min_messages = warning;
                create schema if not exists idmerge;
                create table if not exists idmerge.schema_migrations (
                    version text primary key, name text not null, checksum text not null,
                    applied_at timestamptz not null default now());
                create table if not exists idmerge.schema_objects (
                    name text primary key, checksum text not null,
                    applied_at timestamptz not null default now());
                reset client_min_messages;
                """)
            var report = Report()
            var applied: [String: String] = [:]
            for row in try connection.query("select version, checksum from idmerge.schema_migrations").rows {
                applied[row["version"] ?? ""] = row["checksum"] ?? ""
            }
            for file in migrations {
                let version = String(file.name.prefix { $0 != "_" })
                let checksum = try self.checksum(file.text)
                if let recorded = applied[version] {
                    guard recorded == checksum else {
                        throw MigrationError(
                            message:
                                "migration \(file.name) was edited after it was applied (checksum \(recorded.prefix(12)) recorded, \(checksum.prefix(12)) now); migrations are forward-only: restore the file and add a new migration"
                        )
                    }
                    continue
                }
                logger.info("applying migration \(file.name)")
                do {
                    try connection.transaction { connection in
                        try connection.execute(file.text)
                        try connection.query(
                            "insert into idmerge.schema_migrations (version, name, checksum) values ($1, $2, $3)",
                            [version, file.name, checksum])
                    }
                } catch let error as PostgresError {
                    throw MigrationError(message: "migration \(file.name) failed: \(error)")
                }
                report.appliedMigrations.append(file.name)
            }
            var recordedObjects: [String: String] = [:]
            for row in try connection.query("select name, checksum from idmerge.schema_objects").rows {
                recordedObjects[row["name"] ?? ""] = row["checksum"] ?? ""
            }
            var current: [(file: SQLResources.File, checksum: String)] = []
            for file in objects { current.append((file, try checksum(file.text))) }
            let changed =
                current.contains { recordedObjects[$0.file.name] != $0.checksum }
                || Set(recordedObjects.keys) != Set(current.map { $0.file.name })
            if changed {
                try connection.transaction { connection in
                    for (file, checksum) in current {
                        logger.info("applying \(file.name)")
                        do {
                            try connection.execute(file.text)
                        } catch let error as PostgresError {
                            throw MigrationError(message: "sql/\(file.name) failed: \(error)")
                        }
                        try connection.query(
                            """
                            insert into idmerge.schema_objects (name, checksum) values ($1, $2)
                            on conflict (name) do update set checksum = excluded.checksum, applied_at = now()
                            """, [file.name, checksum])
                    }
                    try connection.query(
                        "delete from idmerge.schema_objects where name <> all($1::text[])",
                        [PostgresArray.text(current.map { $0.file.name })])
                }
                report.reappliedObjects = true
            }
            return report
        }!
    }

    private func checksum(_ text: String) throws -> String {
        try connection.query("select encode(sha256(convert_to($1, 'UTF8')), 'hex') as sum", [text])
            .first?["sum"] ?? ""
    }
}

/// A migration that cannot be applied; the message names the file and how to fix it.
public struct MigrationError: Error, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}
