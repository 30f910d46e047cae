import ArgumentParser
import Foundation
import IDMergeCore

struct Import: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Import events: JSON array or NDJSON files (gzip or not), or - for standard input.",
        discussion: """
            Each source is one batch, committed whole or not at all. Exit codes: 0 all records stored \
            (or ignored/duplicates); 3 some records were refused (kept in idmerge.refused_records); \
            1 a source could not be read or the database failed.
            """
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var projectOption: ProjectOption
    @Argument(help: "Files to import, or - for standard input.") var files: [String]

    func validate() throws {
        if files.isEmpty { throw ValidationError("name at least one file, or - for standard input") }
    }

    func run() throws {
        let anyRefused: Bool = try runReporting {
            // A file that cannot be read fails before anything is written.
            try checkSourcesReadable(files)
            let logger = connection.makeLogger()
            let db = try connection.connect(logger: logger)
            defer { db.close() }
            let (project, created) = try Projects.findOrCreateDefault(name: projectOption.project, on: db)
            if created != nil { printError("created project \(project.name) (simplified)") }
            let importer = Importer(connection: db, project: project, logger: logger)
            let start = Date()
            importer.progress = { records, bytes in
                let seconds = Date().timeIntervalSince(start)
                let rate = seconds > 0 ? Int(Double(records) / seconds) : 0
                printError("  \(records) records, \(bytes / 1_000_000) MB read, \(rate) records/s")
            }
            var refused = false
            for file in files {
                let summary = try importer.importFile(file)
                print(
                    "\(summary.source): \(summary.stored) stored, \(summary.duplicates) duplicates, \(summary.ignored) ignored, \(summary.warnings) warnings, \(summary.refused) refused (batch \(summary.batchId))"
                )
                if summary.refused > 0 {
                    refused = true
                    printError(
                        "  refused records: select position, field, reason from idmerge.refused_records where batch_id = \(summary.batchId)"
                    )
                }
            }
            return refused
        }
        if anyRefused { throw ExitCodes.refusedRecords }
    }
}
