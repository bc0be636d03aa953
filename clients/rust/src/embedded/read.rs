//! GetFeatures in-process, as the server answers it (service/reader.py): validate the request,
//! encode keys, one lookup per entity and storage group (batched for a batch), and lay each
//! stored EntityRow's ViewRows out in the requested view order. The result is the
//! `GetFeaturesResponse` a server would send, decoded by the same code as the gRPC client's.

use prost::Message;
use tonic::Status;

use crate::embedded::store::{OpenVersion, Slot};
use crate::error::{Error, Result};
use crate::proto::{EntityRow, GetFeaturesRequest, GetFeaturesResponse, ViewRow};
use crate::schema::KeyType;

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

/// Where each requested view's ViewRow comes from; `views` empty means all, in schema order.
fn plan(request: &GetFeaturesRequest, version: &OpenVersion) -> Result<(Vec<String>, Vec<Slot>)> {
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
    let slots = names.iter().map(|v| version.slots[v]).collect();
    Ok((names, slots))
}

/// The response for `request` from `version`.
pub fn get_features(request: &GetFeaturesRequest, version: &OpenVersion) -> Result<GetFeaturesResponse> {
    let (views, slots) = plan(request, version)?;
    let keys = keys(request, version)?;
    // Groups in order of first use; one lookup (batch) per group.
    let mut groups: Vec<usize> = Vec::new();
    for s in &slots {
        if !groups.contains(&s.group) {
            groups.push(s.group);
        }
    }
    let stored = groups.iter().map(|&g| version.get(g, &keys)).collect::<Result<Vec<_>, _>>()?;
    // The common case, every view of one group in stored order: each value is the row itself.
    let whole_group = groups.len() == 1
        && slots.len() == version.group_views[groups[0]]
        && slots.iter().enumerate().all(|(i, s)| s.index == i);
    let mut rows = Vec::with_capacity(keys.len());
    let mut decoded: Vec<Option<EntityRow>> = Vec::with_capacity(groups.len());
    for i in 0..keys.len() {
        decoded.clear();
        for (gi, &g) in groups.iter().enumerate() {
            decoded.push(match &stored[gi][i] {
                None => None,
                Some(bytes) => Some(entity_row(bytes, version, g, &keys[i])?),
            });
        }
        if whole_group {
            let n = slots.len();
            rows.push(
                decoded[0]
                    .take()
                    .unwrap_or_else(|| EntityRow { views: vec![ViewRow::default(); n], found: vec![false; n] }),
            );
            continue;
        }
        let mut row = EntityRow { views: Vec::with_capacity(slots.len()), found: Vec::with_capacity(slots.len()) };
        for (j, s) in slots.iter().enumerate() {
            let gi = groups.iter().position(|&g| g == s.group).expect("every slot's group is looked up");
            match &mut decoded[gi] {
                None => {
                    row.views.push(ViewRow::default());
                    row.found.push(false);
                }
                Some(stored_row) => {
                    // A view asked for twice gets a copy; otherwise the ViewRow moves.
                    let again = slots[j + 1..].iter().any(|o| o.group == s.group && o.index == s.index);
                    let view = &mut stored_row.views[s.index];
                    row.views.push(if again { view.clone() } else { std::mem::take(view) });
                    row.found.push(stored_row.found[s.index]);
                }
            }
        }
        rows.push(row);
    }
    Ok(GetFeaturesResponse { version: version.id.clone(), views, rows })
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
