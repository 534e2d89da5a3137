//! The one CSV splitter of every source that reads CSV (logs, webhooks,
//! MQTT/HTTP mappings).

use std::borrow::Cow;

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
}
