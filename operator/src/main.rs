//! `confman-operator`: `crd` prints the ConfmanCluster CRD (the controller comes next).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "confman-operator", version, about = "Kubernetes operator for Confman")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the ConfmanCluster CustomResourceDefinition as YAML.
    Crd,
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
    }
}
