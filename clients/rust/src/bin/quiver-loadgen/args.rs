//! Command-line flags (hand-parsed: a dozen flags do not justify a parser dependency).

use std::path::PathBuf;
use std::time::Duration;

pub const USAGE: &str = "\
quiver-loadgen: open-loop load at a fixed rate against quiver, Redis, or a snapshot root read in-process

Requests are scheduled at t0 + i/rate whatever the server does, each runs on its own task, and
latency is measured from the scheduled time, so a slow server shows up as queueing (no
coordinated omission).

USAGE: quiver-loadgen [FLAGS]
  --target quiver|redis|embedded
                               what to load (default quiver); embedded reads --root in this
                               process with the embedded reader (built with feature `embedded`)
  --addr ADDR[,ADDR...]        quiver: http://127.0.0.1:50051 or unix:///path.sock (several, comma-
                               separated, are used round-robin: one per worker socket);
                               redis: redis://127.0.0.1:6379 (default per target)
  --rate R                     requests per second (default 1000)
  --duration SECONDS           measured time (default 10)
  --warmup SECONDS             sent but not measured, before the measured time (default 2)
  --entities-per-request K     entities per request (default 1)
  --users N                    ids drawn uniformly from [0, N) (default 1000000)
  --seed S                     id sequence seed, the same for both targets (default 1)
  --connections C              connections used round-robin (default 1); use at least the
                               number of SO_REUSEPORT server processes
  --views a,b                  quiver and embedded: views to request (default: all)
  --decode                     quiver and embedded: typed values, what get_features returns
                               (quiver: each response decoded; embedded: get_features itself,
                               which decodes stored rows directly); default: the raw response
  --root PATH                  embedded only: the snapshot root (follows PATH/CURRENT)
  --cache-mb MB                embedded only: block cache size (default 256)
  --read-option OPT            embedded only, repeatable: no-verify-checksums, no-fill-cache
                               (RocksDB ReadOptions; default: RocksDB's), no-mmap
                               (pread instead of mmap reads)
  --pin-cpus LIST              pin the worker threads to these CPUs, round-robin, e.g. 1 or 1,3
                               (pacing is not pinned); embedded: the reader threads
  --timeout-ms MS              a request slower than this is an error (default 10000)
  --threads T                  tokio worker threads (default 1; pacing has its own thread);
                               embedded: reader threads, each making its share of the calls
                               itself at their scheduled times (no hand-off between threads)
  --json-out FILE              also write the summary as JSON
  --tls-ca FILE                quiver only: TLS, verifying the server against this CA (PEM);
                               the address is then https://host:port (the default becomes
                               https://127.0.0.1:50051)
  --tls-cert FILE --tls-key FILE
                               quiver only: mutual TLS, presenting this client certificate and
                               key (PEM); needs --tls-ca
  --tls-domain NAME            quiver only: verify the server certificate for NAME instead of
                               the address's host; needs --tls-ca
  -h, --help                   this text
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Quiver,
    Redis,
    Embedded,
}

impl TargetKind {
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Quiver => "quiver",
            TargetKind::Redis => "redis",
            TargetKind::Embedded => "embedded",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Args {
    pub target: TargetKind,
    pub addr: String,
    pub rate: f64,
    pub duration: Duration,
    pub warmup: Duration,
    pub entities_per_request: usize,
    pub users: u64,
    pub seed: u64,
    pub connections: usize,
    pub views: Vec<String>,
    pub timeout: Duration,
    pub threads: usize,
    pub json_out: Option<PathBuf>,
    pub tls: Option<TlsArgs>,
    pub cache_mb: usize,
    pub read_options: Vec<String>,
    pub pin_cpus: Vec<usize>,
    pub decode: bool,
}

/// The --tls-* flags; files are read when connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsArgs {
    pub ca: PathBuf,
    /// Client certificate and key, both or neither.
    pub identity: Option<(PathBuf, PathBuf)>,
    pub domain: Option<String>,
}

/// `Ok(None)` means help was asked for.
pub fn parse(argv: impl IntoIterator<Item = String>) -> Result<Option<Args>, String> {
    let mut target = TargetKind::Quiver;
    let mut addr = None;
    let mut rate: f64 = 1000.0;
    let mut duration: f64 = 10.0;
    let mut warmup: f64 = 2.0;
    let mut k = 1usize;
    let mut users = 1_000_000u64;
    let mut seed = 1u64;
    let mut connections = 1usize;
    let mut views = Vec::new();
    let mut timeout_ms = 10_000u64;
    let mut threads = 1usize;
    let mut json_out = None;
    let (mut tls_ca, mut tls_cert, mut tls_key, mut tls_domain) = (None, None, None, None);
    let mut root = None;
    let mut cache_mb = 256usize;
    let mut read_options = Vec::new();
    let mut pin_cpus = Vec::new();
    let mut decode = false;

    let mut it = argv.into_iter();
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(None);
        }
        if arg == "--decode" {
            decode = true;
            continue;
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next()).ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--target" => {
                target = match value()?.as_str() {
                    "quiver" => TargetKind::Quiver,
                    "redis" => TargetKind::Redis,
                    "embedded" => TargetKind::Embedded,
                    other => return Err(format!("--target {other}: expected quiver, redis or embedded")),
                }
            }
            "--addr" => addr = Some(value()?),
            "--rate" => rate = number(&flag, &value()?)?,
            "--duration" => duration = number(&flag, &value()?)?,
            "--warmup" => warmup = number(&flag, &value()?)?,
            "--entities-per-request" => k = number(&flag, &value()?)?,
            "--users" => users = number(&flag, &value()?)?,
            "--seed" => seed = number(&flag, &value()?)?,
            "--connections" => connections = number(&flag, &value()?)?,
            "--views" => views = value()?.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
            "--timeout-ms" => timeout_ms = number(&flag, &value()?)?,
            "--threads" => threads = number(&flag, &value()?)?,
            "--json-out" => json_out = Some(PathBuf::from(value()?)),
            "--tls-ca" => tls_ca = Some(PathBuf::from(value()?)),
            "--tls-cert" => tls_cert = Some(PathBuf::from(value()?)),
            "--tls-key" => tls_key = Some(PathBuf::from(value()?)),
            "--tls-domain" => tls_domain = Some(value()?),
            "--root" => root = Some(value()?),
            "--cache-mb" => cache_mb = number(&flag, &value()?)?,
            "--read-option" => {
                let opt = value()?;
                if !["no-verify-checksums", "no-fill-cache", "no-mmap"].contains(&opt.as_str()) {
                    return Err(format!("--read-option {opt}: expected no-verify-checksums, no-fill-cache or no-mmap"));
                }
                read_options.push(opt);
            }
            "--pin-cpus" => {
                pin_cpus =
                    value()?.split(',').filter(|s| !s.is_empty()).map(|c| number(&flag, c)).collect::<Result<_, _>>()?
            }
            other => return Err(format!("unknown flag {other}; see --help")),
        }
    }
    if !(rate > 0.0 && rate.is_finite()) {
        return Err(format!("--rate {rate}: must be a positive number"));
    }
    if !(duration > 0.0 && duration.is_finite() && warmup >= 0.0 && warmup.is_finite()) {
        return Err("--duration must be positive and --warmup not negative".into());
    }
    if k == 0 || users == 0 || connections == 0 || threads == 0 {
        return Err("--entities-per-request, --users, --connections and --threads must be at least 1".into());
    }
    if target == TargetKind::Redis && decode {
        return Err("--decode applies to quiver and embedded targets only".into());
    }
    if target == TargetKind::Redis && !views.is_empty() {
        return Err("--views applies to --target quiver only (Redis returns every view of a user)".into());
    }
    let identity = match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err("--tls-cert and --tls-key go together (mutual TLS)".into()),
    };
    let tls = match tls_ca {
        Some(ca) => Some(TlsArgs { ca, identity, domain: tls_domain }),
        None if identity.is_some() || tls_domain.is_some() => {
            return Err("--tls-cert, --tls-key and --tls-domain need --tls-ca (the CA of the server)".into());
        }
        None => None,
    };
    if target != TargetKind::Quiver && tls.is_some() {
        return Err("--tls-* flags apply to --target quiver only".into());
    }
    if target == TargetKind::Embedded {
        if addr.is_some() {
            return Err("--target embedded reads --root PATH, not --addr".into());
        }
        if root.is_none() {
            return Err("--target embedded needs --root PATH (a snapshot root)".into());
        }
    } else if root.is_some() || !read_options.is_empty() {
        return Err("--root and --read-option apply to --target embedded only".into());
    }
    let addr = addr.or(root).unwrap_or_else(|| match target {
        TargetKind::Quiver if tls.is_some() => "https://127.0.0.1:50051".into(),
        TargetKind::Quiver => "http://127.0.0.1:50051".into(),
        TargetKind::Redis => "redis://127.0.0.1:6379".into(),
        TargetKind::Embedded => unreachable!("checked above"),
    });
    Ok(Some(Args {
        target,
        addr,
        rate,
        duration: Duration::from_secs_f64(duration),
        warmup: Duration::from_secs_f64(warmup),
        entities_per_request: k,
        users,
        seed,
        connections,
        views,
        timeout: Duration::from_millis(timeout_ms),
        threads,
        json_out,
        tls,
        cache_mb,
        read_options,
        pin_cpus,
        decode,
    }))
}

fn number<T: std::str::FromStr>(flag: &str, s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("{flag} {s:?}: not a valid number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Result<Option<Args>, String> {
        parse(s.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn flags_in_both_forms() {
        let a = args("--target redis --rate=500 --entities-per-request 100 --connections 4 --json-out x.json")
            .unwrap()
            .unwrap();
        assert_eq!(a.target, TargetKind::Redis);
        assert_eq!(a.addr, "redis://127.0.0.1:6379");
        assert_eq!(a.rate, 500.0);
        assert_eq!(a.entities_per_request, 100);
        assert_eq!(a.connections, 4);
        assert_eq!(a.json_out.unwrap().to_str(), Some("x.json"));
        let a = args("--views profile,ads --addr unix:///tmp/q.sock").unwrap().unwrap();
        assert_eq!(a.views, ["profile", "ads"]);
        assert_eq!(a.addr, "unix:///tmp/q.sock");
        assert_eq!(a.tls, None);
    }

    #[test]
    fn tls_flags() {
        let a = args("--tls-ca ca.pem --tls-cert c.pem --tls-key=k.pem --tls-domain quiver.internal").unwrap().unwrap();
        let tls = a.tls.unwrap();
        assert_eq!(tls.ca.to_str(), Some("ca.pem"));
        assert_eq!(tls.identity, Some(("c.pem".into(), "k.pem".into())));
        assert_eq!(tls.domain.as_deref(), Some("quiver.internal"));
        assert_eq!(a.addr, "https://127.0.0.1:50051", "TLS changes the default address");
        let a = args("--tls-ca ca.pem --addr https://10.0.0.1:7000").unwrap().unwrap();
        assert_eq!(a.addr, "https://10.0.0.1:7000");
        assert_eq!(a.tls.unwrap().identity, None);
        assert!(args("--tls-ca ca.pem --tls-cert c.pem").is_err(), "a certificate without its key");
        assert!(args("--tls-key k.pem --tls-cert c.pem").is_err(), "mutual TLS without a CA");
        assert!(args("--tls-domain x").is_err());
        assert!(args("--target redis --tls-ca ca.pem").is_err());
    }

    #[test]
    fn mistakes_are_reported() {
        assert!(args("--rate 0").is_err());
        assert!(args("--rate").is_err());
        assert!(args("--bogus 1").is_err());
        assert!(args("--target redis --views a").is_err());
        assert!(args("--help").unwrap().is_none());
        assert!(args("--target embedded").is_err(), "no --root");
        assert!(args("--target embedded --root r --addr x").is_err());
        assert!(args("--root r").is_err(), "--root for a server target");
        assert!(args("--target embedded --root r --read-option fast").is_err());
    }

    #[test]
    fn embedded_flags() {
        let a = args(
            "--target embedded --root /srv/root --cache-mb 64 --read-option no-fill-cache --pin-cpus 1,3 --decode",
        )
        .unwrap()
        .unwrap();
        assert_eq!(a.target, TargetKind::Embedded);
        assert_eq!(a.addr, "/srv/root");
        assert_eq!(a.cache_mb, 64);
        assert_eq!(a.read_options, ["no-fill-cache"]);
        assert_eq!(a.pin_cpus, [1, 3]);
        assert!(a.decode);
    }
}
