//! What the master's children inherit of its environment: all of it, except the credentials
//! handover's fetchers read, unless the configuration's `pass_env` names them.
//!
//! The master needs `GITHUB_TOKEN` or the AWS keys to poll for releases. A worker, the sanity
//! run of a candidate nobody has vetted yet, or the `pre_upgrade` hook has no use for them, and
//! a compromised candidate would take them along. Every child the master starts gets its
//! environment through [`scrub`] (workers, the hook) or [`inherited`] (the sanity run, whose
//! environment is built by hand).
//!
//! The allow-list is process-wide, like the environment it filters: it is set from the
//! configuration when a master is built ([`pass`]), and a process runs one master.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::process::Command;
use std::sync::RwLock;

/// The environment variables the master withholds from every process it starts (workers,
/// sanity runs, the `pre_upgrade` hook) unless `pass_env` names them: the credentials
/// handover's fetchers read. A name ending in `*` stands for every variable that starts with
/// what precedes it (`AWS_*`: the keys, session token, profile, region and every other
/// setting of the AWS chain).
pub const SECRET_ENV: &[&str] = &["GITHUB_TOKEN", "HANDOVER_HTTP_TOKEN", "AWS_*"];

/// The secrets children receive after all (`pass_env`).
static PASSED: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Sets which of the [`SECRET_ENV`] variables children receive after all.
pub(crate) fn pass(names: &[String]) {
    let mut passed = PASSED
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    *passed = names.to_vec();
}

/// Whether `name` is one of the [`SECRET_ENV`] variables.
pub(crate) fn is_secret(name: &OsStr) -> bool {
    let name = name.as_bytes();
    SECRET_ENV
        .iter()
        .any(|secret| match secret.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix.as_bytes()),
            None => name == secret.as_bytes(),
        })
}

/// Checks `pass_env`: variable names, one by one, each of them withheld without it.
pub(crate) fn check_pass_env(names: &[String]) -> Result<(), String> {
    for name in names {
        if name.is_empty() || name.contains(['=', '*', '\0']) {
            return Err(format!(
                "names variables one by one; {name:?} is not a variable name"
            ));
        }
        if !is_secret(name.as_ref()) {
            return Err(format!(
                "names {name:?}, which children receive anyway: only {} are withheld",
                SECRET_ENV.join(", ")
            ));
        }
    }
    Ok(())
}

/// The variables of this process's environment that its children must not see now.
pub(crate) fn withheld() -> Vec<OsString> {
    let passed = PASSED
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    std::env::vars_os()
        .map(|(name, _)| name)
        .filter(|name| is_secret(name) && !passed.iter().any(|p| OsStr::new(p) == name))
        .collect()
}

/// Removes the withheld variables from what `command` passes on.
pub(crate) fn scrub(command: &mut Command) {
    for name in withheld() {
        command.env_remove(name);
    }
}

/// This process's environment without the withheld variables.
pub(crate) fn inherited() -> Vec<(OsString, OsString)> {
    let withheld = withheld();
    std::env::vars_os()
        .filter(|(name, _)| !withheld.contains(name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secrets_are_the_fetchers_credentials_and_every_aws_variable() {
        for name in [
            "GITHUB_TOKEN",
            "HANDOVER_HTTP_TOKEN",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_REGION",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        ] {
            assert!(is_secret(OsStr::new(name)), "{name}");
        }
        for name in [
            "PATH",
            "HOME",
            "RUST_LOG",
            "GITHUB_TOKENS",
            "XAWS_KEY",
            "aws_region",
        ] {
            assert!(!is_secret(OsStr::new(name)), "{name}");
        }
    }

    #[test]
    fn pass_env_names_withheld_secrets_only() {
        let config =
            crate::Config::from_toml("pass_env = [\"AWS_REGION\", \"GITHUB_TOKEN\"]\n", "t")
                .unwrap();
        assert_eq!(config.pass_env, ["AWS_REGION", "GITHUB_TOKEN"]);
        let err = crate::Config::from_toml("\npass_env = [\"PATH\"]\n", "h.toml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "h.toml:2: pass_env names \"PATH\", which children receive anyway: only \
             GITHUB_TOKEN, HANDOVER_HTTP_TOKEN, AWS_* are withheld"
        );
        let err = crate::Config::from_toml("pass_env = [\"AWS_*\"]\n", "h.toml").unwrap_err();
        assert!(err.to_string().contains("one by one"), "{err}");
        let built = crate::Config::builder()
            .pass_env(&["AWS_PROFILE"])
            .build()
            .unwrap();
        assert_eq!(built.pass_env, ["AWS_PROFILE"]);
        assert!(crate::Config::builder()
            .pass_env(&["HOME"])
            .build()
            .is_err());
    }
}
