//! `climatik-certs dev-ca --out-dir DIR --dns-name NAME... --ip-address IP...`
//!
//! Writes a development CA (`ca.crt`, `ca.key`) and a serving certificate
//! (`tls.crt`, `tls.key`) for running the webhook without cert-manager. An
//! existing CA in `DIR` is reused, so running it again rotates the serving
//! certificate under the same trust anchor.

use std::{net::IpAddr, path::PathBuf};

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "climatik-certs",
    version,
    about = "Development certificates for the Climatik webhook"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    runtime: climatik_runtime::RuntimeArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write a dev CA and a serving certificate signed by it.
    DevCa(DevCaArgs),
}

#[derive(clap::Args, Debug)]
struct DevCaArgs {
    /// Directory for ca.crt, ca.key, tls.crt and tls.key.
    #[arg(long, env = "OUT_DIR")]
    out_dir: PathBuf,
    /// DNS names the serving certificate is valid for (repeatable).
    #[arg(long = "dns-name", env = "DNS_NAMES", value_delimiter = ',')]
    dns_names: Vec<String>,
    /// IP addresses the serving certificate is valid for (repeatable).
    #[arg(long = "ip-address", env = "IP_ADDRESSES", value_delimiter = ',')]
    ip_addresses: Vec<IpAddr>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    climatik_runtime::init(&cli.runtime);
    match cli.command {
        Command::DevCa(args) => {
            let written =
                climatik_certs::write_dev_ca(&args.out_dir, &args.dns_names, &args.ip_addresses)?;
            tracing::info!(
                out_dir = %args.out_dir.display(),
                serial = %written.serial_hex,
                reused_ca = written.reused_ca,
                "wrote dev CA and serving certificate"
            );
        }
    }
    Ok(())
}
