/// The version of this Culvert build, sent in `User-Agent` and `Server` headers and printed by `--version`.
public enum CulvertVersion {
    public static let string = "0.1.0"
}
