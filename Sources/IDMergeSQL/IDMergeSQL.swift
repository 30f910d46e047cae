import Foundation

/// The bundle that carries the top-level `migrations/` and `sql/` folders as resources.
///
/// This target's root is the package root, so the SQL files stay where analysts and
/// reviewers look for them, while the build still bundles them with the binary.
public enum IDMergeSQLBundle {
    /// The folder holding `migrations/` and `sql/` at run time.
    public static var resourceURL: URL? { Bundle.module.resourceURL }
}
