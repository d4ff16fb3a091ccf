//! Reading fields out of untyped JSON records with errors that name the field.
//!
//! Every format is parsed into a `serde_json::Value` first and read through these
//! helpers rather than through derived `Deserialize` impls, because serde's messages
//! ("invalid type: integer, expected a string at line 1 column 80") do not say
//! *which* field of a nested export was wrong, and that is the one thing a user with
//! a large export needs to know.

use serde_json::{Map, Value};

/// Timestamp given to a message when neither it nor its conversation has one. A
/// fixed value, not "now", so that loading the same file twice gives the same
/// conversations (and the same fingerprints).
pub const FALLBACK_TIMESTAMP: &str = "1970-01-01T00:00:00";

/// What is wrong with one record; the caller adds the file and the location.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FieldError(pub String);

pub(crate) type FieldResult<T> = std::result::Result<T, FieldError>;

/// `prefix.key`, or `key` at the top level.
pub(crate) fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// `prefix[index]`.
pub(crate) fn index(prefix: &str, index: usize) -> String {
    format!("{prefix}[{index}]")
}

/// How a value is described in an error: its type, or a short quote of a string.
pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(_) => "a boolean".to_string(),
        Value::Number(_) => "a number".to_string(),
        Value::String(s) => format!("{:?}", crate::text::truncate_chars(s, 40)),
        Value::Array(_) => "an array".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

pub(crate) fn expected(path: &str, what: &str, found: &Value) -> FieldError {
    FieldError(format!(
        "field \"{path}\": expected {what}, found {}",
        describe(found)
    ))
}

pub(crate) fn missing(path: &str) -> FieldError {
    FieldError(format!("field \"{path}\" is missing"))
}

pub(crate) fn as_object<'a>(value: &'a Value, path: &str) -> FieldResult<&'a Map<String, Value>> {
    value
        .as_object()
        .ok_or_else(|| expected(path, "an object", value))
}

/// A field that must be present and a string.
pub(crate) fn required_str<'a>(
    object: &'a Map<String, Value>,
    key: &str,
    prefix: &str,
) -> FieldResult<&'a str> {
    optional_str(object, key, prefix)?.ok_or_else(|| missing(&join(prefix, key)))
}

/// A field that may be absent or null, but is a string when present.
pub(crate) fn optional_str<'a>(
    object: &'a Map<String, Value>,
    key: &str,
    prefix: &str,
) -> FieldResult<Option<&'a str>> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(expected(&join(prefix, key), "a string", other)),
    }
}

/// A field that must be present and an array.
pub(crate) fn required_array<'a>(
    object: &'a Map<String, Value>,
    key: &str,
    prefix: &str,
) -> FieldResult<&'a Vec<Value>> {
    let path = join(prefix, key);
    match object.get(key) {
        None | Some(Value::Null) => Err(missing(&path)),
        Some(Value::Array(items)) => Ok(items),
        Some(other) => Err(expected(&path, "an array", other)),
    }
}

/// A timestamp field: an ISO-8601 string is kept as written; a number is read as
/// Unix seconds (or milliseconds, when it is too large to be seconds).
pub(crate) fn optional_timestamp(
    object: &Map<String, Value>,
    key: &str,
    prefix: &str,
) -> FieldResult<Option<String>> {
    let path = join(prefix, key);
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => {
            let seconds = n.as_f64().unwrap_or(f64::NAN);
            // 1e11 seconds is the year 5138: a number that large is milliseconds.
            let seconds = if seconds.abs() >= 1e11 {
                seconds / 1000.0
            } else {
                seconds
            };
            unix_seconds_to_iso(seconds).map(Some).ok_or_else(|| {
                FieldError(format!("field \"{path}\": {n} is not a valid Unix time"))
            })
        }
        Some(other) => Err(expected(
            &path,
            "a timestamp (string or Unix seconds)",
            other,
        )),
    }
}

/// Unix seconds as an ISO-8601 UTC string with microseconds when there are any,
/// written the way pydantic writes an aware UTC datetime (`2025-06-01T22:55:12.682483Z`),
/// so Python Kura reads it back. `None` for values outside the years 1..=9999.
pub(crate) fn unix_seconds_to_iso(seconds: f64) -> Option<String> {
    const MIN_SECONDS: f64 = -62_135_596_800.0; // 0001-01-01T00:00:00Z
    const MAX_SECONDS: f64 = 253_402_300_799.0; // 9999-12-31T23:59:59Z
    if !seconds.is_finite() || !(MIN_SECONDS..=MAX_SECONDS).contains(&seconds) {
        return None;
    }
    let micros = (seconds * 1e6).round() as i64;
    let whole = micros.div_euclid(1_000_000);
    let fraction = micros.rem_euclid(1_000_000);
    let (year, month, day) = civil_from_days(whole.div_euclid(86_400));
    let second_of_day = whole.rem_euclid(86_400);
    let (hour, minute, second) = (
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60,
    );
    let mut out = format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}");
    if fraction > 0 {
        out.push_str(&format!(".{fraction:06}"));
    }
    out.push('Z');
    Some(out)
}

/// Proleptic Gregorian (year, month, day) of a count of days since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_seconds_become_utc_iso_strings() {
        // Reference values from Python's datetime.fromtimestamp(t, timezone.utc).
        assert_eq!(
            unix_seconds_to_iso(1_748_818_512.682_483).as_deref(),
            Some("2025-06-01T22:55:12.682483Z")
        );
        assert_eq!(
            unix_seconds_to_iso(0.0).as_deref(),
            Some("1970-01-01T00:00:00Z")
        );
        assert_eq!(
            unix_seconds_to_iso(951_782_400.0).as_deref(),
            Some("2000-02-29T00:00:00Z")
        );
        assert_eq!(
            unix_seconds_to_iso(-1.5).as_deref(),
            Some("1969-12-31T23:59:58.500000Z")
        );
        assert_eq!(unix_seconds_to_iso(f64::NAN), None);
        assert_eq!(unix_seconds_to_iso(1e13), None);
    }

    #[test]
    fn errors_name_the_field_and_what_was_found() {
        let record: Value = serde_json::json!({"a": 3, "b": null, "c": "x"});
        let object = record.as_object().unwrap();
        assert_eq!(
            required_str(object, "a", "messages[1]").unwrap_err().0,
            "field \"messages[1].a\": expected a string, found a number"
        );
        assert_eq!(
            required_str(object, "b", "").unwrap_err().0,
            "field \"b\" is missing"
        );
        assert_eq!(optional_str(object, "c", "").unwrap(), Some("x"));
    }
}
