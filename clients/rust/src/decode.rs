//! ViewRow bytes -> typed values by feature name (the layout is defined in quiver.proto).

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::proto::{GetFeaturesResponse, ViewRow};
use crate::schema::{Schema, ViewSchema};
use crate::value::Value;

/// A decoded GetFeatures response: one [`EntityFeatures`] per requested entity, in request order.
#[derive(Debug)]
pub struct FeatureBatch {
    version: String,
    views: Arc<[Arc<ViewSchema>]>,
    rows: Vec<EntityFeatures>,
}

impl FeatureBatch {
    /// The snapshot version that answered every row.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The views of each row, in response order.
    pub fn views(&self) -> &[Arc<ViewSchema>] {
        &self.views
    }

    pub fn rows(&self) -> &[EntityFeatures] {
        &self.rows
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn into_rows(self) -> Vec<EntityFeatures> {
        self.rows
    }
}

/// One entity's features in every response view.
#[derive(Debug)]
pub struct EntityFeatures {
    /// `None` where the entity has no row in that view (`found[j] == false`).
    views: Vec<Option<ViewValues>>,
    schemas: Arc<[Arc<ViewSchema>]>,
}

impl EntityFeatures {
    /// The entity's values in a view; `None` when the view was not requested or the entity is
    /// absent from it (see [`EntityFeatures::found`]).
    pub fn view(&self, view: &str) -> Option<&ViewValues> {
        let j = self.schemas.iter().position(|v| v.name == view)?;
        self.views[j].as_ref()
    }

    /// Whether the entity has a row in `view` (false also for a view not in the response).
    pub fn found(&self, view: &str) -> bool {
        self.view(view).is_some()
    }

    /// A feature's value; `None` when the entity is absent from the view or the name is unknown.
    /// A null feature of a present entity is `Some(&Value::Null)`.
    pub fn get(&self, view: &str, feature: &str) -> Option<&Value> {
        self.view(view)?.get(feature)
    }

    /// Per response view, in response order.
    pub fn views(&self) -> &[Option<ViewValues>] {
        &self.views
    }
}

/// One entity's row of one view, decoded.
#[derive(Debug, Clone)]
pub struct ViewValues {
    schema: Arc<ViewSchema>,
    values: Vec<Value>,
}

impl ViewValues {
    pub fn schema(&self) -> &Arc<ViewSchema> {
        &self.schema
    }

    pub fn get(&self, feature: &str) -> Option<&Value> {
        self.schema.index_of(feature).map(|i| &self.values[i])
    }

    /// Values in the view's schema order.
    pub fn values(&self) -> &[Value] {
        &self.values
    }

    /// (feature name, value) in schema order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.schema.features.iter().map(|f| f.name.as_str()).zip(&self.values)
    }
}

/// Decodes a response with the schema of the version that answered it.
pub fn decode_response(schema: &Schema, response: GetFeaturesResponse) -> Result<FeatureBatch> {
    if response.version != schema.version {
        return Err(Error::Protocol(format!(
            "decoding a response of version {} with the schema of {}",
            response.version, schema.version
        )));
    }
    let views: Arc<[Arc<ViewSchema>]> = response
        .views
        .iter()
        .map(|name| {
            schema.view(name).cloned().ok_or_else(|| {
                Error::Protocol(format!("response view {name} is not in the schema of version {}", schema.version))
            })
        })
        .collect::<Result<_>>()?;
    let mut rows = Vec::with_capacity(response.rows.len());
    for (i, mut row) in response.rows.into_iter().enumerate() {
        if row.found.len() != views.len() {
            return Err(Error::Protocol(format!(
                "row {i}: {} found flags for {} views",
                row.found.len(),
                views.len()
            )));
        }
        let mut decoded = Vec::with_capacity(views.len());
        for (j, view) in views.iter().enumerate() {
            if !row.found[j] {
                decoded.push(None);
                continue;
            }
            let n = row.views.len();
            let stored = row.views.get_mut(j).ok_or_else(|| {
                Error::Protocol(format!("row {i}: found in view {} but only {n} ViewRows", view.name))
            })?;
            let values = decode_view_row(view, stored).map_err(|m| Error::Protocol(format!("row {i}, {m}")))?;
            decoded.push(Some(ViewValues { schema: Arc::clone(view), values }));
        }
        rows.push(EntityFeatures { views: decoded, schemas: Arc::clone(&views) });
    }
    Ok(FeatureBatch { version: response.version, views, rows })
}

/// Values of one ViewRow in the view's schema order. Takes the group vectors' contents instead of
/// cloning them (each slot belongs to exactly one feature).
pub fn decode_view_row(view: &ViewSchema, row: &mut ViewRow) -> Result<Vec<Value>, String> {
    let mut values = Vec::with_capacity(view.features.len());
    for f in &view.features {
        let pos = f.position as usize;
        let is_null = row.nulls.get(pos / 8).is_some_and(|b| b & (1 << (pos % 8)) != 0);
        if is_null {
            values.push(Value::Null);
            continue;
        }
        let idx = f.group_index as usize;
        let missing = |len: usize| {
            format!(
                "view {}, feature {}: group field {} has {len} values, index {idx} expected",
                view.name, f.name, f.group_field
            )
        };
        let value = match f.group_field {
            2 => row.bools.get(idx).copied().map(Value::Bool).ok_or_else(|| missing(row.bools.len()))?,
            3 => row.int32s.get(idx).copied().map(Value::Int32).ok_or_else(|| missing(row.int32s.len()))?,
            4 => row.int64s.get(idx).copied().map(Value::Int64).ok_or_else(|| missing(row.int64s.len()))?,
            5 => row.float32s.get(idx).copied().map(Value::Float32).ok_or_else(|| missing(row.float32s.len()))?,
            6 => row.float64s.get(idx).copied().map(Value::Float64).ok_or_else(|| missing(row.float64s.len()))?,
            7 => {
                let n = row.strings.len();
                Value::String(std::mem::take(row.strings.get_mut(idx).ok_or_else(|| missing(n))?))
            }
            8 => {
                let n = row.bytes_values.len();
                Value::Bytes(std::mem::take(row.bytes_values.get_mut(idx).ok_or_else(|| missing(n))?))
            }
            9 => {
                let n = row.float32_lists.len();
                let list = std::mem::take(&mut row.float32_lists.get_mut(idx).ok_or_else(|| missing(n))?.values);
                if f.list_length != 0 && list.len() != f.list_length as usize {
                    return Err(format!(
                        "view {}, feature {}: {} values, schema says list_length {}",
                        view.name,
                        f.name,
                        list.len(),
                        f.list_length
                    ));
                }
                Value::Float32List(list)
            }
            10 => {
                let n = row.int64_lists.len();
                Value::Int64List(std::mem::take(&mut row.int64_lists.get_mut(idx).ok_or_else(|| missing(n))?.values))
            }
            other => return Err(format!("view {}, feature {}: unknown group field {other}", view.name, f.name)),
        };
        values.push(value);
    }
    Ok(values)
}
