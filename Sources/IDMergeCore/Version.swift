public enum IDMergeVersion { public static let current = "0.1.0" }
