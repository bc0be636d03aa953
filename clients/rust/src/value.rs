//! Entity ids going out and typed feature values coming back.

/// An entity key, in the entity's key type (`GetSchemaResponse.entity_key_type`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EntityId {
    Int64(i64),
    String(String),
}

impl From<i64> for EntityId {
    fn from(v: i64) -> Self {
        EntityId::Int64(v)
    }
}

impl From<&str> for EntityId {
    fn from(v: &str) -> Self {
        EntityId::String(v.to_owned())
    }
}

impl From<String> for EntityId {
    fn from(v: String) -> Self {
        EntityId::String(v)
    }
}

/// One feature's value, decoded from a ViewRow by the schema of the version that answered.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Value {
    Bool(bool),
    Int32(i32),
    Int64(i64),
    Float32(f32),
    Float64(f64),
    String(String),
    Bytes(Vec<u8>),
    /// Fixed length per feature (`Feature.list_length`), e.g. an embedding.
    Float32List(Vec<f32>),
    Int64List(Vec<i64>),
    /// The feature's bit is set in `ViewRow.nulls`.
    Null,
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(v) => Some(*v),
            _ => None,
        }
    }

    /// Int32 and Int64 widened to i64.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int32(v) => Some(i64::from(*v)),
            Value::Int64(v) => Some(*v),
            _ => None,
        }
    }

    /// Float32 and Float64 widened to f64.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float32(v) => Some(f64::from(*v)),
            Value::Float64(v) => Some(*v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_f32_list(&self) -> Option<&[f32]> {
        match self {
            Value::Float32List(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_i64_list(&self) -> Option<&[i64]> {
        match self {
            Value::Int64List(v) => Some(v),
            _ => None,
        }
    }

    /// Equality that compares floats by their bits, so NaN equals the same NaN (and 0.0 differs
    /// from -0.0): the store keeps IEEE 754 bits exactly, and this is how to check that.
    pub fn bit_eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Float32(a), Value::Float32(b)) => a.to_bits() == b.to_bits(),
            (Value::Float64(a), Value::Float64(b)) => a.to_bits() == b.to_bits(),
            (Value::Float32List(a), Value::Float32List(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
            }
            _ => self == other,
        }
    }
}
