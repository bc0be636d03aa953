//! A version's schema (GetSchema), indexed to decode ViewRow by feature name.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::proto;

pub use crate::proto::FeatureType;

/// The entity's key type, which decides `int64_ids` or `string_ids` in a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyType {
    Int64,
    String,
}

/// Where one feature sits in a ViewRow.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FeatureSchema {
    pub name: String,
    pub ty: FeatureType,
    /// Fixed length of a FLOAT32_LIST; 0 otherwise.
    pub list_length: u32,
    /// ViewRow field number of the feature's group (2 bools ... 10 int64_lists).
    pub group_field: u32,
    pub group_index: u32,
    /// Bit in ViewRow.nulls.
    pub position: u32,
    /// JSON of the default the loader stored for null source values; empty when none.
    pub default_json: String,
}

/// One feature view of a version: its features in schema order.
#[derive(Debug)]
pub struct ViewSchema {
    pub name: String,
    pub features: Vec<FeatureSchema>,
    pub rows: u64,
    pub event_timestamp_column: String,
    by_name: HashMap<String, usize>,
}

impl ViewSchema {
    /// Index of a feature in `features` (and in a decoded row's values).
    pub fn index_of(&self, feature: &str) -> Option<usize> {
        self.by_name.get(feature).copied()
    }

    pub fn feature(&self, name: &str) -> Option<&FeatureSchema> {
        self.index_of(name).map(|i| &self.features[i])
    }
}

/// The schema of one snapshot version.
#[derive(Debug)]
#[non_exhaustive]
pub struct Schema {
    pub version: String,
    pub entity_name: String,
    pub key_type: KeyType,
    /// Views in schema order (the order of an all-views GetFeatures response).
    pub views: Vec<Arc<ViewSchema>>,
}

impl Schema {
    pub fn view(&self, name: &str) -> Option<&Arc<ViewSchema>> {
        self.views.iter().find(|v| v.name == name)
    }

    /// Checks the schema against the contract, so that decoding can trust it.
    pub fn from_proto(p: proto::GetSchemaResponse) -> Result<Schema> {
        let key_type = match p.entity_key_type.as_str() {
            "int64" => KeyType::Int64,
            "string" => KeyType::String,
            other => {
                return Err(Error::Protocol(format!(
                    "schema of version {}: entity_key_type {other:?}, expected \"int64\" or \"string\"",
                    p.version
                )));
            }
        };
        let mut views = Vec::with_capacity(p.views.len());
        for v in p.views {
            views.push(Arc::new(view_from_proto(&p.version, v)?));
        }
        Ok(Schema { version: p.version, entity_name: p.entity_name, key_type, views })
    }
}

/// The ViewRow field number that holds a type's values.
pub(crate) fn group_field_of(ty: FeatureType) -> Option<u32> {
    Some(match ty {
        FeatureType::Bool => 2,
        FeatureType::Int32 => 3,
        FeatureType::Int64 => 4,
        FeatureType::Float32 => 5,
        FeatureType::Float64 => 6,
        FeatureType::String => 7,
        FeatureType::Bytes => 8,
        FeatureType::Float32List => 9,
        FeatureType::Int64List => 10,
        FeatureType::Unspecified => return None,
    })
}

fn view_from_proto(version: &str, v: proto::View) -> Result<ViewSchema> {
    let bad = |feature: &str, what: String| {
        Error::Protocol(format!("schema of version {version}, view {}, feature {feature}: {what}", v.name))
    };
    let mut features = Vec::with_capacity(v.features.len());
    let mut by_name = HashMap::with_capacity(v.features.len());
    for (i, f) in v.features.iter().enumerate() {
        let ty = FeatureType::try_from(f.r#type).map_err(|_| bad(&f.name, format!("unknown type {}", f.r#type)))?;
        let expected = group_field_of(ty).ok_or_else(|| bad(&f.name, "type unspecified".into()))?;
        if f.group_field != expected {
            return Err(bad(&f.name, format!("group_field {} for type {ty:?}, expected {expected}", f.group_field)));
        }
        if by_name.insert(f.name.clone(), i).is_some() {
            return Err(bad(&f.name, "duplicate feature name".into()));
        }
        features.push(FeatureSchema {
            name: f.name.clone(),
            ty,
            list_length: f.list_length,
            group_field: f.group_field,
            group_index: f.group_index,
            position: f.position,
            default_json: f.default_json.clone(),
        });
    }
    Ok(ViewSchema { name: v.name, features, rows: v.rows, event_timestamp_column: v.event_timestamp_column, by_name })
}
