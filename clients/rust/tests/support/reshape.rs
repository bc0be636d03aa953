//! Reshapes a generated data set's Parquet with the project's Python (pyarrow, beside the quiver CLI),
//! for the cases `quiver generate` does not make: string entity keys, a feature added. The expected
//! values are then read from the reshaped Parquet by support::source, as for any data set.

use std::path::Path;
use std::process::Command;

use super::server::quiver_bin;

fn python(script: &str, dir: &Path) {
    let python = quiver_bin().with_file_name("python");
    let out = Command::new(&python).args(["-c", script, dir.to_str().unwrap()]).output().expect("run python");
    assert!(out.status.success(), "{} failed:\n{}", python.display(), String::from_utf8_lossy(&out.stderr));
}

/// Every view keyed by strings instead of int64 ids: "user-<id>" for odd ids, "ユーザー-<id>" for even
/// ones (prefix-sharing, non-ASCII); see [`string_key`].
pub fn to_string_keys(dir: &Path) {
    python(
        r#"
import glob, sys, yaml, pyarrow as pa, pyarrow.parquet as pq
d = sys.argv[1]
doc = yaml.safe_load(open(f"{d}/features.yaml"))
doc["entity"]["key_type"] = "string"
for path in glob.glob(f"{d}/*/*.parquet"):
    t = pq.read_table(path)
    ids = t.column("user_id").to_pylist()
    keys = pa.array([("user-" if i % 2 else "\u30e6\u30fc\u30b6\u30fc-") + str(i) for i in ids], pa.string())
    pq.write_table(t.set_column(t.column_names.index("user_id"), "user_id", keys), path)
yaml.safe_dump(doc, open(f"{d}/features.yaml", "w"), sort_keys=False, allow_unicode=True)
"#,
        dir,
    );
}

/// The string key [`to_string_keys`] gives user `id`.
pub fn string_key(id: i64) -> String {
    format!("{}-{id}", if id % 2 != 0 { "user" } else { "ユーザー" })
}

/// Adds the int32 feature `logins_7d` (id % 50) to the profile view.
pub fn add_profile_feature(dir: &Path) {
    python(
        r#"
import glob, sys, yaml, pyarrow as pa, pyarrow.parquet as pq
d = sys.argv[1]
doc = yaml.safe_load(open(f"{d}/features.yaml"))
next(v for v in doc["views"] if v["name"] == "profile")["features"].append({"name": "logins_7d", "type": "int32"})
for path in glob.glob(f"{d}/profile/*.parquet"):
    t = pq.read_table(path)
    logins = pa.array([i % 50 for i in t.column("user_id").to_pylist()], pa.int32())
    pq.write_table(t.append_column("logins_7d", logins), path)
yaml.safe_dump(doc, open(f"{d}/features.yaml", "w"), sort_keys=False, allow_unicode=True)
"#,
        dir,
    );
}
