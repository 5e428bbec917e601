//! Parsing one variable's text: durations, counts, choices, lists, URLs, password files. Every
//! error names the variable and what was expected, and never echoes a value that could be a secret.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use reqwest::Url;

use super::Secret;
use crate::error::{Kind, classified};

pub(super) fn config_error(message: impl Into<String>) -> anyhow::Error {
    classified(Kind::Config, message)
}

/// A present, non-empty value.
pub(super) fn present(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

pub(super) fn required<'a>(name: &str, value: &'a Option<String>, what: &str) -> Result<&'a str> {
    present(value).ok_or_else(|| config_error(format!("{name} is required: {what}")))
}

pub(super) fn parse_bool(name: &str, value: &Option<String>, default: bool) -> Result<bool> {
    match present(value).map(str::to_ascii_lowercase).as_deref() {
        None => Ok(default),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => Err(config_error(format!("{name} must be true or false, not {other:?}"))),
    }
}

pub(super) fn parse_duration(name: &str, value: &Option<String>, default: Duration) -> Result<Duration> {
    let Some(text) = present(value) else { return Ok(default) };
    let duration = humantime::parse_duration(text).map_err(|err| {
        config_error(format!("{name} must be a duration such as 30s, 2m or 1h30m, not {text:?} ({err})"))
    })?;
    if duration.is_zero() {
        return Err(config_error(format!("{name} must be longer than zero")));
    }
    Ok(duration)
}

pub(super) fn parse_count(name: &str, value: &Option<String>, default: u64, max: u64) -> Result<u64> {
    let Some(text) = present(value) else { return Ok(default) };
    match text.parse::<u64>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(config_error(format!("{name} must be a whole number from 1 to {max}, not {text:?}"))),
    }
}

pub(super) fn parse_choice<T: Copy>(
    name: &str,
    value: &Option<String>,
    default: T,
    choices: &[(&str, T)],
) -> Result<T> {
    let Some(text) = present(value) else { return Ok(default) };
    let lower = text.to_ascii_lowercase();
    choices.iter().find(|(word, _)| *word == lower).map(|(_, v)| *v).ok_or_else(|| {
        let words: Vec<&str> = choices.iter().map(|(w, _)| *w).collect();
        config_error(format!("{name} must be one of {}, not {text:?}", words.join(", ")))
    })
}

/// Comma-separated list; entries trimmed; empty entries kept only where the caller wants to see them.
pub(super) fn split_list(value: &str) -> Vec<String> {
    value.split(',').map(|item| item.trim().to_string()).collect()
}

/// A comma-separated list in which every entry must say something: an empty entry (`a,,b`, a
/// trailing comma, a template that rendered empty) is a configuration error naming the variable,
/// because dropping it silently could drop a protection.
pub(super) fn entries(name: &str, value: &str) -> Result<Vec<String>> {
    let items = split_list(value);
    if let Some(position) = items.iter().position(String::is_empty) {
        return Err(config_error(format!(
            "{name} has an empty entry (entry {} of {}): a template that rendered empty? Remove it or give it a value; \
             nothing was touched",
            position + 1,
            items.len()
        )));
    }
    Ok(items)
}

/// A password from `NAME` or `NAME_FILE`, never both. Only the trailing newline of a file is dropped.
pub(super) fn password(name: &str, value: &Option<String>, file: &Option<String>) -> Result<Option<Secret>> {
    match (value.as_deref().filter(|v| !v.is_empty()), present(file)) {
        (Some(_), Some(_)) => Err(config_error(format!("set {name} or {name}_FILE, not both"))),
        (Some(v), None) => Ok(Some(Secret::new(v))),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|err| config_error(format!("{name}_FILE: cannot read {path}: {err}")))?;
            Ok(Some(Secret::new(text.trim_end_matches(['\r', '\n']))))
        }
        (None, None) => Ok(None),
    }
}

pub(super) fn existing_file(name: &str, value: &Option<String>) -> Result<Option<PathBuf>> {
    let Some(path) = present(value) else { return Ok(None) };
    let path = PathBuf::from(path);
    if !path.is_file() {
        return Err(config_error(format!("{name}: {} is not a readable file", path.display())));
    }
    Ok(Some(path))
}

/// A CA bundle file: it must hold at least one certificate that parses, or a TLS connection would
/// later fail with a puzzling handshake error (or, with no certificate at all, fall back to the
/// built-in roots without a word).
pub(super) fn ca_bundle(name: &str, value: &Option<String>) -> Result<Option<PathBuf>> {
    let Some(path) = existing_file(name, value)? else { return Ok(None) };
    let pem =
        std::fs::read(&path).map_err(|err| config_error(format!("{name}: cannot read {}: {err}", path.display())))?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|err| config_error(format!("{name}: {} is not a PEM certificate bundle ({err})", path.display())))?;
    if certificates.is_empty() {
        return Err(config_error(format!(
            "{name}: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    // rustls parses the certificates themselves only when a client is built.
    let mut builder = reqwest::Client::builder();
    for certificate in certificates {
        builder = builder.add_root_certificate(certificate);
    }
    builder.build().map_err(|err| {
        config_error(format!("{name}: {} holds a certificate that does not parse ({err})", path.display()))
    })?;
    Ok(Some(path))
}

/// Whether a name is `.` or `..`, which URL normalisation removes from a path whatever its
/// encoding (WHATWG URL, "single-dot path segment"): such a vhost or queue cannot be addressed.
pub fn is_dot_segment(name: &str) -> bool {
    matches!(name, "." | "..")
}

/// Parses a URL without ever echoing it: it may carry a password in its userinfo.
pub(super) fn http_url(name: &str, text: &str) -> Result<Url> {
    let url = Url::parse(text).map_err(|err| config_error(format!("{name} is not a valid URL ({err})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(config_error(format!("{name} must start with http:// or https://")));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(config_error(format!(
            "{name} must not contain credentials; use the _USERNAME and _PASSWORD variables"
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(config_error(format!("{name} has no host")));
    }
    Ok(url)
}
