//! The `credproxy` command line: run the proxy, check a policy, explain a decision, draw an
//! inventory, inject the sidecar.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "credproxy",
    version,
    about = "Takes API keys away from AI agents: a deny-by-default credential-injecting proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// The policy file.
        #[arg(long, env = "CREDPROXY_CONFIG", default_value = "/etc/credproxy/policy.yaml")]
        config: PathBuf,
        /// Operational log format (stderr).
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
        /// How long in-flight requests may take to finish after SIGTERM.
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        shutdown_timeout: Duration,
        /// Turn CONNECT interception on and write ca.crt, ca-bundle.crt and truststore.p12 into
        /// DIR (overrides the policy's interception output paths).
        #[arg(long, value_name = "DIR")]
        ca_dir: Option<PathBuf>,
        /// Where agents connect (overrides `listen.proxy`).
        #[arg(long, value_name = "ADDR")]
        proxy_listen: Option<std::net::SocketAddr>,
        /// `/metrics`, `/live`, `/ready` (overrides `listen.admin`).
        #[arg(long, value_name = "ADDR")]
        admin_listen: Option<std::net::SocketAddr>,
        /// The control API, `unix:PATH` or `IP:PORT` (overrides `listen.control`).
        #[arg(long, value_name = "unix:PATH|ADDR", value_parser = control_flag)]
        control: Option<credproxy::policy::ControlAddr>,
    },
    /// Validate a policy file and print its route table.
    Check {
        /// The policy file.
        #[arg(long)]
        config: PathBuf,
        /// Also warn (on stderr) about grants broader than a tool needs, each with its path and line.
        #[arg(long)]
        lint: bool,
        /// With --lint: exit 2 when there is any warning.
        #[arg(long, requires = "lint")]
        strict: bool,
    },
    /// Print one row per credential: source, state, age, expiry, next refresh, failures, last error.
    Status {
        /// The control listener: `unix:PATH` or `HOST:PORT`.
        #[arg(long, env = "CREDPROXY_CONTROL", default_value = credproxy::policy::ControlAddr::DEFAULT,
              value_parser = |s: &str| credproxy::policy::ControlAddr::parse(s))]
        control: credproxy::policy::ControlAddr,
        /// A file holding the control API's bearer token (`listen.control_auth_file`).
        #[arg(long, env = "CREDPROXY_CONTROL_AUTH_FILE")]
        control_auth_file: Option<PathBuf>,
        /// Also show each OAuth credential's granted scopes (`+` marks those not requested).
        #[arg(long)]
        wide: bool,
    },
    /// The whole thing on loopback, nothing to install: the proxy, a token authority issuing
    /// 10-second JWTs, a tool API verifying them, steady traffic, and rotations shown live.
    Demo {
        /// Stop after this long (`30s`, `5m`); default: run until Ctrl-C.
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Negative control: the tool API verifies with the wrong key, so every request is rejected.
        #[arg(long, hide = true)]
        wrong_key: bool,
        /// Free ports and a private control socket (the tests' way to run it beside a user's demo).
        #[arg(long, hide = true)]
        free_ports: bool,
    },
    /// Add the credproxy sidecar to annotated workloads in Kubernetes manifests (stdin or -f),
    /// or serve the same mutation as an admission webhook (--webhook).
    Inject {
        /// Multi-document YAML to read; `-` (the default) is stdin.
        #[arg(short = 'f', long = "filename", value_name = "FILE|-", conflicts_with = "webhook")]
        file: Option<PathBuf>,
        /// The sidecar's image when a pod does not name one with `credproxy.dev/image`.
        #[arg(long, env = "CREDPROXY_IMAGE", default_value = credproxy::inject::contract::DEFAULT_IMAGE)]
        image: String,
        /// Serve the mutation as an admission webhook (HTTPS: POST /mutate, GET /healthz, GET /metrics).
        #[arg(long, requires_all = ["listen", "tls_cert", "tls_key"])]
        webhook: bool,
        /// The webhook's address.
        #[arg(long, value_name = "ADDR", requires = "webhook")]
        listen: Option<std::net::SocketAddr>,
        /// The webhook's certificate chain (PEM), re-read when it changes.
        #[arg(long, value_name = "FILE", requires = "webhook")]
        tls_cert: Option<PathBuf>,
        /// The webhook's private key (PEM), re-read when it changes.
        #[arg(long, value_name = "FILE", requires = "webhook")]
        tls_key: Option<PathBuf>,
        /// A pod that cannot be mutated is denied with the reason (Fail) or admitted unchanged with
        /// a warning (Ignore); match the MutatingWebhookConfiguration's failurePolicy.
        #[arg(long, value_enum, default_value = "fail", requires = "webhook")]
        failure_policy: credproxy::inject::review::FailurePolicy,
        /// After SIGTERM, keep answering this long before closing (the API server learns of a
        /// removed endpoint late; with failurePolicy Fail a refused connection denies a pod).
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, requires = "webhook")]
        shutdown_delay: Duration,
        /// How long one webhook connection is served before it is closed.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, requires = "webhook", hide = true)]
        max_connection_age: Duration,
        /// Operational log format (stderr).
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// What agents called and with which keys, read from audit logs; a policy drafted from it.
    Inventory {
        /// Audit logs (JSON lines; rotated and gzip-compressed files too); `-` is stdin.
        #[arg(long = "audit", value_name = "FILE", required = true, num_args = 1..)]
        audit: Vec<PathBuf>,
        /// The policy the events were recorded under: each route's use is counted.
        #[arg(long)]
        config: Option<PathBuf>,
        /// One JSON document instead of tables.
        #[arg(long)]
        json: bool,
        /// Print a draft policy: one tool per host, routes narrowed to what was observed.
        #[arg(long)]
        suggest: bool,
    },
    /// Say which tool and route would take a request, and why (or why it is denied).
    Explain {
        /// The policy file.
        #[arg(long)]
        config: PathBuf,
        /// Name a tool as an agent would with the Credproxy-Tool header.
        #[arg(long)]
        tool: Option<String>,
        /// The request method.
        method: String,
        /// The destination URL (`https://api.github.com/repos/...`).
        url: String,
    },
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CREDPROXY_LOG").unwrap_or_else(|_| "info".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, log_format, shutdown_timeout, ca_dir, proxy_listen, admin_listen, control } => {
            init_logs(log_format);
            let overrides = credproxy::config::Overrides { ca_dir, proxy_listen, admin_listen, control };
            run(config, overrides, shutdown_timeout)
        }
        Command::Check { config, lint, strict } => match credproxy::config::load_text(&config, &Default::default()) {
            Ok((text, policy)) => {
                print!("{}", credproxy::explain::route_table(&policy));
                let warnings = if lint { credproxy::config::lint::lint(&text, &policy) } else { Vec::new() };
                for w in &warnings {
                    eprintln!("warning: {}: {w}", config.display());
                }
                if lint {
                    eprintln!("{} lint warning(s)", warnings.len());
                }
                if strict && !warnings.is_empty() {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => {
                eprint!("{}: {e}", config.display());
                ExitCode::FAILURE
            }
        },
        Command::Inject {
            file,
            image,
            webhook,
            listen,
            tls_cert,
            tls_key,
            failure_policy,
            shutdown_delay,
            max_connection_age,
            log_format,
        } => {
            let inject = credproxy::inject::Options { image };
            match (webhook, listen, tls_cert, tls_key) {
                (true, Some(listen), Some(tls_cert), Some(tls_key)) => {
                    init_logs(log_format);
                    let opts = credproxy::inject::webhook::WebhookOptions {
                        listen,
                        tls_cert,
                        tls_key,
                        failure_policy,
                        inject,
                        max_connection_age,
                    };
                    serve_webhook(opts, shutdown_delay)
                }
                _ => inject_files(&file.unwrap_or_else(|| "-".into()), inject),
            }
        }
        Command::Inventory { audit, config, json, suggest } => {
            match credproxy::inventory::run(&credproxy::inventory::Options { audit, config, json, suggest }) {
                Ok(out) => {
                    print!("{out}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("credproxy inventory: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Explain { config, tool, method, url } => {
            credproxy::explain::explain(&config, tool.as_deref(), &method, &url)
        }
        Command::Status { control, control_auth_file, wide } => runtime().block_on(async move {
            let token = match control_auth_file.map(std::fs::read_to_string).transpose() {
                Ok(t) => t.map(|t| t.trim_end_matches(['\r', '\n']).to_string()),
                Err(e) => {
                    eprintln!("credproxy status: cannot read the control auth file: {}", e.kind());
                    return ExitCode::FAILURE;
                }
            };
            match credproxy::status::fetch(&control, token.as_deref()).await {
                Ok(v) => {
                    print!("{}", credproxy::status::table(&v, std::time::SystemTime::now(), wide));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("credproxy status: {e}");
                    ExitCode::FAILURE
                }
            }
        }),
        Command::Demo { duration, wrong_key, free_ports } => {
            // Quiet by default so the live account stays readable; CREDPROXY_LOG=info shows more.
            let filter = tracing_subscriber::EnvFilter::try_from_env("CREDPROXY_LOG").unwrap_or_else(|_| "warn".into());
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
            runtime().block_on(async move {
                match credproxy::demo::run(credproxy::demo::Options { duration, wrong_key, free_ports }).await {
                    Ok(s) if s.requests > 0 && s.failed == 0 && s.rejected == 0 => ExitCode::SUCCESS,
                    Ok(_) => ExitCode::FAILURE,
                    Err(e) => {
                        eprintln!("credproxy demo: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
    }
}

fn serve_webhook(opts: credproxy::inject::webhook::WebhookOptions, delay: Duration) -> ExitCode {
    runtime().block_on(async move {
        let webhook = match credproxy::inject::webhook::Webhook::bind(opts).await {
            Ok(w) => w,
            Err(e) => {
                eprintln!("credproxy inject --webhook: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Ok(addr) = webhook.local_addr() {
            tracing::info!(%addr, "injector webhook listening");
        }
        let (stop, rx) = tokio::sync::watch::channel(false);
        let served = tokio::spawn(webhook.serve(rx));
        wait_for_signal().await;
        tracing::info!(delay = ?delay, "shutting down: still answering until the delay is over");
        tokio::time::sleep(delay).await;
        let _ = stop.send(true);
        let _ = served.await;
        ExitCode::SUCCESS
    })
}

fn inject_files(file: &std::path::Path, opts: credproxy::inject::Options) -> ExitCode {
    use std::io::Read;
    let limit = credproxy::inject::manifest::MAX_INPUT_BYTES as u64 + 1;
    let mut text = String::new();
    let read = if file == std::path::Path::new("-") {
        std::io::stdin().take(limit).read_to_string(&mut text)
    } else {
        std::fs::File::open(file).and_then(|f| f.take(limit).read_to_string(&mut text))
    };
    if let Err(e) = read {
        eprintln!("credproxy inject: cannot read {}: {e}", file.display());
        return ExitCode::FAILURE;
    }
    match credproxy::inject::inject_documents(&text, &opts) {
        Ok(done) => {
            for w in &done.warnings {
                eprintln!("credproxy inject: warning: {w}");
            }
            print!("{}", done.output);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("credproxy inject: {}: {e}", file.display());
            ExitCode::FAILURE
        }
    }
}

/// `--control`: as `listen.control` reads it, without `${VAR}` expansion.
fn control_flag(s: &str) -> Result<credproxy::policy::ControlAddr, String> {
    if s.contains("${") {
        return Err("a ${ in --control would be read as a variable; give the path itself".into());
    }
    credproxy::policy::ControlAddr::parse(s).map_err(str::to_string)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a Tokio runtime")
}

fn run(config: PathBuf, overrides: credproxy::config::Overrides, shutdown_timeout: Duration) -> ExitCode {
    // Tokens and secrets live in this process's memory: no core dumps, and no /proc/PID/mem,
    // environ or root for another process of the same user (an agent sharing UID 65532).
    // SAFETY: prctl(PR_SET_DUMPABLE) takes integers and touches none of our memory.
    #[cfg(target_os = "linux")]
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0)
    };
    // A sidecar with one core (a CPU limit, or taskset) runs leaner on a single-threaded runtime.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if cores == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let running =
            match credproxy::serve::start_with(config.clone(), overrides, credproxy::clock::Clock::system()).await {
                Ok(r) => r,
                Err(e) => {
                    eprint!("credproxy: {}: {e}", config.display());
                    if !e.to_string().ends_with('\n') {
                        eprintln!();
                    }
                    return ExitCode::FAILURE;
                }
            };
        wait_for_signal().await;
        tracing::info!("shutting down");
        running.shutdown(shutdown_timeout).await;
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
