/// Array literals for parameters such as `$1::text[]`.
public enum PostgresArray {
    /// A `text[]` literal with every element quoted and escaped, e.g. `{"a","b \"c\""}`.
    public static func text(_ values: [String?]) -> String {
        let items = values.map { value -> String in
            guard let value else { return "NULL" }
            var escaped = "\""
            for character in value.unicodeScalars {
                if character == "\"" || character == "\\" { escaped.append("\\") }
                escaped.unicodeScalars.append(character)
            }
            escaped.append("\"")
            return escaped
        }
        return "{" + items.joined(separator: ",") + "}"
    }
}
