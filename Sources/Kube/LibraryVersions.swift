import CCurl
import CYAML

/// Versions of the C libraries the Kubernetes client is built on, for `eaas version` and bug reports.
public enum LibraryVersions {
    /// libcurl's version string, e.g. "libcurl/7.88.1 OpenSSL/3.0.15 …".
    public static var curl: String { String(cString: curl_version()) }
    /// libyaml's version, e.g. "0.2.5".
    public static var yaml: String { String(cString: eaas_yaml_version()) }
}
