//! manifest.json of a format-2 version (snapshot/FORMAT.md): parsed, checked against its own
//! content checksum and the files beside it, and turned into the [`Schema`] a server's GetSchema
//! would answer (service/servicer.py `schema_response`), so rows decode identically.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::error::SnapshotError;
use crate::proto;
use crate::schema::{FeatureType, Schema, group_field_of};

/// The snapshot format this reader implements.
pub const FORMAT_VERSION: u32 = 2;

#[derive(Debug, Clone)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub checksum: String,
}

/// One storage group: its views in the order of the ViewRows in each stored EntityRow.
#[derive(Debug, Clone)]
pub struct GroupEntry {
    pub name: String,
    pub views: Vec<String>,
    /// live entities: keys in at least one of the group's views
    pub rows: u64,
    /// entries in the group's SST files: `rows`, or for a delta group the base's and the delta's
    pub entries: u64,
}

#[derive(Debug)]
pub struct Manifest {
    pub version: String,
    pub created: String,
    pub as_of: String,
    pub schema: Arc<Schema>,
    /// In the order of their first view in the schema.
    pub groups: Vec<GroupEntry>,
    pub view_rows: HashMap<String, u64>,
    pub files: Vec<FileEntry>,
    pub content_checksum: String,
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Manifest, SnapshotError> {
        let bad = |problem: String| SnapshotError::Manifest { path: path.to_owned(), problem };
        let bytes = std::fs::read(path).map_err(|e| bad(format!("unreadable: {e}")))?;
        let json: Json = serde_json::from_slice(&bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
        Self::from_json(path, &json)
    }

    fn from_json(path: &Path, d: &Json) -> Result<Manifest, SnapshotError> {
        let bad = |problem: String| SnapshotError::Manifest { path: path.to_owned(), problem };
        let format = d.get("format_version");
        if format.and_then(Json::as_u64) != Some(u64::from(FORMAT_VERSION)) {
            let found = format.map_or_else(|| "missing".to_owned(), Json::to_string);
            return Err(SnapshotError::UnknownFormat { path: path.to_owned(), found, expected: FORMAT_VERSION });
        }
        let version = string(d, "version").map_err(&bad)?;
        let files = array(d, "files")
            .map_err(&bad)?
            .iter()
            .map(|f| {
                Ok(FileEntry {
                    path: string(f, "path")?,
                    size: f.get("size").and_then(Json::as_u64).ok_or("a file without a size")?,
                    checksum: string(f, "checksum")?,
                })
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(&bad)?;
        let content_checksum = string(d, "content_checksum").map_err(&bad)?;
        if content_checksum != content_checksum_of(&files) {
            return Err(bad("content_checksum does not match its file list".into()));
        }
        let view_rows = object(d, "views")
            .map_err(&bad)?
            .iter()
            .map(|(name, v)| Ok((name.clone(), v.get("rows").and_then(Json::as_u64).ok_or("a view without rows")?)))
            .collect::<Result<HashMap<_, _>, String>>()
            .map_err(&bad)?;
        let schema_json = d.get("schema").ok_or_else(|| bad("no schema".into()))?;
        let (schema, view_groups) =
            schema_of(&version, schema_json, &view_rows).map_err(|e| bad(format!("schema: {e}")))?;
        let listed = object(d, "groups").map_err(&bad)?;
        let mut groups: Vec<GroupEntry> = Vec::new();
        for (view, group) in schema.views.iter().zip(&view_groups) {
            match groups.iter_mut().find(|g| &g.name == group) {
                Some(g) => g.views.push(view.name.clone()),
                None => {
                    groups.push(GroupEntry { name: group.clone(), views: vec![view.name.clone()], rows: 0, entries: 0 })
                }
            }
        }
        if listed.len() != groups.len() {
            return Err(bad(format!("groups lists {} groups, the schema's views name {}", listed.len(), groups.len())));
        }
        for g in &mut groups {
            let entry = listed.get(&g.name).ok_or_else(|| bad(format!("group {} is not in groups", g.name)))?;
            let views: Vec<&str> = array(entry, "views").map_err(&bad)?.iter().filter_map(Json::as_str).collect();
            if views != g.views {
                return Err(bad(format!("group {} lists views {views:?}, the schema gives {:?}", g.name, g.views)));
            }
            g.rows =
                entry.get("rows").and_then(Json::as_u64).ok_or_else(|| bad(format!("group {}: no rows", g.name)))?;
            // a delta group (FORMAT.md "Delta versions"): the base's entries and the delta's, tombstones included
            g.entries = match entry.get("delta").filter(|d| !d.is_null()) {
                None => g.rows,
                Some(d) => {
                    let n = |k: &str| {
                        d.get(k)
                            .and_then(Json::as_u64)
                            .ok_or_else(|| bad(format!("group {}: delta has no {k}", g.name)))
                    };
                    n("base_rows")? + n("keys")?
                }
            };
        }
        Ok(Manifest {
            created: string(d, "created").map_err(&bad)?,
            as_of: string(d, "as_of").map_err(&bad)?,
            version,
            schema: Arc::new(schema),
            groups,
            view_rows,
            files,
            content_checksum,
        })
    }

    pub fn size_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Problems with the files under `prefix` beside this manifest: missing, wrong size, or (with
    /// `full`) a sha256 that differs, for each file the version's `verified.json` does not prove
    /// (FORMAT.md: the same device, inode, size and mtime as when its writer proved that checksum).
    /// Returns the problems and how many files were hashed.
    pub fn verify_files(&self, version_dir: &Path, full: bool, prefix: &str) -> (Vec<String>, usize) {
        let proven = if full { read_record(version_dir) } else { HashMap::new() };
        let mut problems = Vec::new();
        let mut hashed = 0;
        for f in self.files.iter().filter(|f| f.path.starts_with(prefix)) {
            let p = version_dir.join(&f.path);
            match std::fs::metadata(&p) {
                Err(_) => problems.push(format!("{}: missing", f.path)),
                Ok(m) if m.len() != f.size => {
                    problems.push(format!("{}: {} bytes, manifest says {}", f.path, m.len(), f.size))
                }
                Ok(m) if full && proven.get(&file_key(&m)) == Some(&f.checksum) => {}
                Ok(_) if full => match {
                    hashed += 1;
                    file_checksum(&p)
                } {
                    Ok(sum) if sum == f.checksum => {}
                    Ok(_) => problems.push(format!("{}: checksum differs from the manifest", f.path)),
                    Err(e) => problems.push(format!("{}: unreadable: {e}", f.path)),
                },
                Ok(_) => {}
            }
        }
        (problems, hashed)
    }
}

/// (st_dev, st_ino, st_size, st_mtime in ns): the file a checksum was proven on.
type FileKey = (u64, u64, u64, i128);

fn file_key(m: &std::fs::Metadata) -> FileKey {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino(), m.size(), i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()))
}

/// verified.json beside a version's manifest (FORMAT.md); absent or unreadable, it proves nothing.
fn read_record(version_dir: &Path) -> HashMap<FileKey, String> {
    let mut out = HashMap::new();
    let Ok(bytes) = std::fs::read(version_dir.join("verified.json")) else { return out };
    let Ok(doc) = serde_json::from_slice::<Json>(&bytes) else { return out };
    for f in doc.get("files").and_then(Json::as_array).into_iter().flatten() {
        let Some(f) = f.as_array() else { continue };
        let num = |i: usize| f.get(i).and_then(Json::as_u64);
        let mtime = f.get(3).and_then(Json::as_i64);
        if let (Some(dev), Some(ino), Some(size), Some(mtime), Some(sum), 5) =
            (num(0), num(1), num(2), mtime, f.get(4).and_then(Json::as_str), f.len())
        {
            out.insert((dev, ino, size, i128::from(mtime)), sum.to_owned());
        }
    }
    out
}

/// `sha256:` + hex over `path \0 size \0 checksum \n` of the files sorted by path (FORMAT.md).
fn content_checksum_of(files: &[FileEntry]) -> String {
    let mut sorted: Vec<&FileEntry> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut h = Sha256::new();
    for f in sorted {
        h.update(format!("{}\0{}\0{}\n", f.path, f.size, f.checksum).as_bytes());
    }
    format!("sha256:{}", hex(&h.finalize()))
}

fn file_checksum(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex(&h.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn string(d: &Json, key: &str) -> Result<String, String> {
    d.get(key).and_then(Json::as_str).map(str::to_owned).ok_or_else(|| format!("missing string {key:?}"))
}

fn array<'a>(d: &'a Json, key: &str) -> Result<&'a Vec<Json>, String> {
    d.get(key).and_then(Json::as_array).ok_or_else(|| format!("missing list {key:?}"))
}

fn object<'a>(d: &'a Json, key: &str) -> Result<&'a serde_json::Map<String, Json>, String> {
    d.get(key).and_then(Json::as_object).ok_or_else(|| format!("missing mapping {key:?}"))
}

fn feature_type(name: &str) -> Option<FeatureType> {
    Some(match name {
        "bool" => FeatureType::Bool,
        "int32" => FeatureType::Int32,
        "int64" => FeatureType::Int64,
        "float32" => FeatureType::Float32,
        "float64" => FeatureType::Float64,
        "string" => FeatureType::String,
        "bytes" => FeatureType::Bytes,
        "list<float32>" => FeatureType::Float32List,
        "list<int64>" => FeatureType::Int64List,
        _ => return None,
    })
}

/// The schema as GetSchema would give it, and each view's storage group.
fn schema_of(version: &str, s: &Json, view_rows: &HashMap<String, u64>) -> Result<(Schema, Vec<String>), String> {
    let entity = s.get("entity").ok_or("no entity")?;
    let mut views = Vec::new();
    let mut groups = Vec::new();
    for v in s.get("views").and_then(Json::as_array).ok_or("no views")? {
        let name = string(v, "name")?;
        let mut features = Vec::new();
        let mut per_group: HashMap<u32, u32> = HashMap::new();
        for (position, f) in
            v.get("features").and_then(Json::as_array).ok_or("a view without features")?.iter().enumerate()
        {
            let fname = string(f, "name")?;
            let ty_name = string(f, "type")?;
            let ty = feature_type(&ty_name).ok_or_else(|| format!("view {name}, feature {fname}: type {ty_name}"))?;
            let group_field = group_field_of(ty).expect("every named type has a group field");
            let index = per_group.entry(group_field).or_default();
            features.push(proto::Feature {
                name: fname,
                r#type: ty as i32,
                list_length: f.get("length").and_then(Json::as_u64).unwrap_or(0) as u32,
                group_field,
                group_index: *index,
                position: position as u32,
                default_json: match f.get("default") {
                    None | Some(Json::Null) => String::new(),
                    Some(d) => python_json(d),
                },
            });
            *index += 1;
        }
        groups.push(v.get("group").and_then(Json::as_str).unwrap_or("default").to_owned());
        views.push(proto::View {
            rows: *view_rows.get(&name).ok_or_else(|| format!("view {name} has no entry in views"))?,
            event_timestamp_column: v.get("event_timestamp").and_then(Json::as_str).unwrap_or("").to_owned(),
            name,
            features,
        });
    }
    let schema = Schema::from_proto(proto::GetSchemaResponse {
        version: version.to_owned(),
        entity_name: string(entity, "name")?,
        entity_key_type: string(entity, "key_type")?,
        views,
    })
    .map_err(|e| e.to_string())?;
    Ok((schema, groups))
}

/// A JSON value as Python's `json.dumps` writes it (", " and ": " separators, ASCII only, floats
/// as `repr`): the server fills `Feature.default_json` that way, and both readers must agree.
pub fn python_json(v: &Json) -> String {
    match v {
        Json::Null => "null".into(),
        Json::Bool(b) => (if *b { "true" } else { "false" }).into(),
        Json::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) => python_float(f),
            _ => n.to_string(),
        },
        Json::String(s) => python_string(s),
        Json::Array(items) => format!("[{}]", items.iter().map(python_json).collect::<Vec<_>>().join(", ")),
        Json::Object(map) => format!(
            "{{{}}}",
            map.iter().map(|(k, v)| format!("{}: {}", python_string(k), python_json(v))).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Python's `repr(float)`: shortest round-trip digits, positional for decimal exponents in
/// [-4, 16), else `d.ddde+XX`.
fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return (if f > 0.0 { "Infinity" } else { "-Infinity" }).into();
    }
    let sci = format!("{f:e}"); // e.g. "-1.25e-7", shortest round-trip digits
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("{:e} exponent is an integer");
    let (sign, mantissa) = mantissa.strip_prefix('-').map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        let body = if point <= 0 {
            format!("0.{}{digits}", "0".repeat((-point) as usize))
        } else if point as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
        };
        format!("{sign}{body}")
    } else {
        let m = if digits.len() == 1 { digits } else { format!("{}.{}", &digits[..1], &digits[1..]) };
        format!("{sign}{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    }
}

fn python_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
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
    fn floats_and_strings_as_python_writes_them() {
        // Expected values from CPython 3: json.dumps(x)
        for (x, want) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123456789012345.0, "123456789012345.0"),
            (1e15, "1000000000000000.0"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.25e-7, "1.25e-07"),
            (-0.0, "-0.0"),
            (1e300, "1e+300"),
        ] {
            assert_eq!(python_float(x), want, "{x}");
        }
        let v: Json = serde_json::from_str(r#"["free", "zoë\n", 3, 2.0, true, null, "日"]"#).unwrap();
        assert_eq!(python_json(&v), r#"["free", "zo\u00eb\n", 3, 2.0, true, null, "\u65e5"]"#);
        assert_eq!(python_json(&Json::String("😀".into())), r#""\ud83d\ude00""#);
    }
}
