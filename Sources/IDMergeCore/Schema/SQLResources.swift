import Foundation
import IDMergeSQL

/// The `.sql` files shipped with IDMerge: `migrations/` (forward-only, numbered) and `sql/`
/// (views, functions and report queries), bundled as resources of this module.
public enum SQLResources {
    /// One SQL file.
    public struct File: Sendable {
        /// File name, for example `0001_create_schema.sql`.
        public var name: String
        public var text: String
    }

    /// The migration files, ordered by name.
    public static func migrations() throws -> [File] { try files(in: "migrations") }

    /// The files of `sql/`, ordered by name (their numeric prefixes give dependency order).
    public static func objects() throws -> [File] { try files(in: "sql") }

    /// One file of `sql/` by name, for example `funnel.sql`.
    ///
    /// - Throws: ``SQLResourceError`` when the file is not bundled.
    public static func query(_ name: String) throws -> String {
        guard let url = directory("sql")?.appendingPathComponent(name),
            let text = try? String(contentsOf: url, encoding: .utf8)
        else { throw SQLResourceError(name: "sql/\(name)") }
        return text
    }

    static func directory(_ name: String) -> URL? {
        IDMergeSQLBundle.resourceURL?.appendingPathComponent(name, isDirectory: true)
    }

    static func files(in folder: String) throws -> [File] {
        guard let directory = directory(folder) else { throw SQLResourceError(name: folder) }
        let names = try FileManager.default.contentsOfDirectory(atPath: directory.path)
            .filter { $0.hasSuffix(".sql") }
            .sorted()
        return try names.map { name in
            File(name: name, text: try String(contentsOf: directory.appendingPathComponent(name), encoding: .utf8))
        }
    }
}

/// A bundled SQL file is missing: the build is broken.
public struct SQLResourceError: Error, CustomStringConvertible {
    public var name: String
    public var description: String { "bundled SQL file \(name) is missing; rebuild idmerge" }
}
