//! Typed reading of a [`Node`] tree through serde, with positions in every error.
//!
//! [`from_node`] drives any `Deserialize` type over the tree. Each node knows its dotted path, and
//! an error raised while reading a node is stamped with that node's position and path on its way
//! out, so a derived struct gives `compose.yaml:14:9: services.web.deploy.replicas: expected a
//! non-negative integer, got "three"` without hand-written checks.
//!
//! Scalars are typed by the target, as compose types them after interpolation: an integer field
//! reads `3` and `"3"` alike; a string field reads `3` as `"3"`.
//!
//! Unknown keys: structs carry `#[serde(flatten)] x: Extensions`, which accepts keys that start
//! with `x-` and rejects every other leftover key with [`DeError`]'s unknown-field form; the map
//! that holds the key then points the error at the key itself.

use std::fmt;

use indexmap::IndexMap;
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::{Deserialize, Serialize};

use crate::diag::{Diagnostic, Pos, SpecError, index_path, join_path};
use crate::node::{Map, Node, Resolved, Value, parse_yaml_int};

/// Reads a typed value from `node`, whose dotted path is `path`.
pub fn from_node<'de, T: Deserialize<'de>>(node: &'de Node, path: &str) -> Result<T, SpecError> {
    T::deserialize(NodeDe::new(node, path.to_string())).map_err(DeError::into_spec)
}

/// Error raised while reading the tree; carries a position once it leaves the failing node.
#[derive(Debug, Clone)]
pub struct DeError {
    pos: Option<Pos>,
    path: Option<String>,
    message: String,
    unknown_field: Option<String>,
}

impl DeError {
    pub fn new(message: impl Into<String>) -> Self {
        DeError {
            pos: None,
            path: None,
            message: message.into(),
            unknown_field: None,
        }
    }

    fn located(mut self, node: &Node, path: &str) -> Self {
        if self.pos.is_some() {
            return self;
        }
        if let (Some(name), Value::Map(map)) = (&self.unknown_field, &node.value)
            && let Some(entry) = map.entry(name)
        {
            self.pos = Some(entry.key_pos.clone());
            self.path = Some(join_path(path, name));
            return self;
        }
        self.pos = Some(node.pos.clone());
        self.path = Some(path.to_string());
        self
    }

    fn into_spec(self) -> SpecError {
        SpecError::one(Diagnostic::new(
            self.pos,
            self.path.unwrap_or_default(),
            self.message,
        ))
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DeError::new(msg.to_string())
    }

    fn invalid_type(unexp: de::Unexpected, exp: &dyn de::Expected) -> Self {
        DeError::new(format!("expected {exp}, got {}", unexpected(unexp)))
    }

    fn invalid_value(unexp: de::Unexpected, exp: &dyn de::Expected) -> Self {
        DeError::new(format!("expected {exp}, got {}", unexpected(unexp)))
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        DeError::new(format!(
            "expected one of {}, got {variant:?}",
            expected.join(", ")
        ))
    }

    fn unknown_field(field: &str, _expected: &'static [&'static str]) -> Self {
        DeError {
            unknown_field: Some(field.to_string()),
            ..DeError::new(unknown_field_message(field))
        }
    }

    fn missing_field(field: &'static str) -> Self {
        DeError::new(format!("missing required field {field:?}"))
    }

    fn duplicate_field(field: &'static str) -> Self {
        DeError::new(format!("field {field:?} given twice"))
    }
}

/// The message for a key no field of the model (or of the compose-spec schema) has, with a
/// "did you mean" hint when a known field is close.
pub fn unknown_field_message(field: &str) -> String {
    if let Some(s) = crate::model::suggest_field(field) {
        format!("unknown field, did you mean {s:?}?")
    } else if field.starts_with("x-") {
        "unknown field".to_string()
    } else {
        "unknown field (only fields starting with x- may be added)".to_string()
    }
}

fn unexpected(u: de::Unexpected) -> String {
    match u {
        de::Unexpected::Str(s) => format!("{s:?}"),
        de::Unexpected::Map => "a mapping".into(),
        de::Unexpected::Seq => "a sequence".into(),
        de::Unexpected::Unit => "null".into(),
        other => other.to_string(),
    }
}

/// Deserializer for one node.
pub struct NodeDe<'de> {
    node: &'de Node,
    path: String,
}

impl<'de> NodeDe<'de> {
    pub fn new(node: &'de Node, path: String) -> Self {
        NodeDe { node, path }
    }

    fn fail<T>(&self, expected: &str) -> Result<T, DeError> {
        Err(
            DeError::new(format!("expected {expected}, got {}", self.node.describe()))
                .located(self.node, &self.path),
        )
    }

    fn scalar(&self) -> Option<&'de str> {
        match &self.node.value {
            Value::Scalar(s) => Some(s.text.as_str()),
            _ => None,
        }
    }

    fn int(&self, expected: &str) -> Result<i64, DeError> {
        match self.scalar().and_then(|t| parse_yaml_int(t.trim())) {
            Some(i) => Ok(i),
            None => self.fail(expected),
        }
    }

    fn seq(self, items: &'de [Node]) -> SeqDe<'de> {
        SeqDe {
            items: items.iter().enumerate(),
            path: self.path,
        }
    }

    fn map(self, map: &'de Map) -> MapDe<'de> {
        MapDe {
            entries: Box::new(map.iter()),
            value: None,
            path: self.path,
        }
    }
}

macro_rules! de_uint {
    ($($name:ident $ty:ty => $visit:ident),*) => {$(
        fn $name<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            let what = "a non-negative integer";
            let i = self.int(what)?;
            match <$ty>::try_from(i) {
                Ok(v) => visitor.$visit::<DeError>(v).map_err(|e| e.located(self.node, &self.path)),
                Err(_) if i < 0 => self.fail(what),
                Err(_) => Err(DeError::new(format!("{i} is out of range (at most {})", <$ty>::MAX))
                    .located(self.node, &self.path)),
            }
        }
    )*};
}

macro_rules! de_int {
    ($($name:ident $ty:ty => $visit:ident),*) => {$(
        fn $name<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
            let i = self.int("an integer")?;
            match <$ty>::try_from(i) {
                Ok(v) => visitor.$visit::<DeError>(v).map_err(|e| e.located(self.node, &self.path)),
                Err(_) => Err(DeError::new(format!("{i} is out of range"))
                    .located(self.node, &self.path)),
            }
        }
    )*};
}

impl<'de> de::Deserializer<'de> for NodeDe<'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let (node, path) = (self.node, self.path.clone());
        let r = match &node.value {
            Value::Null => visitor.visit_unit(),
            Value::Scalar(s) => match s.resolve() {
                Resolved::Bool(b) => visitor.visit_bool(b),
                Resolved::Int(i) => visitor.visit_i64(i),
                Resolved::Float(f) => visitor.visit_f64(f),
                Resolved::Str(t) => visitor.visit_borrowed_str(t),
            },
            Value::Seq(items) => visitor.visit_seq(self.seq(items)),
            Value::Map(map) => visitor.visit_map(self.map(map)),
        };
        r.map_err(|e| e.located(node, &path))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        // yaml.v3 reads YAML 1.1 booleans into bool fields; compose inherits that.
        let b = match self.scalar().map(str::trim) {
            Some(
                "true" | "True" | "TRUE" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" | "y" | "Y",
            ) => true,
            Some(
                "false" | "False" | "FALSE" | "no" | "No" | "NO" | "off" | "Off" | "OFF" | "n"
                | "N",
            ) => false,
            _ => return self.fail("a boolean (true or false)"),
        };
        visitor
            .visit_bool::<DeError>(b)
            .map_err(|e| e.located(self.node, &self.path))
    }

    de_uint!(deserialize_u8 u8 => visit_u8, deserialize_u16 u16 => visit_u16,
        deserialize_u32 u32 => visit_u32, deserialize_u64 u64 => visit_u64);
    de_int!(deserialize_i8 i8 => visit_i8, deserialize_i16 i16 => visit_i16,
        deserialize_i32 i32 => visit_i32, deserialize_i64 i64 => visit_i64);

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.scalar().map(|t| t.trim().parse::<f64>()) {
            Some(Ok(f)) if f.is_finite() => visitor
                .visit_f64::<DeError>(f)
                .map_err(|e| e.located(self.node, &self.path)),
            _ => self.fail("a number"),
        }
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.scalar() {
            Some(t) => visitor
                .visit_borrowed_str::<DeError>(t)
                .map_err(|e| e.located(self.node, &self.path)),
            None => self.fail("a string"),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.node.is_null() {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.node.is_null() {
            visitor.visit_unit()
        } else {
            self.fail("null")
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let (node, path) = (self.node, self.path.clone());
        visitor
            .visit_newtype_struct(self)
            .map_err(|e| e.located(node, &path))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let (node, path) = (self.node, self.path.clone());
        let r = match &node.value {
            Value::Seq(items) => visitor.visit_seq(self.seq(items)),
            Value::Null => visitor.visit_seq(self.seq(&[])),
            _ => return self.fail("a sequence"),
        };
        r.map_err(|e| e.located(node, &path))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, v: V) -> Result<V::Value, DeError> {
        self.deserialize_seq(v)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        static EMPTY: std::sync::LazyLock<Map> = std::sync::LazyLock::new(Map::new);
        let (node, path) = (self.node, self.path.clone());
        let r = match &node.value {
            Value::Map(map) => visitor.visit_map(self.map(map)),
            // `volumes: {db: }` and `networks: {default: }`: an empty value is an empty mapping.
            Value::Null => visitor.visit_map(self.map(&EMPTY)),
            _ => return self.fail("a mapping"),
        };
        r.map_err(|e| e.located(node, &path))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let (node, path) = (self.node, self.path.clone());
        let r = match &node.value {
            Value::Scalar(s) => visitor.visit_enum(s.text.as_str().into_deserializer()),
            Value::Map(map) if map.len() == 1 => {
                let (key, entry) = map.iter().next().expect("one entry");
                visitor.visit_enum(EnumDe {
                    key,
                    value: NodeDe::new(&entry.value, join_path(&path, key)),
                })
            }
            _ => return self.fail("a string"),
        };
        r.map_err(|e| e.located(node, &path))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }
}

struct SeqDe<'de> {
    items: std::iter::Enumerate<std::slice::Iter<'de, Node>>,
    path: String,
}

impl<'de> de::SeqAccess<'de> for SeqDe<'de> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.items.next() {
            Some((i, node)) => {
                let path = index_path(&self.path, i);
                seed.deserialize(NodeDe::new(node, path)).map(Some)
            }
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

type Entries<'de> = Box<dyn Iterator<Item = (&'de String, &'de crate::node::Entry)> + 'de>;

struct MapDe<'de> {
    entries: Entries<'de>,
    value: Option<(&'de Node, String)>,
    path: String,
}

impl<'de> de::MapAccess<'de> for MapDe<'de> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((key, entry)) = self.entries.next() else {
            return Ok(None);
        };
        let path = join_path(&self.path, key);
        let key_de: de::value::BorrowedStrDeserializer<'de, DeError> =
            de::value::BorrowedStrDeserializer::new(key.as_str());
        let k = seed.deserialize(key_de).map_err(|mut e| {
            if e.pos.is_none() {
                e.pos = Some(entry.key_pos.clone());
                e.path = Some(path.clone());
            }
            e
        })?;
        self.value = Some((&entry.value, path));
        Ok(Some(k))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let (node, path) = self
            .value
            .take()
            .ok_or_else(|| DeError::new("value requested before key"))?;
        seed.deserialize(NodeDe::new(node, path))
    }
}

struct EnumDe<'de> {
    key: &'de str,
    value: NodeDe<'de>,
}

impl<'de> de::EnumAccess<'de> for EnumDe<'de> {
    type Error = DeError;
    type Variant = NodeDe<'de>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, NodeDe<'de>), DeError> {
        let key: de::value::BorrowedStrDeserializer<'de, DeError> =
            de::value::BorrowedStrDeserializer::new(self.key);
        Ok((seed.deserialize(key)?, self.value))
    }
}

impl<'de> de::VariantAccess<'de> for NodeDe<'de> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_seq(self, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_map(self, visitor)
    }
}

/// The `x-*` keys of an object, kept verbatim; any other leftover key is an unknown field.
///
/// Use as `#[serde(flatten)] pub x: Extensions` on every struct of the model.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Extensions(pub IndexMap<String, serde_json::Value>);

impl Extensions {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de> Deserialize<'de> for Extensions {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Extensions;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Extensions, A::Error> {
                let mut out = IndexMap::new();
                while let Some(key) = map.next_key::<String>()? {
                    if !key.starts_with("x-") {
                        return Err(de::Error::unknown_field(&key, &[]));
                    }
                    let value: serde_json::Value = map.next_value()?;
                    out.insert(key, value);
                }
                Ok(Extensions(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests;
