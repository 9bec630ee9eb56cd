//! `skiff dns NAME [TYPE]`: what skiff's DNS server answers for a name, asked of the server's
//! catalog directly (no DNS client needed), printed like dig's sections.

use std::process::ExitCode;

use skiff_client::DnsQuery;
use skiff_client::blocking::Client;

use crate::output::{self, OutputArg};

#[derive(clap::Args)]
pub struct Args {
    /// A name like `web.shop.default.skiff` or `_http._tcp.web.shop.default.skiff`.
    name: String,
    /// Record type: A (default), AAAA, SRV, SOA…
    #[arg(default_value = "A")]
    qtype: String,
    #[command(flatten)]
    output: OutputArg,
}

pub fn run(args: Args, client: &Client) -> anyhow::Result<ExitCode> {
    let view = client.dns(&DnsQuery {
        name: args.name,
        qtype: Some(args.qtype),
    })?;
    output::print(args.output.format, &view, || {
        println!(";; {} {}: {}", view.name, view.qtype, view.rcode);
        for (section, records) in [
            ("ANSWER", &view.answers),
            ("AUTHORITY", &view.authorities),
            ("ADDITIONAL", &view.additionals),
        ] {
            if !records.is_empty() {
                println!(";; {section}");
                for r in records {
                    println!("{r}");
                }
            }
        }
    })?;
    Ok(if view.rcode == "NOERROR" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
