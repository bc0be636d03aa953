//! quiver-loadgen: open-loop load generator for quiver (over gRPC, or embedded in this process)
//! and, for comparison, Redis. See `args::USAGE`.

mod args;
mod report;
mod target;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::mpsc;

use crate::args::Args;
use crate::report::Summary;
use crate::target::Target;

fn main() -> ExitCode {
    let args = match args::parse(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            print!("{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("quiver-loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(args.threads).enable_all();
    if !args.pin_cpus.is_empty() {
        let cpus = args.pin_cpus.clone();
        let next = std::sync::atomic::AtomicUsize::new(0);
        builder.on_thread_start(move || {
            let cpu = cpus[next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % cpus.len()];
            if let Err(e) = pin_current_thread(cpu) {
                eprintln!("quiver-loadgen: cannot pin a worker thread to CPU {cpu}: {e}");
            }
        });
    }
    let runtime = builder.build().expect("tokio runtime");
    match runtime.block_on(run(&args)) {
        Ok(summary) => {
            print!("{}", summary.text());
            if let Some(path) = &args.json_out
                && let Err(e) = std::fs::write(path, summary.json())
            {
                eprintln!("quiver-loadgen: cannot write {}: {e}", path.display());
                return ExitCode::from(1);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("quiver-loadgen: {e}");
            ExitCode::from(2)
        }
    }
}

/// What one request's task reports back.
struct Sample {
    scheduled: Instant,
    done: Instant,
    /// How late the pacer dispatched the request; already inside the latency, reported apart to
    /// show when the generator itself is the bottleneck.
    lag: Duration,
    result: Result<(), String>,
}

async fn run(args: &Args) -> Result<Summary, String> {
    let target = Arc::new(Target::connect(args).await?);
    #[cfg(feature = "embedded")]
    if matches!(*target, Target::Embedded { .. }) {
        return run_inline(args, &target);
    }
    let total = ((args.warmup + args.duration).as_secs_f64() * args.rate).ceil() as u64;
    let t0 = Instant::now() + Duration::from_millis(20);
    let measure_from = t0 + args.warmup;
    let (tx, mut rx) = mpsc::unbounded_channel::<Sample>();

    // Pacing runs on its own OS thread: thread::sleep wakes within tens of microseconds, while
    // tokio's timer has millisecond granularity and would bunch requests into bursts.
    let runtime = tokio::runtime::Handle::current();
    let (rate, k, timeout) = (args.rate, args.entities_per_request, args.timeout);
    let mut ids = IdStream::new(args.seed, args.users);
    let pacer_target = Arc::clone(&target);
    let pacer = std::thread::Builder::new()
        .name("pacer".into())
        .spawn(move || {
            for i in 0..total {
                let scheduled = t0 + Duration::from_secs_f64(i as f64 / rate);
                let now = Instant::now();
                if scheduled > now {
                    std::thread::sleep(scheduled - now);
                }
                let lag = Instant::now().saturating_duration_since(scheduled);
                let batch: Vec<u64> = (0..k).map(|_| ids.next_id()).collect();
                let handle = pacer_target.handle(i);
                let tx = tx.clone();
                runtime.spawn(async move {
                    let result = match tokio::time::timeout(timeout, handle.send(batch)).await {
                        Ok(r) => r,
                        Err(_) => Err(format!("timeout after {timeout:?}")),
                    };
                    let _ = tx.send(Sample { scheduled, done: Instant::now(), lag, result });
                });
            }
        })
        .map_err(|e| format!("cannot start the pacing thread: {e}"))?;

    let mut latency = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds");
    let mut lag = latency.clone();
    let (mut count, mut errors) = (0u64, 0u64);
    let mut error_kinds: BTreeMap<String, u64> = BTreeMap::new();
    let mut last_done = measure_from;
    // Ends when the pacer and every request task have dropped their senders.
    while let Some(s) = rx.recv().await {
        if s.scheduled < measure_from {
            continue;
        }
        latency.saturating_record(micros(s.done.saturating_duration_since(s.scheduled)));
        lag.saturating_record(micros(s.lag));
        last_done = last_done.max(s.done);
        match s.result {
            Ok(()) => count += 1,
            Err(e) => {
                errors += 1;
                if error_kinds.len() < 20 || error_kinds.contains_key(&e) {
                    *error_kinds.entry(e).or_default() += 1;
                }
            }
        }
    }
    pacer.join().map_err(|_| "the pacing thread panicked".to_string())?;
    let elapsed = last_done.saturating_duration_since(measure_from).max(args.duration);
    Ok(Summary::new(args, &latency, &lag, count, errors, elapsed, error_kinds))
}

/// What one reader thread of `run_inline` measured.
#[cfg(feature = "embedded")]
struct Tally {
    latency: Histogram<u64>,
    lag: Histogram<u64>,
    count: u64,
    errors: u64,
    error_kinds: BTreeMap<String, u64>,
    /// When the first measured call started: past the measured window's start when the warm-up's
    /// calls ran late, so the achieved rate of a saturated reader is its throughput.
    first_start: Option<Instant>,
    last_done: Instant,
}

/// `--target embedded`: the reads run on `--threads` reader threads (pinned round-robin to
/// `--pin-cpus`), each making its share of the schedule's calls itself, as an application's
/// request threads call the reader, so no hand-off between threads is measured. A call starts at
/// its scheduled time, or when its thread's previous call ends if that is later; its latency then
/// runs from the scheduled time, so the wait behind a busy reader counts as it would behind a busy
/// server. A thread sleeps to within `SPIN` of the time and spins the rest, because a timer
/// wake-up (tens of microseconds late on a VM) is the generator's delay, not the reader's; how late
/// each call started is reported as pacer lag.
#[cfg(feature = "embedded")]
fn run_inline(args: &Args, target: &Arc<Target>) -> Result<Summary, String> {
    const SPIN: Duration = Duration::from_micros(100);
    let total = ((args.warmup + args.duration).as_secs_f64() * args.rate).ceil() as u64;
    let t0 = Instant::now() + Duration::from_millis(20);
    let measure_from = t0 + args.warmup;
    let threads = args.threads as u64;
    let tallies = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let cpu = (!args.pin_cpus.is_empty()).then(|| args.pin_cpus[t as usize % args.pin_cpus.len()]);
                scope.spawn(move || -> Result<Tally, String> {
                    if let Some(cpu) = cpu {
                        pin_current_thread(cpu).map_err(|e| format!("cannot pin a reader thread to CPU {cpu}: {e}"))?;
                    }
                    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
                    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
                    let histogram = || Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("bounds");
                    let mut tally = Tally {
                        latency: histogram(),
                        lag: histogram(),
                        count: 0,
                        errors: 0,
                        error_kinds: BTreeMap::new(),
                        first_start: None,
                        last_done: measure_from,
                    };
                    // Every thread draws every request's ids, so request i asks for the same users
                    // as on the other targets.
                    let mut ids = IdStream::new(args.seed, args.users);
                    let mut free_at = t0;
                    for i in 0..total {
                        let batch: Vec<u64> = (0..args.entities_per_request).map(|_| ids.next_id()).collect();
                        if i % threads != t {
                            continue;
                        }
                        let scheduled = t0 + Duration::from_secs_f64(i as f64 / args.rate);
                        wait_until(scheduled, SPIN);
                        let start = Instant::now();
                        let mut result = target.handle(i).call(batch);
                        let done = Instant::now();
                        let from = if free_at > scheduled { scheduled } else { start };
                        free_at = done;
                        if scheduled < measure_from {
                            continue;
                        }
                        if result.is_ok() && done - from > args.timeout {
                            result = Err(format!("timeout after {:?}", args.timeout));
                        }
                        tally.first_start.get_or_insert(start);
                        tally.latency.saturating_record(micros(done - from));
                        tally.lag.saturating_record(micros(start.saturating_duration_since(scheduled)));
                        tally.last_done = tally.last_done.max(done);
                        match result {
                            Ok(()) => tally.count += 1,
                            Err(e) => {
                                tally.errors += 1;
                                if tally.error_kinds.len() < 20 || tally.error_kinds.contains_key(&e) {
                                    *tally.error_kinds.entry(e).or_default() += 1;
                                }
                            }
                        }
                    }
                    Ok(tally)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().map_err(|_| "a reader thread panicked".to_string())?)
            .collect::<Result<Vec<Tally>, String>>()
    })?;
    let mut all = tallies.into_iter();
    let mut sum = all.next().ok_or("no reader threads")?;
    for t in all {
        sum.latency.add(&t.latency).map_err(|e| e.to_string())?;
        sum.lag.add(&t.lag).map_err(|e| e.to_string())?;
        sum.count += t.count;
        sum.errors += t.errors;
        for (k, n) in t.error_kinds {
            *sum.error_kinds.entry(k).or_default() += n;
        }
        sum.last_done = sum.last_done.max(t.last_done);
        sum.first_start = match (sum.first_start, t.first_start) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    let began = sum.first_start.unwrap_or(measure_from).max(measure_from);
    let elapsed = sum.last_done.saturating_duration_since(began).max(args.duration);
    Ok(Summary::new(args, &sum.latency, &sum.lag, sum.count, sum.errors, elapsed, sum.error_kinds))
}

/// Sleeps until `spin` before `t`, then spins to it.
#[cfg(feature = "embedded")]
fn wait_until(t: Instant, spin: Duration) {
    loop {
        let now = Instant::now();
        if now >= t {
            return;
        }
        if t - now > spin {
            std::thread::sleep(t - now - spin);
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Pins the calling thread to one CPU (Linux sched_setaffinity).
fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity only read and
    // write that local set, and pid 0 means the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn micros(d: Duration) -> u64 {
    d.as_micros().try_into().unwrap_or(u64::MAX).max(1)
}

/// Entity ids uniform in [0, users): SplitMix64 scaled by multiply-shift. Deterministic per seed,
/// so runs against quiver and Redis ask for the same users in the same order.
struct IdStream {
    state: u64,
    users: u64,
}

impl IdStream {
    fn new(seed: u64, users: u64) -> Self {
        IdStream { state: seed, users }
    }

    fn next_id(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((u128::from(z) * u128::from(self.users)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_in_range_and_spread() {
        let a: Vec<u64> = {
            let mut s = IdStream::new(7, 1000);
            (0..10_000).map(|_| s.next_id()).collect()
        };
        let mut s = IdStream::new(7, 1000);
        assert!(a.iter().all(|&id| id == s.next_id() && id < 1000));
        let distinct: std::collections::HashSet<_> = a.iter().collect();
        assert!(distinct.len() > 990, "{}", distinct.len());
        let mut other = IdStream::new(8, 1000);
        assert_ne!(a[..10], (0..10).map(|_| other.next_id()).collect::<Vec<_>>()[..]);
        let mut one = IdStream::new(1, 1);
        assert!((0..100).all(|_| one.next_id() == 0));
    }
}
