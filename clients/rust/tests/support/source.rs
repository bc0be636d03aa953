//! Expected feature values, straight from features.yaml and the source Parquet files (record
//! API), independent of the loader: the test compares what the client decodes with these.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use quiver_client::Value;
use yaml_rust2::{Yaml, YamlLoader};

#[derive(Debug, Clone)]
pub struct FeatureDef {
    pub name: String,
    pub ty: String,
    pub length: usize,
    pub column: String,
    pub default: Option<Yaml>,
}

#[derive(Debug, Clone)]
pub struct ViewDef {
    pub name: String,
    pub source: String,
    pub entity_column: String,
    pub event_timestamp: String,
    pub features: Vec<FeatureDef>,
}

pub struct Definitions {
    pub entity: String,
    pub key_type: String,
    pub views: Vec<ViewDef>,
}

pub fn read_definitions(path: &Path) -> Definitions {
    let text = std::fs::read_to_string(path).unwrap();
    let doc = &YamlLoader::load_from_str(&text).unwrap()[0];
    let s = |y: &Yaml| y.as_str().map(str::to_owned);
    let entity = s(&doc["entity"]["name"]).expect("entity.name");
    let key_type = s(&doc["entity"]["key_type"]).expect("entity.key_type");
    let views = doc["views"]
        .as_vec()
        .expect("views")
        .iter()
        .map(|v| ViewDef {
            name: s(&v["name"]).unwrap(),
            source: s(&v["source"]).unwrap(),
            entity_column: s(&v["entity_column"]).filter(|c| !c.is_empty()).unwrap_or_else(|| entity.clone()),
            event_timestamp: s(&v["event_timestamp"]).unwrap_or_default(),
            features: v["features"]
                .as_vec()
                .unwrap()
                .iter()
                .map(|f| {
                    let name = s(&f["name"]).unwrap();
                    FeatureDef {
                        column: s(&f["source_column"]).filter(|c| !c.is_empty()).unwrap_or_else(|| name.clone()),
                        name,
                        ty: s(&f["type"]).unwrap(),
                        length: f["length"].as_i64().unwrap_or(0) as usize,
                        default: match &f["default"] {
                            Yaml::BadValue | Yaml::Null => None,
                            y => Some(y.clone()),
                        },
                    }
                })
                .collect(),
        })
        .collect();
    Definitions { entity, key_type, views }
}

/// Files matching `source` (relative to the definitions' folder); `*` in the file name only,
/// which is what the generated definitions use.
fn expand(base: &Path, source: &str) -> Vec<PathBuf> {
    let full = base.join(source);
    let dir = full.parent().unwrap().to_path_buf();
    let pattern = full.file_name().unwrap().to_str().unwrap().to_owned();
    assert!(!dir.to_string_lossy().contains('*'), "glob in a folder name is not supported here: {source}");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| matches(&pattern, p.file_name().unwrap().to_str().unwrap()))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no file matches {source}");
    files
}

fn matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            name.starts_with(head) && {
                let tail = &name[head.len()..];
                (0..=tail.len()).any(|i| tail.is_char_boundary(i) && matches(rest, &tail[i..]))
            }
        }
    }
}

/// Each entity's expected values in one view (schema order). Where `event_timestamp` is set,
/// the latest row of a duplicated key wins, as the loader documents.
pub fn expected_view(base: &Path, view: &ViewDef) -> HashMap<i64, Vec<Value>> {
    expected_rows(base, view, |path, field| match field {
        Some(Field::Long(v)) => *v,
        Some(Field::Int(v)) => i64::from(*v),
        other => panic!("{}: entity column {} is {other:?}", path.display(), view.entity_column),
    })
}

/// [`expected_view`] for string-keyed entities.
pub fn expected_view_by_string(base: &Path, view: &ViewDef) -> HashMap<String, Vec<Value>> {
    expected_rows(base, view, |path, field| match field {
        Some(Field::Str(v)) => v.clone(),
        other => panic!("{}: entity column {} is {other:?}", path.display(), view.entity_column),
    })
}

fn expected_rows<K: std::hash::Hash + Eq + std::fmt::Debug>(
    base: &Path,
    view: &ViewDef,
    key_of: impl Fn(&Path, Option<&&Field>) -> K,
) -> HashMap<K, Vec<Value>> {
    let mut rows: HashMap<K, (i64, Vec<Value>)> = HashMap::new();
    for path in expand(base, &view.source) {
        let reader = SerializedFileReader::new(File::open(&path).unwrap()).unwrap();
        for row in reader.get_row_iter(None).unwrap() {
            let row = row.unwrap();
            let cols: HashMap<&str, &Field> = row.get_column_iter().map(|(n, f)| (n.as_str(), f)).collect();
            let key = key_of(&path, cols.get(view.entity_column.as_str()));
            let ts = if view.event_timestamp.is_empty() {
                0
            } else {
                match cols.get(view.event_timestamp.as_str()) {
                    Some(Field::TimestampMicros(t)) => *t,
                    Some(Field::TimestampMillis(t)) => t * 1000,
                    Some(Field::Long(t)) => *t,
                    other => panic!("{}: event timestamp {other:?}", path.display()),
                }
            };
            let values = view
                .features
                .iter()
                .map(|f| {
                    let field = cols.get(f.column.as_str()).unwrap_or_else(|| {
                        panic!("{}: no column {} for {}.{}", path.display(), f.column, view.name, f.name)
                    });
                    expected_value(f, field)
                        .unwrap_or_else(|e| panic!("{}: {}.{}: {e}", path.display(), view.name, f.name))
                })
                .collect();
            match rows.get(&key) {
                Some((old, _)) if *old > ts => {}
                Some((old, _)) if *old == ts && view.event_timestamp.is_empty() => {
                    panic!("{}: duplicate key {key:?} in view {} without an event timestamp", path.display(), view.name)
                }
                _ => {
                    rows.insert(key, (ts, values));
                }
            }
        }
    }
    rows.into_iter().map(|(k, (_, v))| (k, v)).collect()
}

fn expected_value(f: &FeatureDef, field: &Field) -> Result<Value, String> {
    if matches!(field, Field::Null) {
        return Ok(match &f.default {
            None => Value::Null,
            Some(y) => default_value(f, y)?,
        });
    }
    let bad = || format!("{} value {field:?}", f.ty);
    Ok(match (f.ty.as_str(), field) {
        ("bool", Field::Bool(v)) => Value::Bool(*v),
        ("int32", Field::Int(v)) => Value::Int32(*v),
        ("int32", Field::Short(v)) => Value::Int32(i32::from(*v)),
        ("int32", Field::Long(v)) => Value::Int32(i32::try_from(*v).map_err(|_| bad())?),
        ("int64", Field::Long(v)) => Value::Int64(*v),
        ("int64", Field::Int(v)) => Value::Int64(i64::from(*v)),
        ("float32", Field::Float(v)) => Value::Float32(*v),
        ("float64", Field::Double(v)) => Value::Float64(*v),
        ("float64", Field::Float(v)) => Value::Float64(f64::from(*v)),
        ("string", Field::Str(v)) => Value::String(v.clone()),
        ("bytes", Field::Bytes(v)) => Value::Bytes(v.data().to_vec()),
        ("list<float32>", Field::ListInternal(list)) => {
            let v = list
                .elements()
                .iter()
                .map(|e| match e {
                    Field::Float(x) => Ok(*x),
                    _ => Err(bad()),
                })
                .collect::<Result<Vec<f32>, String>>()?;
            if f.length != 0 && v.len() != f.length {
                return Err(format!("{} values, declared length {}", v.len(), f.length));
            }
            Value::Float32List(v)
        }
        ("list<int64>", Field::ListInternal(list)) => Value::Int64List(
            list.elements()
                .iter()
                .map(|e| match e {
                    Field::Long(x) => Ok(*x),
                    Field::Int(x) => Ok(i64::from(*x)),
                    _ => Err(bad()),
                })
                .collect::<Result<_, _>>()?,
        ),
        _ => return Err(bad()),
    })
}

fn default_value(f: &FeatureDef, y: &Yaml) -> Result<Value, String> {
    let bad = || format!("default {y:?} for type {}", f.ty);
    Ok(match (f.ty.as_str(), y) {
        ("bool", Yaml::Boolean(b)) => Value::Bool(*b),
        ("int32", Yaml::Integer(i)) => Value::Int32(i32::try_from(*i).map_err(|_| bad())?),
        ("int64", Yaml::Integer(i)) => Value::Int64(*i),
        ("float32", Yaml::Real(_) | Yaml::Integer(_)) => {
            Value::Float32(y.as_f64().unwrap_or(y.as_i64().unwrap_or(0) as f64) as f32)
        }
        ("float64", Yaml::Real(_) | Yaml::Integer(_)) => {
            Value::Float64(y.as_f64().unwrap_or(y.as_i64().unwrap_or(0) as f64))
        }
        ("string", Yaml::String(s)) => Value::String(s.clone()),
        _ => return Err(bad()),
    })
}
