//! JSON helpers: reading files with errors that name them, and an order-preserving object reader.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::error::{DataError, Entry, Result};

/// Reads and parses a JSON file.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|source| DataError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a JSON file that must hold a list.
pub(crate) fn read_json_list(path: &Path) -> Result<Vec<Value>> {
    match read_json::<Value>(path)? {
        Value::Array(v) => Ok(v),
        other => Err(DataError::MalformedEntry {
            path: path.to_path_buf(),
            entry: Entry::File,
            reason: format!("expected a JSON list, found {}", kind(&other)),
        }),
    }
}

/// Reads a JSON file that must hold an object; keys keep their file order.
pub(crate) fn read_json_object(path: &Path) -> Result<Vec<(String, Value)>> {
    Ok(read_json::<OrderedObject>(path)?.0)
}

/// A short name for a JSON value's type.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Joins a relative path such as `./dev/x.png` to `root`, dropping `.` components.
pub(crate) fn resolve(root: &Path, rel: &str) -> PathBuf {
    let mut p = root.to_path_buf();
    for c in Path::new(rel).components() {
        match c {
            Component::CurDir => {}
            other => p.push(other.as_os_str()),
        }
    }
    p
}

/// A JSON object as an ordered list of (key, value).
struct OrderedObject(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for OrderedObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> std::result::Result<Self::Value, A::Error> {
                let mut v = Vec::with_capacity(m.size_hint().unwrap_or(0));
                while let Some((k, val)) = m.next_entry::<String, Value>()? {
                    v.push((k, val));
                }
                Ok(OrderedObject(v))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_drops_curdir() {
        assert_eq!(
            resolve(Path::new("/r"), "./dev/a.png"),
            PathBuf::from("/r/dev/a.png")
        );
        assert_eq!(
            resolve(Path::new("/r"), "train/34/b.png"),
            PathBuf::from("/r/train/34/b.png")
        );
    }

    #[test]
    fn ordered_object_keeps_order() {
        let o: OrderedObject = serde_json::from_str(r#"{"z": 1, "a": 2, "m": 3}"#).unwrap();
        let keys: Vec<_> = o.0.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["z", "a", "m"]);
        assert!(serde_json::from_str::<OrderedObject>("[1]").is_err());
    }
}
