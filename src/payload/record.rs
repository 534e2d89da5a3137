//! Records: one parsed event (a log line's regex captures, a JSON object, a
//! CSV row) seen through field paths, so metric mappings and event rules
//! work the same on every format.

use std::borrow::Cow;
use std::fmt;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Deserializer};

/// A field of a record: a capture name, a CSV column, or a JSON path in
/// the one syntax of [`super::mapping::JsonPath`] (`payment.amount`,
/// `items[0].sku` or `items.0.sku`).
#[derive(Clone)]
pub struct FieldPath {
    raw: Box<str>,
    /// The path compiled for JSON records; `None` when the text is not a
    /// JSON path (a CSV column named `t[c]`), which then finds nothing in
    /// JSON.
    json: Option<super::mapping::JsonPath>,
}

impl PartialEq for FieldPath {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}

impl Eq for FieldPath {}

impl FieldPath {
    pub fn new(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("a field path must not be empty".into());
        }
        if raw.split('.').any(|s| s.is_empty()) {
            return Err(format!("field path {raw:?} has an empty segment"));
        }
        Ok(FieldPath {
            raw: raw.into(),
            json: super::mapping::JsonPath::parse(raw).ok(),
        })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl fmt::Debug for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.raw)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl<'de> Deserialize<'de> for FieldPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        FieldPath::new(&s).map_err(serde::de::Error::custom)
    }
}

/// The value of one field.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Str(Cow<'a, str>),
    Num(f64),
    Bool(bool),
}

impl Value<'_> {
    /// The value as a number: numbers as they are, strings parsed
    /// (surrounding blanks ignored), booleans as 1 and 0.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Num(n) => Some(*n),
            Value::Str(s) => s.trim().parse().ok(),
            Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        }
    }

    /// Append the value as text (a label value, a string comparison).
    pub fn write_str(&self, out: &mut String) {
        match self {
            Value::Str(s) => out.push_str(s),
            Value::Num(n) => {
                use std::fmt::Write as _;
                let _ = write!(out, "{n}");
            }
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        }
    }
}

/// One event seen through field paths.
pub trait Record {
    /// The value at `path`; `None` when the field is absent (or JSON null,
    /// an object or an array).
    fn get(&self, path: &FieldPath) -> Option<Value<'_>>;
}

/// A JSON value (normally an object).
pub struct JsonRecord<'a>(pub &'a serde_json::Value);

impl<'a> JsonRecord<'a> {
    /// The JSON value at `path`, whatever its type.
    pub fn lookup(&self, path: &FieldPath) -> Option<&'a serde_json::Value> {
        path.json.as_ref()?.get(self.0)
    }
}

impl Record for JsonRecord<'_> {
    fn get(&self, path: &FieldPath) -> Option<Value<'_>> {
        match self.lookup(path)? {
            serde_json::Value::String(s) => Some(Value::Str(Cow::Borrowed(s))),
            serde_json::Value::Number(n) => n.as_f64().map(Value::Num),
            serde_json::Value::Bool(b) => Some(Value::Bool(*b)),
            _ => None,
        }
    }
}

/// One CSV row with its column names.
pub struct CsvRecord<'a> {
    pub columns: &'a [Box<str>],
    pub fields: &'a [Cow<'a, str>],
}

impl Record for CsvRecord<'_> {
    fn get(&self, path: &FieldPath) -> Option<Value<'_>> {
        let i = self.columns.iter().position(|c| **c == *path.as_str())?;
        let f = self.fields.get(i)?;
        if f.is_empty() {
            None
        } else {
            Some(Value::Str(Cow::Borrowed(f.as_ref())))
        }
    }
}

/// The named captures of a regex match on a line.
pub struct CapturesRecord<'a> {
    pub line: &'a str,
    pub locations: &'a regex::CaptureLocations,
    /// Capture name → group index.
    pub names: &'a FxHashMap<Box<str>, usize>,
}

impl Record for CapturesRecord<'_> {
    fn get(&self, path: &FieldPath) -> Option<Value<'_>> {
        let i = *self.names.get(path.as_str())?;
        let (start, end) = self.locations.get(i)?;
        Some(Value::Str(Cow::Borrowed(self.line.get(start..end)?)))
    }
}

/// The CSV splitter lives in [`super::csv`]; kept here at its old path.
pub use super::csv::{CsvError, split_csv, split_csv_with};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_paths_walk_objects_and_arrays() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{"a":{"b":[{"c":2.5},{"c":"x"}]},"ok":true,"n":null}"#)
                .unwrap();
        let r = JsonRecord(&v);
        let p = |s| FieldPath::new(s).unwrap();
        assert_eq!(r.get(&p("a.b.0.c")), Some(Value::Num(2.5)));
        assert_eq!(r.get(&p("a.b.1.c")), Some(Value::Str("x".into())));
        assert_eq!(r.get(&p("ok")), Some(Value::Bool(true)));
        assert_eq!(r.get(&p("n")), None);
        assert_eq!(r.get(&p("a.b.9.c")), None);
        // The mappings' bracket form is the same path.
        assert_eq!(r.get(&p("a.b[1].c")), Some(Value::Str("x".into())));
        assert_eq!(r.get(&p("$.a.b[0].c")), Some(Value::Num(2.5)));
        assert!(FieldPath::new("a..b").is_err());
    }

    #[test]
    fn values_convert_to_numbers_and_text() {
        assert_eq!(Value::Str(" 12.5 ".into()).as_f64(), Some(12.5));
        assert_eq!(Value::Str("x".into()).as_f64(), None);
        let mut s = String::new();
        Value::Num(125000.0).write_str(&mut s);
        assert_eq!(s, "125000");
    }
}
