import ArgumentParser
import Foundation
import IDMergeCore

extension OutputFormat: ExpressibleByArgument {}
extension FunnelQuery.Counting: ExpressibleByArgument {}
extension FunnelQuery.Order: ExpressibleByArgument {}
extension AttributionQuery.Model: ExpressibleByArgument {}
extension AttributionQuery.PerUser: ExpressibleByArgument {}

struct Funnel: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Funnel report: how many people (or attempts) reach each step.",
        discussion: """
            Identities are live: correct the moment an import commits. Defaults: all time, uniques, \
            specific (loose) order, a 7d window from the first step-1 event, breakdown attribution from \
            step 1, a 2s grace between steps. The same numbers in SQL: select * from idmerge.funnel(...).
            """
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var projectOption: ProjectOption
    @Option(name: .customLong("step"), help: "A step's event name, in order (two or more).") var steps: [String] = []
    @Option(help: "Conversion window: a number and a unit s, m, h or d (at most 366d).") var window: Duration =
        Duration(seconds: 7 * 86400)
    @Option(help: "First UTC date (YYYY-MM-DD) of step-1 events.") var from: String?
    @Option(help: "Last UTC date (YYYY-MM-DD, inclusive) of step-1 events.") var to: String?
    @Option(help: "uniques or totals.") var counting: FunnelQuery.Counting = .uniques
    @Option(help: "specific or any.") var order: FunnelQuery.Order = .specific
    @Option(help: "Exclusion: EVENT (between all steps) or EVENT:FROM-TO (between those 1-based steps).")
    var exclude: [String] = []
    @Option(help: "Hold this event property constant across the steps.") var hold: String?
    @Option(help: "Break down by this event property.") var breakdown: String?
    @Option(
        name: .customLong("breakdown-attribution"),
        help: "Where the breakdown value comes from: step1, first-defined, last-defined or stepN.")
    var breakdownAttribution = "step1"
    @Option(help: "Steps this close in time may count in either order.") var grace: Duration = Duration(seconds: 2)
    @Option(help: "table, csv or json.") var output: OutputFormat = .table

    /// The query the options ask, checked.
    ///
    /// - Throws: ``FunnelError`` naming the option and the reason.
    func makeQuery() throws -> FunnelQuery {
        var query = FunnelQuery(steps: steps)
        query.windowSeconds = window.seconds
        query.fromDate = from
        query.toDate = to
        query.counting = counting
        query.order = order
        query.exclusions = try exclude.map { try FunnelQuery.Exclusion(argument: $0) }
        query.hold = hold
        query.breakdown = breakdown
        query.breakdownAttribution = breakdownAttribution
        query.graceSeconds = grace.seconds
        try query.validate()
        return query
    }

    /// Bad options are usage errors (exit 64), found before connecting.
    func validate() throws {
        try usageError { _ = try makeQuery() }
    }

    func run() throws {
        try runReporting {
            let query = try makeQuery()
            let logger = connection.makeLogger()
            let db = try connection.connect(logger: logger, applicationName: "idmerge funnel")
            defer { db.close() }
            guard let project = try Projects.find(name: projectOption.project, on: db) else {
                throw ProjectError(message: "no project named \"\(projectOption.project)\"")
            }
            let report = try FunnelReport.run(query, project: project, on: db)
            print(try ReportOutput.render(report, as: output), terminator: "")
        }
    }
}

struct Attribution: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Attribution report: conversions and value credited to each touchpoint value.",
        discussion: """
            Touchpoints are the person's events (anonymous ones included once the device is linked) in the \
            lookback window before each conversion that carry the touchpoint property. Defaults: all time, \
            last-touch, 30d lookback, every conversion. The same numbers in SQL: select * from idmerge.attribution(...).
            """
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var projectOption: ProjectOption
    @Option(help: "The conversion event.") var conversion: String
    @Option(help: "The touchpoint property, for example utm_source or utm_campaign.") var touchpoint: String
    @Option(help: "The conversion's numeric property to credit, for example revenue.") var value: String?
    @Option(
        help: "first-touch, last-touch, linear, participation, time-decay, u-shaped, j-shaped, inverse-j or custom.")
    var model: AttributionQuery.Model = .lastTouch
    @Option(help: "Custom weights FIRST,MIDDLE,LAST in percent, summing to 100.") var weights: String?
    @Option(help: "Lookback window: a number and a unit s, m, h or d.") var lookback: Duration = Duration(
        seconds: 30 * 86400)
    @Option(name: .customLong("per-user"), help: "Count one conversion per person: first or last.")
    var perUser: AttributionQuery.PerUser?
    @Option(help: "First UTC date (YYYY-MM-DD) of conversions.") var from: String?
    @Option(help: "Last UTC date (YYYY-MM-DD, inclusive) of conversions.") var to: String?
    @Option(help: "table, csv or json.") var output: OutputFormat = .table

    /// The query the options ask, checked.
    ///
    /// - Throws: ``FunnelError`` naming the option and the reason.
    func makeQuery() throws -> AttributionQuery {
        var query = AttributionQuery(conversion: conversion, touchpoint: touchpoint)
        query.valueProperty = value
        query.model = model
        query.lookbackSeconds = lookback.seconds
        query.perUser = perUser
        query.fromDate = from
        query.toDate = to
        if let weights {
            let parts = weights.split(separator: ",", omittingEmptySubsequences: false).map {
                Double($0.trimmingCharacters(in: .whitespaces))
            }
            guard parts.count == 3, parts.allSatisfy({ $0?.isFinite ?? false }) else {
                throw FunnelError(message: "--weights must be three numbers FIRST,MIDDLE,LAST (percent)")
            }
            query.weights = parts.map { $0! }
        }
        try query.validate()
        return query
    }

    /// Bad options are usage errors (exit 64), found before connecting.
    func validate() throws {
        try usageError { _ = try makeQuery() }
    }

    func run() throws {
        try runReporting {
            let query = try makeQuery()
            let logger = connection.makeLogger()
            let db = try connection.connect(logger: logger, applicationName: "idmerge attribution")
            defer { db.close() }
            guard let project = try Projects.find(name: projectOption.project, on: db) else {
                throw ProjectError(message: "no project named \"\(projectOption.project)\"")
            }
            let report = try AttributionReport.run(query, project: project, on: db)
            print(try ReportOutput.render(report, as: output), terminator: "")
        }
    }
}
