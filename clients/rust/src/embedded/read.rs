//! GetFeatures in-process, as the server answers it (service/reader.py): validate the request,
//! encode keys, one lookup per entity and storage group (batched for a batch), and decode each
//! stored EntityRow once. Its ViewRows then go either into the `GetFeaturesResponse` a server
//! would send (the raw API), or straight into typed values by the decoder the gRPC client uses.

use std::sync::Arc;

use prost::Message;
use tonic::Status;

use crate::decode::{EntityFeatures, FeatureBatch, ViewValues};
use crate::embedded::store::{OpenVersion, Slot};
use crate::error::{Error, Result};
use crate::proto::{EntityRow, GetFeaturesRequest, GetFeaturesResponse, ViewRow};
use crate::schema::{KeyType, ViewSchema};

/// int64 ids: 8 bytes big-endian with the sign bit flipped, so byte order is numeric order.
pub fn int64_key(id: i64) -> Vec<u8> {
    ((id as u64) ^ (1 << 63)).to_be_bytes().to_vec()
}

fn keys(request: &GetFeaturesRequest, version: &OpenVersion) -> Result<Vec<Vec<u8>>> {
    let (ints, strs) = (&request.int64_ids, &request.string_ids);
    if ints.is_empty() && strs.is_empty() {
        return Err(Status::invalid_argument("no entity ids: set int64_ids or string_ids").into());
    }
    let entity = &version.schema.entity_name;
    match version.schema.key_type {
        KeyType::Int64 if !strs.is_empty() => Err(Status::invalid_argument(format!(
            "entity {entity:?} is keyed by int64: send int64_ids, not string_ids"
        ))
        .into()),
        KeyType::String if !ints.is_empty() => Err(Status::invalid_argument(format!(
            "entity {entity:?} is keyed by string: send string_ids, not int64_ids"
        ))
        .into()),
        KeyType::Int64 => Ok(ints.iter().map(|&id| int64_key(id)).collect()),
        KeyType::String => Ok(strs.iter().map(|s| s.as_bytes().to_vec()).collect()),
    }
}

/// Where each requested view's ViewRow comes from.
struct Plan<'v> {
    /// Requested views (all, in schema order, when the request names none), each named once.
    names: Vec<String>,
    slots: Vec<&'v Slot>,
    /// The groups to look up, in order of first use; `group_of[j]`: the position of view j's.
    groups: Vec<usize>,
    group_of: Vec<usize>,
    /// Every view of one group in stored order: each entity's stored row is its response row.
    whole_group: bool,
}

fn plan<'v>(request: &GetFeaturesRequest, version: &'v OpenVersion) -> Result<Plan<'v>> {
    let names: Vec<String> = if request.views.is_empty() {
        version.schema.views.iter().map(|v| v.name.clone()).collect()
    } else {
        request.views.clone()
    };
    let mut twice: Vec<&String> = Vec::new();
    for (i, v) in names.iter().enumerate() {
        if names[..i].contains(v) && !twice.contains(&v) {
            twice.push(v);
        }
    }
    if !twice.is_empty() {
        return Err(Status::invalid_argument(format!(
            "view(s) {twice:?} named more than once in the request; name each view once"
        ))
        .into());
    }
    let unknown: Vec<&String> = names.iter().filter(|v| !version.slots.contains_key(*v)).collect();
    if !unknown.is_empty() {
        let all: Vec<&str> = version.schema.views.iter().map(|v| v.name.as_str()).collect();
        return Err(Status::not_found(format!(
            "unknown view(s) {unknown:?} in version {}; it has {all:?}",
            version.id
        ))
        .into());
    }
    let slots: Vec<&Slot> = names.iter().map(|v| &version.slots[v]).collect();
    let mut groups: Vec<usize> = Vec::new();
    let group_of = slots
        .iter()
        .map(|s| {
            groups.iter().position(|&g| g == s.group).unwrap_or_else(|| {
                groups.push(s.group);
                groups.len() - 1
            })
        })
        .collect();
    let whole_group = groups.len() == 1
        && slots.len() == version.group_views[groups[0]]
        && slots.iter().enumerate().all(|(i, s)| s.index == i);
    Ok(Plan { names, slots, groups, group_of, whole_group })
}

/// Looks every key up in each group of the plan, decodes each stored EntityRow once (`None`:
/// the entity is in no view of that group), and makes entity `i`'s result with `row(i, rows)`.
fn read_rows<T>(
    plan: &Plan,
    keys: &[Vec<u8>],
    version: &OpenVersion,
    mut row: impl FnMut(usize, &mut [Option<EntityRow>]) -> Result<T>,
) -> Result<Vec<T>> {
    let stored = plan.groups.iter().map(|&g| version.get(g, keys)).collect::<Result<Vec<_>, _>>()?;
    let mut rows = Vec::with_capacity(keys.len());
    let mut decoded: Vec<Option<EntityRow>> = Vec::with_capacity(plan.groups.len());
    for (i, key) in keys.iter().enumerate() {
        decoded.clear();
        for (values, &g) in stored.iter().zip(&plan.groups) {
            decoded.push(match &values[i] {
                None => None,
                Some(bytes) => Some(entity_row(bytes, version, g, key)?),
            });
        }
        rows.push(row(i, &mut decoded)?);
    }
    Ok(rows)
}

/// The response a server would send for `request` from `version`.
pub fn get_features(request: &GetFeaturesRequest, version: &OpenVersion) -> Result<GetFeaturesResponse> {
    let plan = plan(request, version)?;
    let keys = keys(request, version)?;
    let n = plan.slots.len();
    let rows = read_rows(&plan, &keys, version, |_, stored| {
        if plan.whole_group {
            return Ok(stored[0]
                .take()
                .unwrap_or_else(|| EntityRow { views: vec![ViewRow::default(); n], found: vec![false; n] }));
        }
        let mut row = EntityRow { views: Vec::with_capacity(n), found: Vec::with_capacity(n) };
        for (s, &gi) in plan.slots.iter().zip(&plan.group_of) {
            match &mut stored[gi] {
                None => {
                    row.views.push(ViewRow::default());
                    row.found.push(false);
                }
                // each view is named once (plan), so its ViewRow moves
                Some(stored_row) => {
                    row.views.push(std::mem::take(&mut stored_row.views[s.index]));
                    row.found.push(stored_row.found[s.index]);
                }
            }
        }
        Ok(row)
    })?;
    Ok(GetFeaturesResponse { version: version.id.clone(), views: plan.names, rows })
}

/// The typed rows for `request` from `version`: what [`crate::decode::decode_response`] makes of
/// the response [`get_features`] returns, without making that response.
pub fn get_batch(request: &GetFeaturesRequest, version: &OpenVersion) -> Result<FeatureBatch> {
    let plan = plan(request, version)?;
    let keys = keys(request, version)?;
    let views: Arc<[Arc<ViewSchema>]> = plan.slots.iter().map(|s| Arc::clone(&s.view)).collect();
    let rows = read_rows(&plan, &keys, version, |i, stored| {
        let mut values = Vec::with_capacity(views.len());
        for ((s, &gi), view) in plan.slots.iter().zip(&plan.group_of).zip(views.iter()) {
            values.push(match &mut stored[gi] {
                Some(stored_row) if stored_row.found[s.index] => {
                    Some(ViewValues::decode(view, &mut stored_row.views[s.index], i)?)
                }
                _ => None,
            });
        }
        Ok(EntityFeatures::new(values, Arc::clone(&views)))
    })?;
    Ok(FeatureBatch::new(version.id.clone(), views, rows))
}

/// A stored value, checked to be an EntityRow of the group's views (FORMAT.md).
fn entity_row(bytes: &[u8], version: &OpenVersion, g: usize, key: &[u8]) -> Result<EntityRow> {
    let group = &version.manifest.groups[g].name;
    let corrupt = |what: String| {
        Error::Protocol(format!(
            "version {}, group {group}, key {key:02x?}: the stored value {what}; the snapshot is corrupt",
            version.id
        ))
    };
    let row = EntityRow::decode(bytes).map_err(|e| corrupt(format!("is not an EntityRow ({e})")))?;
    let n = version.group_views[g];
    if row.views.len() != n || row.found.len() != n {
        return Err(corrupt(format!(
            "has {} ViewRows and {} found flags for {n} views",
            row.views.len(),
            row.found.len()
        )));
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int64_keys_sort_numerically_as_bytes() {
        let ids = [i64::MIN, -5, -1, 0, 1, 7, 1 << 40, i64::MAX];
        let keys: Vec<Vec<u8>> = ids.iter().map(|&i| int64_key(i)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(int64_key(0), [0x80, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(int64_key(-1), [0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    }
}
