import ArgumentParser
import Foundation
import IDMergeCore

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a deterministic synthetic data set in Mixpanel's import format (NDJSON).")

    @Option(help: "How many events.") var events: Int
    @Option(help: "Random seed: the same seed gives the same data.") var seed: UInt64 = 1
    @Option(help: "Output file (default: standard output).") var output: String?
    @Option(
        name: .customLong("id-merge"),
        help: "Write for this ID Merge API: simplified (default) or original ($identify events, UUID device ids).")
    var idMerge: IDMergeMode = .simplified

    func validate() throws {
        if events < 0 { throw ValidationError("--events must be 0 or more") }
    }

    func run() throws {
        try runReporting {
            let handle: FileHandle
            if let output {
                guard FileManager.default.createFile(atPath: output, contents: nil) else {
                    throw SourceError(source: output, reason: "cannot create the file")
                }
                handle = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
            } else {
                handle = FileHandle.standardOutput
            }
            var buffer: [UInt8] = []
            buffer.reserveCapacity(1 << 20)
            try Generator(events: events, seed: seed, mode: idMerge).generate { line in
                buffer.append(contentsOf: line.utf8)
                buffer.append(0x0A)
                if buffer.count >= 1 << 20 {
                    handle.write(Data(buffer))
                    buffer.removeAll(keepingCapacity: true)
                }
            }
            handle.write(Data(buffer))
            if output != nil { try handle.close() }
        }
    }
}
