use clap::Parser;

/// Bridges an on-prem voice kiosk to a cloud voice agent.
#[derive(Parser)]
#[command(name = "kiosk-gateway", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
