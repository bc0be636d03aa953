//! Runs the real `quiver` CLI: generate a data set, load a snapshot, serve it. The server is
//! killed when its guard drops, also when a test panics.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use quiver_client::{ClientOptions, QuiverClient};

pub const USERS: u64 = 2000;
pub const SEED: u64 = 7;

/// The quiver CLI: $QUIVER_BIN, else the project's virtualenv.
pub fn quiver_bin() -> PathBuf {
    let bin = std::env::var_os("QUIVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/quiver"));
    assert!(
        bin.is_file(),
        "quiver CLI not found at {}: run `make setup` at the repository root, or set QUIVER_BIN",
        bin.display()
    );
    bin
}

pub fn run(args: &[&str]) -> String {
    let out = Command::new(quiver_bin()).args(args).output().expect("run quiver");
    assert!(
        out.status.success(),
        "quiver {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The generated source data and the snapshot root loaded from it, made once per test binary.
pub struct Dataset {
    pub dir: PathBuf,
    pub root: PathBuf,
    pub version: String,
}

impl Dataset {
    pub fn features_yaml(&self) -> PathBuf {
        self.dir.join("features.yaml")
    }
}

pub fn dataset() -> &'static Dataset {
    static DATASET: OnceLock<Dataset> = OnceLock::new();
    DATASET.get_or_init(|| {
        // One fixed folder per test binary, emptied first, so repeated runs do not pile up data
        // and two binaries never share one.
        let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("quiver-e2e").join(env!("CARGO_CRATE_NAME"));
        let _ = std::fs::remove_dir_all(&base);
        let dir = base.join("source");
        let root = base.join("root");
        std::fs::create_dir_all(&base).unwrap();
        run(&["generate", "--events-per-user", "0", "--users", &USERS.to_string(), "--out", dir.to_str().unwrap(), "--seed", &SEED.to_string()]);
        let version = load(&dir.join("features.yaml"), &root);
        Dataset { dir, root, version }
    })
}

/// `quiver generate --users USERS` into `dir`.
pub fn generate(dir: &Path, seed: u64) {
    run(&["generate", "--events-per-user", "0", "--users", &USERS.to_string(), "--out", dir.to_str().unwrap(), "--seed", &seed.to_string()]);
}

/// `quiver load`; returns the version id it published.
pub fn load(features: &Path, root: &Path) -> String {
    load_with(features, root, &[])
}

/// `quiver load --as-of`: two loads into one root need distinct as-of times, or loads within the same
/// second could publish one version id.
pub fn load_at(features: &Path, root: &Path, as_of: &str) -> String {
    load_with(features, root, &["--as-of", as_of])
}

fn load_with(features: &Path, root: &Path, extra: &[&str]) -> String {
    let mut args = vec!["load", "--features", features.to_str().unwrap(), "--root", root.to_str().unwrap()];
    args.extend(extra);
    let out = run(&args);
    // stdout is the version id alone (the progress notes go to stderr).
    let version = out.lines().rev().map(str::trim).find(|l| !l.is_empty()).unwrap_or_default().to_owned();
    assert!(!version.is_empty(), "`quiver load` printed no version id");
    version
}

/// Tests share one machine with two cores and one snapshot root: run their servers one at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running `quiver serve`, killed (with its worker processes) on drop.
pub struct Server {
    child: Child,
    pub tcp: String,
    pub uds: String,
    uds_path: PathBuf,
}

impl Server {
    pub fn start(data: &Dataset) -> Server {
        Self::start_on(&data.root, &[])
    }

    /// Serves `root`, with extra `quiver serve` flags.
    pub fn start_on(root: &Path, extra: &[&str]) -> Server {
        let port = free_port();
        let uds_path = std::env::temp_dir().join(format!("quiver-rs-{}-{port}.sock", std::process::id()));
        let _ = std::fs::remove_file(&uds_path);
        let log = std::fs::File::create(root.with_extension(format!("serve-{port}.log"))).unwrap();
        let child = Command::new(quiver_bin())
            .args(["serve", "--root", root.to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")])
            .args(["--uds", uds_path.to_str().unwrap(), "--workers", "1", "--metrics-port", "0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group, so the drop guard can stop the workers it spawns too.
            .process_group(0)
            .spawn()
            .expect("start quiver serve");
        Server {
            child,
            tcp: format!("http://127.0.0.1:{port}"),
            uds: format!("unix://{}", uds_path.display()),
            uds_path,
        }
    }

    /// Whether the server process is still running.
    #[allow(dead_code)] // used by tls.rs only
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// A client once the server answers GetSnapshotInfo with a current version.
    pub async fn ready_client(&mut self, addr: &str) -> QuiverClient {
        self.ready_client_with(addr, &ClientOptions::default()).await
    }

    /// Like [`Server::ready_client`], connecting with `options` (TLS, say).
    pub async fn ready_client_with(&mut self, addr: &str, options: &ClientOptions) -> QuiverClient {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("quiver serve exited early with {status}; see the serve-*.log beside the snapshot root");
            }
            match QuiverClient::connect_with(addr, options).await {
                Ok(client) => match client.snapshot_info().await {
                    Ok(info) if !info.current_version.is_empty() => return client,
                    Ok(_) => last = "no current version yet".into(),
                    Err(e) => last = e.to_string(),
                },
                Err(e) => last = e.to_string(),
            }
            assert!(Instant::now() < deadline, "quiver serve at {addr} not ready after 60 s: {last}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: signalling the process group this guard created; no memory is involved.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: as above; SIGKILL whatever is left of the group (a no-op when it is gone).
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

fn free_port() -> u16 {
    // The server sets SO_REUSEPORT, so a port in use would not fail its bind: take one the kernel
    // just handed out and released.
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
