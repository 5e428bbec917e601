//! The etcd baseline (`CLEANSLATE_ETCD_SEED_FILE`): keys written after the delete and before the
//! marker, so a gated pod never starts on an empty prefix that its app expects to hold a lobby,
//! feature flags or a tenant. Read and judged before anything is touched: every key inside a
//! target prefix and outside every protected one, values within etcd's request limit.

use std::collections::BTreeMap;

use anyhow::Result;

use super::parse::config_error;

/// etcd's default `--max-request-bytes` is 1.5 MiB: a larger put, or a larger transaction, is
/// refused. A whole baseline of at most 1 MiB (keys and values) leaves room for the deletes and the
/// framing of any transaction it is split into.
pub const MAX_SEED_BYTES: usize = 1024 * 1024;

/// Reads the seed file: one YAML or JSON document mapping key to value. Values are strings;
/// numbers and booleans are written as their text; anything else (a list, a map, null) is refused.
pub fn read_seed(path: &str, prefixes: &[String], protected: &[String]) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| config_error(format!("CLEANSLATE_ETCD_SEED_FILE {path}: {err}")))?;
    let document: BTreeMap<String, serde_yaml::Value> = serde_yaml::from_str(&text).map_err(|err| {
        config_error(format!("CLEANSLATE_ETCD_SEED_FILE {path} is not one YAML or JSON map of key to value: {err}"))
    })?;
    let mut seed = Vec::with_capacity(document.len());
    for (key, value) in document {
        let value = match value {
            serde_yaml::Value::String(text) => text,
            serde_yaml::Value::Number(number) => number.to_string(),
            serde_yaml::Value::Bool(flag) => flag.to_string(),
            other => {
                return Err(config_error(format!(
                    "CLEANSLATE_ETCD_SEED_FILE: the value of {key:?} is not a string, number or boolean ({}); nothing was touched",
                    kind_of(&other)
                )));
            }
        };
        seed.push((key, value));
    }
    check(&seed, prefixes, protected)?;
    Ok(seed)
}

fn kind_of(value: &serde_yaml::Value) -> &'static str {
    match value {
        serde_yaml::Value::Null => "null",
        serde_yaml::Value::Sequence(_) => "a list",
        serde_yaml::Value::Mapping(_) => "a map",
        _ => "a tagged value",
    }
}

/// Every key inside a target prefix (else the delete would not make room for it, and it would write
/// outside what the release owns) and outside every protected prefix (a protection means "not
/// touched"); a value within etcd's request limit.
pub fn check(seed: &[(String, String)], prefixes: &[String], protected: &[String]) -> Result<()> {
    let mut total = 0;
    for (key, value) in seed {
        if key.is_empty() {
            return Err(config_error("CLEANSLATE_ETCD_SEED_FILE: a seed key is empty; nothing was touched"));
        }
        if !prefixes.iter().any(|prefix| !prefix.is_empty() && key.starts_with(prefix.as_str())) {
            return Err(config_error(format!(
                "CLEANSLATE_ETCD_SEED_FILE: seed key {key:?} lies outside every target prefix ({}); a seed writes only \
                 inside what the purge deletes; nothing was touched",
                prefixes.join(", ")
            )));
        }
        if let Some(kept) = protected.iter().find(|p| key.starts_with(p.as_str())) {
            return Err(config_error(format!(
                "CLEANSLATE_ETCD_SEED_FILE: seed key {key:?} lies under the protected prefix {kept:?}, which is never \
                 written; nothing was touched"
            )));
        }
        total += key.len() + value.len();
        if total > MAX_SEED_BYTES {
            return Err(config_error(format!(
                "CLEANSLATE_ETCD_SEED_FILE: the baseline passes {MAX_SEED_BYTES} bytes at seed key {key:?}: with the \
                 deletes it would not fit etcd's request limit (1.5 MiB by default); a baseline, not a data set; \
                 nothing was touched"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Kind, kind_of as error_kind};

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// Keys inside a target and outside the protected prefixes pass; anything else is refused
    /// (78), naming the key.
    #[test]
    fn seed_keys_stay_inside_the_targets() {
        let prefixes = strings(&["shop/"]);
        let protected = strings(&["shop/locks/"]);
        let ok = vec![("shop/lobby".to_string(), "open".to_string())];
        assert!(check(&ok, &prefixes, &protected).is_ok());
        for (key, says) in [("other/lobby", "outside every target"), ("shop/locks/a", "protected"), ("", "empty")] {
            let err = check(&[(key.to_string(), "v".into())], &prefixes, &protected).expect_err("refused");
            assert_eq!(error_kind(&err), Kind::Config, "{key:?}");
            assert!(format!("{err:#}").contains(says), "{key:?}: {err:#}");
        }
        let huge = vec![("shop/big".to_string(), "x".repeat(MAX_SEED_BYTES))];
        assert!(format!("{:#}", check(&huge, &prefixes, &protected).unwrap_err()).contains("request limit"));
    }

    /// YAML and JSON maps read; numbers and booleans become text; a nested map is refused.
    #[test]
    fn the_file_is_one_map_of_scalars() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seed.yaml");
        std::fs::write(&path, "shop/lobby: open\nshop/max: 10\nshop/beta: true\n").unwrap();
        let seed = read_seed(path.to_str().unwrap(), &strings(&["shop/"]), &[]).expect("reads");
        assert_eq!(
            seed,
            vec![
                ("shop/beta".to_string(), "true".to_string()),
                ("shop/lobby".to_string(), "open".to_string()),
                ("shop/max".to_string(), "10".to_string())
            ]
        );
        std::fs::write(&path, r#"{"shop/lobby": "open"}"#).unwrap();
        assert_eq!(read_seed(path.to_str().unwrap(), &strings(&["shop/"]), &[]).unwrap().len(), 1, "JSON");
        std::fs::write(&path, "shop/flags: {a: 1}\n").unwrap();
        let err = read_seed(path.to_str().unwrap(), &strings(&["shop/"]), &[]).expect_err("nested");
        assert!(format!("{err:#}").contains("a map"), "{err:#}");
    }
}
