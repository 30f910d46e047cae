import ArgumentParser
import Foundation
import IDMergeCore

struct Migrate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create or upgrade the idmerge schema; idempotent.",
        discussion:
            "Applies migrations/ in order (each in a transaction, checksummed) and re-applies sql/ when it changed."
    )

    @OptionGroup var connection: ConnectionOptions

    func run() throws {
        try runReporting {
            let logger = connection.makeLogger()
            let db = try connection.connect(logger: logger)
            defer { db.close() }
            let report = try Migrator(connection: db, logger: logger).migrate()
            for name in report.appliedMigrations { printError("applied \(name)") }
            if report.reappliedObjects { printError("applied sql/ views and functions") }
            if report.appliedMigrations.isEmpty && !report.reappliedObjects { printError("schema is up to date") }
        }
    }
}
