//! Issue 5 benchmarks (a) and (b): how long an instance that crashed (`--mode kill`, SIGKILL)
//! or hung (`--mode hang`, SIGSTOP) stays in skiff's DNS answers.
//!
//! Each round picks a ready instance of the service from the API, checks that its port is in
//! the SRV answer, signals it, and then queries SRV in a loop every `--every-ms` (the
//! resolution) until an answer no longer lists the port. The time from the signal to the
//! sending of that first answer's query is the round's figure. Then it waits for the service
//! to be whole again (a killed instance restarts; a hung one gets SIGCONT and passes again).
//!
//! Run by `bench/dns_gone.sh`; loopback only, stops by itself after `--rounds`.
//!
//! ```text
//! dns_gone --api http://127.0.0.1:7700 --dns 127.0.0.1:7753 --stack gone --service web \
//!          --replicas 3 --mode kill --rounds 20 --every-ms 5
//! ```

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use skiff_client::StackFilter;
use skiff_client::blocking::Client;
use skiff_model::InstanceState;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// SIGKILL: the process exits.
    Kill,
    /// SIGSTOP: the process hangs; readiness must fail `retries` times.
    Hang,
}

#[derive(Parser)]
struct Args {
    #[arg(long)]
    api: String,
    #[arg(long)]
    dns: SocketAddr,
    #[arg(long)]
    stack: String,
    #[arg(long, default_value = "default")]
    env: String,
    #[arg(long, default_value = "skiff")]
    domain: String,
    #[arg(long)]
    service: String,
    /// Ready instances the service has when whole.
    #[arg(long)]
    replicas: usize,
    #[arg(long, value_enum)]
    mode: Mode,
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// Query loop period in milliseconds (the measurement's resolution).
    #[arg(long, default_value_t = 5)]
    every_ms: u64,
}

struct Dns {
    sock: UdpSocket,
    name: Name,
    id: u16,
}

impl Dns {
    fn new(server: SocketAddr, name: &str) -> anyhow::Result<Dns> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.connect(server)?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        Ok(Dns {
            sock,
            name: Name::from_ascii(name)?,
            id: 0,
        })
    }

    /// The ports of the SRV answer (`None`: no answer within 100 ms).
    fn srv_ports(&mut self) -> anyhow::Result<Option<Vec<u16>>> {
        self.id = self.id.wrapping_add(1);
        let mut q = Message::new(self.id, MessageType::Query, OpCode::Query);
        q.add_query(Query::query(self.name.clone(), RecordType::SRV));
        self.sock.send(&q.to_vec()?)?;
        let mut buf = [0u8; 4096];
        loop {
            let n = match self.sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(e.into()),
            };
            let m = Message::from_vec(&buf[..n])?;
            if m.metadata.id != self.id {
                continue; // a late answer to an earlier query
            }
            return Ok(Some(
                m.answers
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::SRV(srv) => Some(srv.port),
                        _ => None,
                    })
                    .collect(),
            ));
        }
    }
}

/// A ready instance: (pid, first port).
fn ready_instances(api: &Client, args: &Args) -> anyhow::Result<Vec<(u32, u16, u32)>> {
    let list = api.instances(&StackFilter {
        env: Some(args.env.clone()),
        stack: Some(args.stack.clone()),
    })?;
    Ok(list
        .into_iter()
        .filter(|i| i.id.service == args.service && i.state == InstanceState::Healthy)
        .filter_map(|i| {
            let port = *i.ports.values().next()?;
            Some((i.pid?, port, i.restarts))
        })
        .collect())
}

fn wait_whole(api: &Client, args: &Args, dns: &mut Dns) -> anyhow::Result<Vec<(u32, u16, u32)>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = ready_instances(api, args)?;
        if ready.len() == args.replicas
            && let Some(ports) = dns.srv_ports()?
            && ports.len() == args.replicas
            && ready.iter().all(|(_, p, _)| ports.contains(p))
        {
            return Ok(ready);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} did not get back to {} ready instances in DNS within 60 s",
            args.service,
            args.replicas
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let name = format!(
        "{}.{}.{}.{}.",
        args.service, args.stack, args.env, args.domain
    );
    let mut dns = Dns::new(args.dns, &name)?;
    let api = Client::new(&args.api)?;
    let every = Duration::from_millis(args.every_ms);
    let mut gone = Vec::with_capacity(args.rounds);
    for round in 1..=args.rounds {
        let ready = wait_whole(&api, &args, &mut dns)?;
        // The instance restarted least: its restart back-off is the shortest.
        let &(pid, port, _) = ready
            .iter()
            .min_by_key(|(_, _, restarts)| *restarts)
            .expect("whole means at least one");
        let target = Pid::from_raw(pid as i32);
        let signal = match args.mode {
            Mode::Kill => Signal::SIGKILL,
            Mode::Hang => Signal::SIGSTOP,
        };
        let sent = Instant::now();
        kill(target, signal)?;
        let mut next = sent;
        let took = loop {
            let asked = Instant::now();
            if let Some(ports) = dns.srv_ports()?
                && !ports.contains(&port)
            {
                break asked.duration_since(sent);
            }
            anyhow::ensure!(
                sent.elapsed() < Duration::from_secs(30),
                "round {round}: port {port} still answered 30 s after {signal}"
            );
            next += every;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        };
        if args.mode == Mode::Hang {
            kill(target, Signal::SIGCONT)?;
        }
        println!("round {round}: port {port} gone after {}", ms(took));
        gone.push(took);
    }
    gone.sort_unstable();
    let mode = match args.mode {
        Mode::Kill => "kill -9",
        Mode::Hang => "SIGSTOP (hung)",
    };
    println!(
        "{mode} -> gone from DNS over {} rounds, query every {} ms: p50 {}  p99 {}  max {}",
        gone.len(),
        args.every_ms,
        ms(percentile(&gone, 50.0)),
        ms(percentile(&gone, 99.0)),
        ms(gone[gone.len() - 1]),
    );
    Ok(())
}
