//! `confman-node`: runs one Confman node. With no arguments it starts a single-node cluster
//! with data in `./data` on `127.0.0.1:8080` and prints a development admin key.

use std::process::ExitCode;

use clap::Parser;
use confman_node::config::{Flags, LogFormat, Settings};
use tracing_subscriber::EnvFilter;

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for SIGINT: {e}");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

fn main() -> ExitCode {
    confman_node::malloc::limit_arenas();
    confman_node::malloc::spawn_trimmer();
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt.block_on(run()),
        Err(e) => {
            eprintln!("confman-node: cannot start the async runtime: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run() -> ExitCode {
    let settings = match Settings::resolve(Flags::parse()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("confman-node: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(settings.log_format);
    let running = match confman_node::server::start(&settings).await {
        Ok(r) => r,
        Err(e @ confman_node::server::ServerError::DataLost { .. }) => {
            tracing::error!("refusing to start: {e}");
            if let Err(serve) = confman_node::server::serve_data_lost(&settings, &e, shutdown_signal()).await {
                tracing::error!("cannot serve the data-lost state: {serve}");
            }
            return ExitCode::from(3);
        }
        Err(e) => {
            tracing::error!("startup failed: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(key) = &running.dev_admin_key {
        eprintln!(
            "\nconfman-node: development mode (no --api-keys-file). Admin API key (stored in {}):\n\n    {key}\n\n  try: curl -H 'Authorization: Bearer {key}' http://{}/api/v1/cluster\n",
            settings.data_dir.join("dev-admin.key").display(),
            running.local_addr
        );
    }
    match running.serve(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("node stopped with an error: {e}");
            ExitCode::from(1)
        }
    }
}
