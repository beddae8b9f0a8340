//! `confman-operator`: `run` starts the controller, `crd` prints the ConfmanCluster CRD.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use confman_operator::controller::{RunOptions, run};

#[derive(Parser)]
#[command(name = "confman-operator", version, about = "Kubernetes operator for Confman")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller.
    Run {
        /// Watch only this namespace (default: all namespaces).
        #[arg(long, env = "WATCH_NAMESPACE")]
        namespace: Option<String>,
        /// Address of the /health, /readyz, /livez and /metrics listener.
        #[arg(long, env = "CONFMAN_OPERATOR_LISTEN", default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        /// Reconcile only while holding the leader Lease (required with more than one replica).
        #[arg(long, env = "LEADER_ELECTION", default_value_t = false)]
        leader_election: bool,
        /// Namespace of the leader Lease (the operator's namespace).
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        lease_namespace: String,
        /// Identity in the Lease (the pod name).
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
        /// Log as JSON lines.
        #[arg(long, env = "LOG_JSON", default_value_t = false)]
        log_json: bool,
        /// ClusterRole allowing `create` on tokenreviews, bound to the members' ServiceAccount
        /// of clusters with `spec.auth.serviceAccounts` (the chart installs it).
        #[arg(long, env = "CONFMAN_TOKEN_REVIEW_ROLE", default_value = confman_operator::builders::DEFAULT_TOKEN_REVIEW_ROLE)]
        token_review_role: String,
    },
    /// Print the ConfmanCluster CustomResourceDefinition as YAML.
    Crd,
    /// Print the objects a ConfmanCluster (YAML file, `-` for stdin) gets on first reconcile.
    Render {
        /// The ConfmanCluster manifest.
        file: std::path::PathBuf,
    },
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn,tower=warn,hyper=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json { builder.json().init() } else { builder.init() }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Crd => match confman_operator::crd::crd_yaml() {
            Ok(yaml) => {
                #[allow(clippy::print_stdout)] // the command's output is the CRD
                {
                    print!("{yaml}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("confman-operator: cannot render the CRD: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Render { file } => {
            let input = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
            } else {
                std::fs::read_to_string(&file)
            };
            let rendered = input
                .map_err(|e| format!("{}: {e}", file.display()))
                .and_then(|y| confman_operator::render::render(&y).map_err(|e| format!("{}: {e}", file.display())));
            match rendered {
                Ok(yaml) => {
                    #[allow(clippy::print_stdout)] // the command's output is the objects
                    {
                        print!("{yaml}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("confman-operator render: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { namespace, listen, leader_election, lease_namespace, identity, log_json, token_review_role } => {
            init_logs(log_json);
            let identity = identity.unwrap_or_else(|| format!("confman-operator-{}", std::process::id()));
            let opts = RunOptions { namespace, listen, leader_election, lease_namespace, identity, token_review_role };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("confman-operator: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(opts)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "confman-operator stopped");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
