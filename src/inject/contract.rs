//! The contract between the injector and the sidecar (DESIGN §8) in one place: names, paths,
//! ports and identities that the mutation, the webhook, the docs and the tests all read from here.

/// Every annotation of ours starts with this.
pub const PREFIX: &str = "credproxy.dev/";
/// `"true"` asks for the sidecar.
pub const INJECT: &str = "credproxy.dev/inject";
/// Set to [`INJECTED`] once the sidecar is in: a second run changes nothing.
pub const STATUS: &str = "credproxy.dev/status";
/// The value of [`STATUS`] on an injected pod.
pub const INJECTED: &str = "injected";
/// The policy ConfigMap's name (required).
pub const POLICY: &str = "credproxy.dev/policy";
/// The Secret mounted at [`SECRETS_DIR`].
pub const SECRETS: &str = "credproxy.dev/secrets";
/// The audience of the projected ServiceAccount token at [`TOKEN_PATH`].
pub const TOKEN_AUDIENCE: &str = "credproxy.dev/token-audience";
/// The sidecar's image.
pub const IMAGE: &str = "credproxy.dev/image";
/// The proxy port on loopback.
pub const PROXY_PORT: &str = "credproxy.dev/proxy-port";
/// The admin port (probes, `/metrics`) on the pod IP.
pub const ADMIN_PORT: &str = "credproxy.dev/admin-port";
/// The sidecar's CPU request.
pub const CPU_REQUEST: &str = "credproxy.dev/cpu-request";
/// The sidecar's CPU limit.
pub const CPU_LIMIT: &str = "credproxy.dev/cpu-limit";
/// The sidecar's memory request.
pub const MEMORY_REQUEST: &str = "credproxy.dev/memory-request";
/// The sidecar's memory limit.
pub const MEMORY_LIMIT: &str = "credproxy.dev/memory-limit";
/// Names added to `NO_PROXY` after loopback, comma-separated.
pub const NO_PROXY: &str = "credproxy.dev/no-proxy";
/// `NAME=VALUE,…` set in every app container (base URLs, placeholder keys).
pub const AGENT_ENV: &str = "credproxy.dev/agent-env";
/// `"true"`: our variables replace the ones the user set.
pub const OVERRIDE_ENV: &str = "credproxy.dev/override-env";

/// Every annotation the injector reads; any other `credproxy.dev/` key is a mistake.
pub const ANNOTATIONS: &[&str] = &[
    INJECT,
    STATUS,
    POLICY,
    SECRETS,
    TOKEN_AUDIENCE,
    IMAGE,
    PROXY_PORT,
    ADMIN_PORT,
    CPU_REQUEST,
    CPU_LIMIT,
    MEMORY_REQUEST,
    MEMORY_LIMIT,
    NO_PROXY,
    AGENT_ENV,
    OVERRIDE_ENV,
];

/// The sidecar container's name.
pub const CONTAINER: &str = "credproxy";
/// The image when neither `--image` nor the annotation names one: what `scripts/image` tags.
pub const DEFAULT_IMAGE: &str = concat!("credproxy:", env!("CARGO_PKG_VERSION"));

/// The policy ConfigMap's mount (read-only, a directory so updates arrive and hot-reload).
pub const POLICY_DIR: &str = "/etc/credproxy";
/// The ConfigMap key holding the policy.
pub const POLICY_KEY: &str = "policy.yaml";
/// The policy file the sidecar runs with.
pub const POLICY_FILE: &str = "/etc/credproxy/policy.yaml";
/// The Secret's mount.
pub const SECRETS_DIR: &str = "/var/run/secrets/credproxy";
/// The projected token's folder.
pub const TOKEN_DIR: &str = "/var/run/secrets/tokens";
/// The projected token's file name in [`TOKEN_DIR`].
pub const TOKEN_FILE: &str = "credproxy";
/// The projected token's path, as a policy names it.
pub const TOKEN_PATH: &str = "/var/run/secrets/tokens/credproxy";
/// How long a projected token lives; the kubelet refreshes it at 80 %.
pub const TOKEN_SECONDS: u32 = 3600;
/// The CA files (`ca.crt`, `ca-bundle.crt`, `truststore.p12`): written by the sidecar, read-only
/// in app containers.
pub const CA_DIR: &str = "/run/credproxy";
/// The control socket's folder, mounted into the sidecar only.
pub const CONTROL_DIR: &str = "/run/credproxy-control";
/// The control listener the sidecar is given.
pub const CONTROL: &str = "unix:/run/credproxy-control/control.sock";

/// The proxy port when the pod does not choose one.
pub const DEFAULT_PROXY_PORT: u16 = 15001;
/// The admin port when the pod does not choose one.
pub const DEFAULT_ADMIN_PORT: u16 = 15090;
/// The sidecar's user and group.
pub const UID: i64 = 65532;

/// Default resources: a sidecar idles most of the time.
pub const DEFAULT_CPU_REQUEST: &str = "10m";
/// See [`DEFAULT_CPU_REQUEST`].
pub const DEFAULT_CPU_LIMIT: &str = "1";
/// See [`DEFAULT_CPU_REQUEST`].
pub const DEFAULT_MEMORY_REQUEST: &str = "32Mi";
/// See [`DEFAULT_CPU_REQUEST`].
pub const DEFAULT_MEMORY_LIMIT: &str = "128Mi";

/// Volume names the injector adds.
pub const VOLUME_POLICY: &str = "credproxy-policy";
/// See [`VOLUME_POLICY`].
pub const VOLUME_SECRETS: &str = "credproxy-secrets";
/// See [`VOLUME_POLICY`].
pub const VOLUME_TOKEN: &str = "credproxy-token";
/// See [`VOLUME_POLICY`].
pub const VOLUME_CA: &str = "credproxy-ca";
/// See [`VOLUME_POLICY`].
pub const VOLUME_CONTROL: &str = "credproxy-control";

/// The variables the injector sets in every app container (besides `credproxy.dev/agent-env`'s,
/// which may not name these).
pub const INJECTED_ENV: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "NODE_USE_ENV_PROXY",
    "JAVA_TOOL_OPTIONS",
];

/// Loopback, always first in `NO_PROXY`: base-URL traffic must not loop through the forward proxy.
pub const NO_PROXY_LOOPBACK: &str = "localhost,127.0.0.1,::1";
