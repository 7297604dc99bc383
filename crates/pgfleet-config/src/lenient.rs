//! Numbers that may arrive as strings.
//!
//! `${PORT}` substitution and `PGFLEET__…` environment overrides always
//! produce strings, and YAML users quote numbers; a port is still a port.

use std::fmt::Display;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, de::Error as _};

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrString<T> {
    Number(T),
    String(String),
}

fn lenient<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + FromStr,
    T::Err: Display,
{
    match NumberOrString::<T>::deserialize(deserializer)? {
        NumberOrString::Number(n) => Ok(n),
        NumberOrString::String(s) => s
            .trim()
            .parse()
            .map_err(|e| D::Error::custom(format!("{s:?} is not a valid number: {e}"))),
    }
}

pub(crate) fn lenient_u16<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    lenient(d)
}

pub(crate) fn lenient_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    lenient(d)
}

pub(crate) fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    lenient(d)
}

pub(crate) fn lenient_opt_u16<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    lenient(d).map(Some)
}

pub(crate) fn lenient_opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    lenient(d).map(Some)
}

pub(crate) fn lenient_f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    lenient(d)
}
