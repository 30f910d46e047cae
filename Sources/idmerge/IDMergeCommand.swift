import ArgumentParser
import Foundation
import IDMergeCore
import Logging

@main
struct IDMergeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "idmerge",
        abstract: "Identity merge and product analytics in your own PostgreSQL.",
        discussion: """
            Connection, in order: --database-url; DATABASE_URL; libpq's defaults when a PG* variable \
            (PGHOST, PGHOSTADDR, PGPORT, PGDATABASE, PGUSER, PGSERVICE) is set; the local database of \
            `idmerge db start` when it runs; libpq's defaults.

            Exit codes: 0 success; 1 failure (database unreachable, unreadable file, SQL error); \
            3 import finished but refused some records (see idmerge.refused_records); \
            64 usage error; 75 another nightly run holds the lock (--no-wait).
            """,
        version: IDMergeVersion.current,
        subcommands: [
            Database.self, Migrate.self, ProjectCommand.self, Import.self, Nightly.self, Status.self,
            Funnel.self, Attribution.self, Generate.self, ProfilesCommand.self, ActivityCommand.self,
            CohortCommand.self,
            Serve.self,
        ]
    )
}
