import ArgumentParser
import Foundation
import IDMergeCore

struct CohortCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cohort",
        abstract: "Cohorts of people, for other tools.",
        subcommands: [CohortExportCommand.self]
    )
}

struct CohortExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "The people who did an event, with their ids and profile properties.",
        discussion: """
            One row per person, resolved live: distinct_id (canonical: the user id, or $device:ID for an \
            anonymous person), user_id, device_ids (every device linked to them, ';'-separated in CSV), then \
            one column per --property, read from the profile of the canonical distinct_id. The same people in \
            SQL: select * from idmerge.cohort_export(project, event, from, to).
            """
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var projectOption: ProjectOption
    @Option(help: "The event the people did.") var did: String
    @Option(help: "First UTC date (YYYY-MM-DD) of the event.") var from: String?
    @Option(help: "Last UTC date (YYYY-MM-DD, inclusive) of the event.") var to: String?
    @Option(name: .customLong("property"), help: "A profile property to export as a column (repeatable).")
    var properties: [String] = []
    @Option(help: "csv, json or table.") var output: OutputFormat = .csv

    /// Bad options are usage errors (exit 64), found before connecting.
    func validate() throws {
        try usageError { try CohortExport(event: did, fromDate: from, toDate: to, properties: properties).validate() }
    }

    func run() throws {
        try runReporting {
            let export = CohortExport(event: did, fromDate: from, toDate: to, properties: properties)
            try export.validate()
            let logger = connection.makeLogger()
            let db = try connection.connect(logger: logger, applicationName: "idmerge cohort export")
            defer { db.close() }
            guard let project = try Projects.find(name: projectOption.project, on: db) else {
                throw ProjectError(message: "no project named \"\(projectOption.project)\"")
            }
            let members = try export.run(project: project, on: db)
            print(try export.render(members, as: output), terminator: "")
        }
    }
}
