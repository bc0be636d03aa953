//! The summary of a run, as text and as JSON (hand-written: a dozen numbers need no serde).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::args::Args;

pub struct Summary {
    target: &'static str,
    addr: String,
    rate: f64,
    duration_s: f64,
    warmup_s: f64,
    entities_per_request: usize,
    users: u64,
    seed: u64,
    connections: usize,
    views: Vec<String>,
    decode: bool,
    /// Embedded only: block cache MB and read options.
    cache_mb: usize,
    read_options: Vec<String>,
    pin_cpus: Vec<usize>,
    count: u64,
    errors: u64,
    achieved_rate: f64,
    /// p50, p90, p99, p99.9, max, in microseconds from the scheduled send time.
    latency: [u64; 5],
    mean_us: f64,
    pacer_lag_p99_us: u64,
    pacer_lag_max_us: u64,
    error_kinds: BTreeMap<String, u64>,
    /// This process's resident set at the end and at its peak (kB): for `--target embedded` the
    /// reader's memory (block cache + RocksDB's fixed overhead + the generator's own).
    rss_kb: u64,
    rss_peak_kb: u64,
    /// The private part of the resident set at the end (kB): VmRSS also counts the page-cache
    /// pages of the SST files the embedded reader maps, which every process on the node shares.
    rss_anon_kb: u64,
}

impl Summary {
    pub fn new(
        args: &Args,
        latency: &Histogram<u64>,
        lag: &Histogram<u64>,
        count: u64,
        errors: u64,
        elapsed: Duration,
        error_kinds: BTreeMap<String, u64>,
    ) -> Self {
        let q = |h: &Histogram<u64>, p: f64| if h.is_empty() { 0 } else { h.value_at_quantile(p) };
        Summary {
            target: args.target.name(),
            addr: args.addr.clone(),
            rate: args.rate,
            duration_s: args.duration.as_secs_f64(),
            warmup_s: args.warmup.as_secs_f64(),
            entities_per_request: args.entities_per_request,
            users: args.users,
            seed: args.seed,
            connections: args.connections,
            views: args.views.clone(),
            decode: args.decode,
            cache_mb: args.cache_mb,
            read_options: args.read_options.clone(),
            pin_cpus: args.pin_cpus.clone(),
            count,
            errors,
            // Completed requests over the time from the start of measurement to the last completion.
            achieved_rate: (count + errors) as f64 / elapsed.as_secs_f64(),
            latency: [q(latency, 0.5), q(latency, 0.9), q(latency, 0.99), q(latency, 0.999), latency.max()],
            mean_us: if latency.is_empty() { 0.0 } else { latency.mean() },
            pacer_lag_p99_us: q(lag, 0.99),
            pacer_lag_max_us: lag.max(),
            error_kinds,
            rss_kb: status_kb("VmRSS:"),
            rss_peak_kb: status_kb("VmHWM:"),
            rss_anon_kb: status_kb("RssAnon:"),
        }
    }

    pub fn text(&self) -> String {
        let [p50, p90, p99, p999, max] = self.latency;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} {} rate={} duration={}s warmup={}s k={} users={} seed={} connections={}{}",
            self.target,
            self.addr,
            self.rate,
            self.duration_s,
            self.warmup_s,
            self.entities_per_request,
            self.users,
            self.seed,
            self.connections,
            if self.views.is_empty() { String::new() } else { format!(" views={}", self.views.join(",")) }
        );
        let _ = writeln!(s, "count={} errors={} achieved_rate={:.1}/s", self.count, self.errors, self.achieved_rate);
        let _ = writeln!(s, "latency_us p50={p50} p90={p90} p99={p99} p99.9={p999} max={max} mean={:.1}", self.mean_us);
        let _ = writeln!(s, "pacer_lag_us p99={} max={}", self.pacer_lag_p99_us, self.pacer_lag_max_us);
        let _ = writeln!(s, "rss_kb={} peak={} anon={}", self.rss_kb, self.rss_peak_kb, self.rss_anon_kb);
        for (kind, n) in &self.error_kinds {
            let _ = writeln!(s, "error {n}x: {kind}");
        }
        s
    }

    pub fn json(&self) -> String {
        let [p50, p90, p99, p999, max] = self.latency;
        let views: Vec<String> = self.views.iter().map(|v| quote(v)).collect();
        let kinds: Vec<String> = self.error_kinds.iter().map(|(k, n)| format!("{}: {n}", quote(k))).collect();
        let read_options: Vec<String> = self.read_options.iter().map(|o| quote(o)).collect();
        let pins: Vec<String> = self.pin_cpus.iter().map(|c| c.to_string()).collect();
        format!(
            "{{\"target\": {}, \"addr\": {}, \"rate\": {}, \"duration_s\": {}, \"warmup_s\": {}, \
             \"entities_per_request\": {}, \"users\": {}, \"seed\": {}, \"connections\": {}, \"views\": [{}], \
             \"decode\": {}, \"cache_mb\": {}, \"read_options\": [{}], \"pin_cpus\": [{}], \
             \"count\": {}, \"errors\": {}, \"achieved_rate\": {:.3}, \
             \"p50_us\": {p50}, \"p90_us\": {p90}, \"p99_us\": {p99}, \"p99_9_us\": {p999}, \"max_us\": {max}, \
             \"mean_us\": {:.3}, \"pacer_lag_p99_us\": {}, \"pacer_lag_max_us\": {}, \"rss_kb\": {}, \"rss_peak_kb\": {}, \
             \"rss_anon_kb\": {}, \"error_kinds\": {{{}}}}}\n",
            quote(self.target),
            quote(&self.addr),
            self.rate,
            self.duration_s,
            self.warmup_s,
            self.entities_per_request,
            self.users,
            self.seed,
            self.connections,
            views.join(", "),
            self.decode,
            self.cache_mb,
            read_options.join(", "),
            pins.join(", "),
            self.count,
            self.errors,
            self.achieved_rate,
            self.mean_us,
            self.pacer_lag_p99_us,
            self.pacer_lag_max_us,
            self.rss_kb,
            self.rss_peak_kb,
            self.rss_anon_kb,
            kinds.join(", "),
        )
    }
}

/// A `/proc/self/status` field in kB (0 where there is no /proc).
fn status_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A JSON string literal.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes_strings() {
        assert_eq!(quote("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
