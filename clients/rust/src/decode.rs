//! ViewRow bytes -> typed values by feature name (the layout is defined in quiver.proto).
//!
//! The one decoder of values: the gRPC client decodes a whole response here
//! ([`decode_response`]); the embedded reader decodes each stored ViewRow straight into a
//! [`ViewValues`] ([`ViewValues::decode`]), with no response built in between.

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

    /// `views`: every row's views, in response order.
    pub(crate) fn new(version: String, views: Arc<[Arc<ViewSchema>]>, rows: Vec<EntityFeatures>) -> Self {
        FeatureBatch { version, views, rows }
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

    /// `views[j]` is the entity's row of `schemas[j]`, `None` where it has none.
    pub(crate) fn new(views: Vec<Option<ViewValues>>, schemas: Arc<[Arc<ViewSchema>]>) -> Self {
        EntityFeatures { views, schemas }
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

    /// Entity `row`'s stored ViewRow of `schema`, decoded; the ViewRow's vectors are emptied.
    /// A ViewRow that does not fit the schema is a [`Error::Protocol`] naming the row.
    pub(crate) fn decode(schema: &Arc<ViewSchema>, stored: &mut ViewRow, row: usize) -> Result<ViewValues> {
        let values = decode_view_row(schema, stored).map_err(|m| Error::Protocol(format!("row {row}, {m}")))?;
        Ok(ViewValues { schema: Arc::clone(schema), values })
    }
}

/// Decodes a response with the schema of the version that answered it.
pub(crate) fn decode_response(schema: &Schema, response: GetFeaturesResponse) -> Result<FeatureBatch> {
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
            return Err(Error::Protocol(format!("row {i}: {} found flags for {} views", row.found.len(), views.len())));
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
            decoded.push(Some(ViewValues::decode(view, stored, i)?));
        }
        rows.push(EntityFeatures::new(decoded, Arc::clone(&views)));
    }
    Ok(FeatureBatch::new(response.version, views, rows))
}

/// Values of one ViewRow in the view's schema order. Takes the group vectors' contents instead of
/// cloning them (each slot belongs to exactly one feature).
fn decode_view_row(view: &ViewSchema, row: &mut ViewRow) -> Result<Vec<Value>, String> {
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

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::proto::{self, EntityRow, Float32List, GetSchemaResponse, Int64List};

    fn feature(name: &str, ty: proto::FeatureType, field: u32, index: u32, position: u32) -> proto::Feature {
        proto::Feature {
            name: name.into(),
            r#type: ty as i32,
            list_length: if ty == proto::FeatureType::Float32List { 3 } else { 0 },
            group_field: field,
            group_index: index,
            position,
            default_json: String::new(),
        }
    }

    /// A view with every type, two floats (to check group_index) and more than 8 features (to
    /// check the second byte of the null bitmap).
    fn schema() -> Schema {
        use proto::FeatureType as T;
        let features = vec![
            feature("flag", T::Bool, 2, 0, 0),
            feature("count32", T::Int32, 3, 0, 1),
            feature("count64", T::Int64, 4, 0, 2),
            feature("score", T::Float32, 5, 0, 3),
            feature("ratio", T::Float64, 6, 0, 4),
            feature("name", T::String, 7, 0, 5),
            feature("blob", T::Bytes, 8, 0, 6),
            feature("embedding", T::Float32List, 9, 0, 7),
            feature("history", T::Int64List, 10, 0, 8),
            feature("score2", T::Float32, 5, 1, 9),
        ];
        let other = vec![feature("clicks", T::Int64, 4, 0, 0)];
        Schema::from_proto(GetSchemaResponse {
            version: "v1".into(),
            entity_name: "user_id".into(),
            entity_key_type: "int64".into(),
            views: vec![
                proto::View { name: "all".into(), features, rows: 2, event_timestamp_column: String::new() },
                proto::View { name: "other".into(), features: other, rows: 1, event_timestamp_column: String::new() },
            ],
        })
        .unwrap()
    }

    fn full_row() -> ViewRow {
        ViewRow {
            nulls: vec![0, 0],
            bools: vec![true],
            int32s: vec![-7],
            int64s: vec![i64::MIN],
            float32s: vec![f32::from_bits(0x7fc0_1234), -0.0],
            float64s: vec![f64::INFINITY],
            strings: vec!["zoë".into()],
            bytes_values: vec![vec![0, 255]],
            float32_lists: vec![Float32List { values: vec![1.5, f32::NAN, -2.0] }],
            int64_lists: vec![Int64List { values: vec![3, -4] }],
        }
    }

    /// Round-trips the response through prost's encoder, as it would arrive on the wire.
    fn wire(response: GetFeaturesResponse) -> GetFeaturesResponse {
        GetFeaturesResponse::decode(response.encode_to_vec().as_slice()).unwrap()
    }

    #[test]
    fn decodes_every_type_by_name_keeping_float_bits() {
        let schema = schema();
        let response = wire(GetFeaturesResponse {
            version: "v1".into(),
            views: vec!["all".into()],
            rows: vec![EntityRow { views: vec![full_row()], found: vec![true] }],
        });
        let batch = decode_response(&schema, response).unwrap();
        assert_eq!(batch.version(), "v1");
        let row = &batch.rows()[0];
        assert_eq!(row.get("all", "flag"), Some(&Value::Bool(true)));
        assert_eq!(row.get("all", "count32"), Some(&Value::Int32(-7)));
        assert_eq!(row.get("all", "count64"), Some(&Value::Int64(i64::MIN)));
        assert!(row.get("all", "score").unwrap().bit_eq(&Value::Float32(f32::from_bits(0x7fc0_1234))));
        assert!(row.get("all", "score2").unwrap().bit_eq(&Value::Float32(-0.0)));
        assert!(!row.get("all", "score2").unwrap().bit_eq(&Value::Float32(0.0)));
        assert_eq!(row.get("all", "ratio"), Some(&Value::Float64(f64::INFINITY)));
        assert_eq!(row.get("all", "name"), Some(&Value::String("zoë".into())));
        assert_eq!(row.get("all", "blob"), Some(&Value::Bytes(vec![0, 255])));
        assert!(row.get("all", "embedding").unwrap().bit_eq(&Value::Float32List(vec![1.5, f32::NAN, -2.0])));
        assert_eq!(row.get("all", "history"), Some(&Value::Int64List(vec![3, -4])));
        assert_eq!(row.get("all", "nope"), None);
        let names: Vec<&str> = row.view("all").unwrap().iter().map(|(n, _)| n).collect();
        assert_eq!(names[0], "flag");
        assert_eq!(names.len(), 10);
    }

    #[test]
    fn null_bits_are_lsb_first_across_bytes() {
        let schema = schema();
        let mut stored = full_row();
        // positions 1 (count32), 7 (embedding) and 9 (score2): byte 0 bits 1 and 7, byte 1 bit 1.
        stored.nulls = vec![0b1000_0010, 0b0000_0010];
        stored.int32s = vec![0];
        stored.float32_lists = vec![Float32List { values: vec![0.0; 3] }];
        let response = wire(GetFeaturesResponse {
            version: "v1".into(),
            views: vec!["all".into()],
            rows: vec![EntityRow { views: vec![stored], found: vec![true] }],
        });
        let batch = decode_response(&schema, response).unwrap();
        let view = batch.rows()[0].view("all").unwrap();
        let nulls: Vec<&str> = view.iter().filter(|(_, v)| v.is_null()).map(|(n, _)| n).collect();
        assert_eq!(nulls, ["count32", "embedding", "score2"]);
        assert!(view.get("score").unwrap().bit_eq(&Value::Float32(f32::from_bits(0x7fc0_1234))));
    }

    #[test]
    fn short_null_bitmap_means_not_null() {
        let schema = schema();
        let mut stored = full_row();
        stored.nulls = vec![];
        let values = decode_view_row(schema.view("all").unwrap(), &mut stored).unwrap();
        assert!(values.iter().all(|v| !v.is_null()));
    }

    #[test]
    fn not_found_entities_and_view_order_follow_the_response() {
        let schema = schema();
        let response = wire(GetFeaturesResponse {
            version: "v1".into(),
            views: vec!["other".into(), "all".into()],
            rows: vec![
                EntityRow {
                    views: vec![ViewRow { nulls: vec![0], int64s: vec![9], ..Default::default() }, full_row()],
                    found: vec![true, true],
                },
                EntityRow { views: vec![ViewRow::default(), ViewRow::default()], found: vec![false, false] },
                // "Empty when not found": a server may also leave out the trailing ViewRows.
                EntityRow { views: vec![ViewRow { int64s: vec![5], ..Default::default() }], found: vec![true, false] },
            ],
        });
        let batch = decode_response(&schema, response).unwrap();
        let names: Vec<&str> = batch.views().iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["other", "all"]);
        assert_eq!(batch.rows()[0].get("other", "clicks"), Some(&Value::Int64(9)));
        assert!(batch.rows()[0].found("all"));
        assert!(!batch.rows()[1].found("other"));
        assert!(!batch.rows()[1].found("all"));
        assert_eq!(batch.rows()[1].get("all", "flag"), None);
        assert_eq!(batch.rows()[2].get("other", "clicks"), Some(&Value::Int64(5)));
        assert!(!batch.rows()[2].found("all"));
    }

    fn one_row(stored: ViewRow) -> GetFeaturesResponse {
        GetFeaturesResponse {
            version: "v1".into(),
            views: vec!["all".into()],
            rows: vec![EntityRow { views: vec![stored], found: vec![true] }],
        }
    }

    #[test]
    fn contract_violations_are_protocol_errors() {
        let schema = schema();
        let mut missing_slot = full_row();
        missing_slot.float32s.pop();
        let mut wrong_length = full_row();
        wrong_length.float32_lists[0].values.push(1.0);
        let mut wrong_version = one_row(full_row());
        wrong_version.version = "v2".into();
        let mut unknown_view = one_row(full_row());
        unknown_view.views = vec!["ghost".into()];
        let mut missing_found = one_row(full_row());
        missing_found.rows[0].found.clear();
        let mut found_without_row = one_row(full_row());
        found_without_row.rows[0].views.clear();
        for (case, response) in [
            ("missing slot", one_row(missing_slot)),
            ("list length", one_row(wrong_length)),
            ("version", wrong_version),
            ("view", unknown_view),
            ("found flags", missing_found),
            ("found without ViewRow", found_without_row),
        ] {
            match decode_response(&schema, response) {
                Err(Error::Protocol(m)) => assert!(!m.is_empty(), "{case}"),
                other => panic!("{case}: expected a protocol error, got {other:?}"),
            }
        }
    }

    #[test]
    fn schema_rejects_group_field_that_does_not_match_the_type() {
        let bad = GetSchemaResponse {
            version: "v1".into(),
            entity_name: "user_id".into(),
            entity_key_type: "int64".into(),
            views: vec![proto::View {
                name: "v".into(),
                features: vec![feature("x", proto::FeatureType::Int64, 5, 0, 0)],
                ..Default::default()
            }],
        };
        assert!(matches!(Schema::from_proto(bad), Err(Error::Protocol(_))));
        let bad_key = GetSchemaResponse { entity_key_type: "uuid".into(), ..Default::default() };
        assert!(matches!(Schema::from_proto(bad_key), Err(Error::Protocol(_))));
    }
}
