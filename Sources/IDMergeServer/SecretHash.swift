import Crypto

/// SHA-256 of an API secret as lowercase hex, exactly as PostgreSQL's
/// `encode(sha256(convert_to(secret, 'UTF8')), 'hex')` writes `idmerge.projects.api_secret_hash`,
/// so the server checks secrets without a round trip per request. Uses swift-crypto.
enum SecretHash {
    static func hex(_ text: String) -> String {
        SHA256.hash(data: Array(text.utf8)).map { byte in
            let digits = Array("0123456789abcdef")
            return String([digits[Int(byte >> 4)], digits[Int(byte & 0x0F)]])
        }.joined()
    }
}
