import ArgumentParser
import Foundation
import IDMergeCore

struct ProfilesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "profiles",
        abstract: "User profiles (Engage operations).",
        subcommands: [ProfilesImport.self]
    )
}

struct ProfilesImport: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "Apply profile updates: JSON array or NDJSON files (gzip or not), or - for standard input.",
        discussion: """
            Each record is one Engage update: {"$distinct_id": "u1", "$set": {"plan": "pro"}}, with one of \
            $set, $set_once, $add, $append, $union, $remove, $unset or $delete, and optionally $time, \
            $ignore_time and $ignore_alias. Updates apply in file order. Profiles are read from the view \
            idmerge.profiles. Each source is one batch, committed whole or not at all. Exit codes: 0 every \
            update applied; 3 some records were refused (kept in idmerge.refused_records); 1 a source could \
            not be read or the database failed.
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
            let importer = ProfileImporter(connection: db, project: project, logger: logger)
            var refused = false
            for file in files {
                let summary = try importer.importFile(file)
                print(
                    "\(summary.source): \(summary.applied) applied, \(summary.created) profiles created, \(summary.deleted) deleted, \(summary.refused) refused (batch \(summary.batchId))"
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
