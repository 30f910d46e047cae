import Foundation
import Testing

/// What a run of the `idmerge` executable did.
struct CommandRun {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs the built `idmerge` executable with `arguments` and waits for it.
func runIdmerge(_ arguments: [String]) throws -> CommandRun {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: idmergeBinary)
    process.arguments = arguments
    let out = Pipe()
    let err = Pipe()
    process.standardOutput = out
    process.standardError = err
    try process.run()
    let stdout = out.fileHandleForReading.readDataToEndOfFile()
    let stderr = err.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return CommandRun(
        status: process.terminationStatus, stdout: String(decoding: stdout, as: UTF8.self),
        stderr: String(decoding: stderr, as: UTF8.self))
}

/// Bad options are usage errors: exit 64 (interfaces.md, README "Exit codes"), the message on
/// standard error, nothing on standard output, and no connection attempted. The database URL
/// points nowhere, so a command that got as far as connecting would exit 1 instead.
struct CLIUsageTests {
    static let nowhere = ["--database-url", "host=/nonexistent/idmerge-usage-test connect_timeout=1"]

    static let usageErrors: [[String]] = [
        ["funnel", "--step", "A"],
        ["funnel", "--step", "A", "--step", "B", "--window", "400d"],
        ["funnel", "--step", "A", "--step", "B", "--window", "0s"],
        ["funnel", "--step", "A", "--step", "B", "--grace", "2d"],
        ["funnel", "--step", "A", "--step", "B", "--from", "2026-13-01"],
        ["funnel", "--step", "A", "--step", "B", "--from", "2026-02-01", "--to", "2026-01-01"],
        ["funnel", "--step", "A", "--step", "B", "--exclude", "C:2-1"],
        ["funnel", "--step", "A", "--step", "B", "--exclude", "C:1-3"],
        ["funnel", "--step", "A", "--step", "B", "--breakdown-attribution", "step3"],
        ["funnel", "--step", "A", "--step", "B", "--breakdown-attribution", "middle"],
        ["funnel", "--step", "A", "--step", "B", "--window", "1x"],
        ["funnel", "--step", "A", "--step", "B", "--counting", "people"],
        ["funnel", "--step", "A", "--step", "B", "--output", "xml"],
        ["attribution", "--conversion", "C", "--touchpoint", "utm", "--model", "custom"],
        ["attribution", "--conversion", "C", "--touchpoint", "utm", "--model", "custom", "--weights", "1,2"],
        ["attribution", "--conversion", "C", "--touchpoint", "utm", "--model", "custom", "--weights", "50,30,30"],
        ["attribution", "--conversion", "C", "--touchpoint", "utm", "--weights", "40,20,40"],
        ["attribution", "--conversion", "C", "--touchpoint", "utm", "--lookback", "4000d"],
        ["attribution", "--conversion", "C", "--touchpoint", "utm", "--to", "2026-02-30"],
        ["attribution", "--conversion", "C", "--touchpoint", "utm", "--model", "w-shaped"],
        ["attribution", "--conversion", "C"],
        ["cohort", "export", "--did", "A", "--from", "yesterday"],
        ["cohort", "export", "--did", "A", "--property", "user_id"],
        ["activity", "u1", "--limit", "many"],
        ["import"],
        ["nightly", "--chunk-size", "0"],
        ["nosuchcommand"],
    ]

    @Test("bad options exit 64 before connecting", arguments: usageErrors)
    func badOptionsAreUsageErrors(arguments: [String]) throws {
        guard FileManager.default.isExecutableFile(atPath: idmergeBinary) else {
            Issue.record("build the idmerge executable first (swift build): \(idmergeBinary)")
            return
        }
        let run = try runIdmerge(arguments + Self.nowhere)
        #expect(run.status == 64, "\(arguments): exit \(run.status), stderr: \(run.stderr)")
        #expect(run.stdout.isEmpty, "\(arguments): stdout is for data: \(run.stdout)")
        #expect(!run.stderr.isEmpty, "\(arguments): the reason goes to stderr")
        #expect(!run.stderr.contains("nonexistent"), "\(arguments): tried to connect: \(run.stderr)")
    }

    /// `--help` shows duration defaults as they are written on the command line, not as the
    /// type that holds them (it printed `Duration(seconds: 604800.0)`).
    @Test func helpShowsDurationDefaultsAsWritten() throws {
        guard FileManager.default.isExecutableFile(atPath: idmergeBinary) else {
            Issue.record("build the idmerge executable first (swift build): \(idmergeBinary)")
            return
        }
        let funnel = try runIdmerge(["funnel", "--help"]).stdout
        #expect(funnel.contains("(default: 7d)"), "\(funnel)")
        #expect(funnel.contains("(default: 2s)"), "\(funnel)")
        let attribution = try runIdmerge(["attribution", "--help"]).stdout
        #expect(attribution.contains("(default: 30d)"), "\(attribution)")
        #expect(!(funnel + attribution).contains("Duration("))
    }
}
