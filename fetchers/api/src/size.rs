//! Byte sizes in configuration: a number of bytes, or a string with a unit (`"256MiB"`).
//!
//! For serde: `#[serde(with = "handover_fetcher::size")]` on a `u64` field, or
//! `#[serde(default, with = "handover_fetcher::size::option")]` on an `Option<u64>`. Shared by
//! the core and every fetcher, so `max_size` reads the same everywhere.

use serde::{de, Deserializer, Serializer};

/// Writes the size as a number of bytes.
pub fn serialize<S: Serializer>(bytes: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(*bytes)
}

/// Reads a number of bytes, or a string such as `"256MiB"` (see [`parse`]).
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct Visitor;
    impl de::Visitor<'_> for Visitor {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a size in bytes, or a string such as \"256MiB\"")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom("a size cannot be negative"))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            parse(v).ok_or_else(|| E::custom(format!("{v:?} is not a size such as \"256MiB\"")))
        }
    }
    d.deserialize_any(Visitor)
}

/// The same for an `Option<u64>` (a key that may be left out): use with `#[serde(default)]`.
pub mod option {
    use serde::{Deserializer, Serializer};

    /// Writes the size as a number of bytes, or nothing.
    pub fn serialize<S: Serializer>(bytes: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => s.serialize_some(bytes),
            None => s.serialize_none(),
        }
    }

    /// Reads a size as [`super::deserialize`] does.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        super::deserialize(d).map(Some)
    }
}

/// Parses `"10"`, `"4 KiB"`, `"2MB"`, `"1GiB"`: B, k/kB, KiB, M/MB, MiB, G/GB, GiB
/// (case-insensitive). `None` for anything else or an overflow.
pub fn parse(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(factor)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        use super::parse;
        assert_eq!(parse("10"), Some(10));
        assert_eq!(parse("4 KiB"), Some(4096));
        assert_eq!(parse("2MB"), Some(2_000_000));
        assert_eq!(parse("1GiB"), Some(1 << 30));
        assert_eq!(parse("1TiB"), None);
        assert_eq!(parse("MiB"), None);
        assert_eq!(parse("99999999999GiB"), None);
    }
}
