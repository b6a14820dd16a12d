//! `drip-dashboard`: the live web dashboard for data_drip. See the README's Dashboard section.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let config = match drip_dashboard::config::Config::from_args(std::env::args().skip(1)) {
        Ok(drip_dashboard::config::Parsed::Run(c)) => c,
        Ok(drip_dashboard::config::Parsed::Help(text)) => {
            println!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("drip-dashboard: {e}\n\n{}", drip_dashboard::config::USAGE);
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("drip-dashboard: cannot listen on {}: {e}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    if !config.listen.ip().is_loopback() {
        if config.allowed_hosts.is_empty() && config.public_url.is_none() {
            eprintln!(
                "drip-dashboard: note: listening on {} but answering only to localhost, \
                 127.0.0.1 and [::1] (421 otherwise): add --public-url URL or --allowed-host NAME",
                config.listen
            );
        }
        if !config.multi_user {
            eprintln!(
                "drip-dashboard: warning: single-user mode on a non-loopback address: whoever \
                 reaches it acts as the database URL's role. Use --multi-user behind a TLS proxy."
            );
        }
    }
    let state = match drip_dashboard::AppState::new(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("drip-dashboard: {e}");
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(addr) => eprintln!("drip-dashboard: listening on http://{addr}/"),
        Err(e) => eprintln!("drip-dashboard: listening ({e})"),
    }
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    if let Err(e) = drip_dashboard::serve(listener, state, shutdown).await {
        eprintln!("drip-dashboard: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
