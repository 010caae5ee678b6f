/// The version printed by `--version` and written into output metadata (`wsamerge.version`).
public enum WSAMergeVersion {
    public static let current = "0.1.0"
}
