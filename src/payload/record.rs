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

/// Why a CSV line could not be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsvError {
    #[error("a quoted field is not closed")]
    UnclosedQuote,
}

/// Split one comma-separated line: [`split_csv_with`] with `,`.
pub fn split_csv(line: &str) -> Result<Vec<Cow<'_, str>>, CsvError> {
    let mut out = Vec::new();
    split_csv_with(line, b',', &mut out)?;
    Ok(out)
}

/// Split one CSV line on `delimiter` (ASCII) into `out`, the way the `csv`
/// crate reads it (csv-core's parser): RFC 4180 quoting (`"a ""b"""` is
/// `a "b"`, a quoted field may hold the delimiter); a quote inside an
/// unquoted field is kept as written (`a,b"c` is `a` and `b"c`); a quoted
/// field that is not closed by the end of the line is an error. Every
/// source that reads CSV (logs, webhooks, MQTT/HTTP mappings) splits with
/// this. Lines without quotes borrow their fields; a trailing `\r` is
/// ignored.
pub fn split_csv_with<'a>(
    line: &'a str,
    delimiter: u8,
    out: &mut Vec<Cow<'a, str>>,
) -> Result<(), CsvError> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    if !line.contains('"') {
        // Without quotes, csv-core's fields are exactly the pieces between
        // delimiters; skip its copy.
        out.extend(line.split(delimiter as char).map(Cow::Borrowed));
        return Ok(());
    }
    let mut reader = csv_core::ReaderBuilder::new().delimiter(delimiter).build();
    // The line plus its terminator: the record ends at the newline unless a
    // quoted field is still open there.
    let mut input = Vec::with_capacity(line.len() + 1);
    input.extend_from_slice(line.as_bytes());
    input.push(b'\n');
    let mut output = vec![0u8; input.len()];
    let mut ends = vec![0usize; line.bytes().filter(|b| *b == delimiter).count() + 1];
    let (result, _, _, fields) = reader.read_record(&input, &mut output, &mut ends);
    if result != csv_core::ReadRecordResult::Record {
        return Err(CsvError::UnclosedQuote);
    }
    let mut start = 0;
    for &end in &ends[..fields] {
        // Fields split on ASCII bytes of valid UTF-8 are valid UTF-8.
        out.push(Cow::Owned(
            String::from_utf8_lossy(&output[start..end]).into_owned(),
        ));
        start = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_splits_plain_quoted_and_empty_fields() {
        let f = split_csv("a,\"b,c\",,\"say \"\"hi\"\"\"\r").unwrap();
        assert_eq!(f, vec!["a", "b,c", "", "say \"hi\""]);
        assert_eq!(split_csv("").unwrap(), vec![""]);
        assert_eq!(split_csv("x,").unwrap(), vec!["x", ""]);
    }

    #[test]
    fn csv_quotes_are_read_as_the_csv_crate_reads_them() {
        assert_eq!(split_csv("a,\"b"), Err(CsvError::UnclosedQuote));
        assert_eq!(split_csv("a,\"b,c\nd"), Err(CsvError::UnclosedQuote));
        // A quote inside an unquoted field is data (the mapping's splitter
        // used to agree, this one refused the line).
        assert_eq!(split_csv("a,b\"c").unwrap(), vec!["a", "b\"c"]);
        assert_eq!(split_csv("\"a\"b,c").unwrap(), vec!["ab", "c"]);
        let mut out = Vec::new();
        split_csv_with("x;\"1;5\";\"\"", b';', &mut out).unwrap();
        assert_eq!(out, vec!["x", "1;5", ""]);
        // The same lines through the csv crate itself.
        for line in ["a,b\"c", "\"a\"b,c", "a,\"b,c\",,\"say \"\"hi\"\"\""] {
            let mut r = csv::ReaderBuilder::new()
                .has_headers(false)
                .from_reader(line.as_bytes());
            let rec = r.records().next().unwrap().unwrap();
            let theirs: Vec<&str> = rec.iter().collect();
            assert_eq!(split_csv(line).unwrap(), theirs, "{line}");
        }
    }

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
