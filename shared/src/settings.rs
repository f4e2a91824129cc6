//! Configuration plumbing shared by the agent and the ingester: reading a
//! TOML file, the injectable environment, and the error that lists every
//! problem at once. (No Kafka or ClickHouse here; each binary owns its keys.)

use std::path::Path;

use serde::de::DeserializeOwned;

/// A source of environment variables, injectable so tests never touch the
/// process environment.
pub trait EnvSource {
    /// The value of `name`, if set.
    fn var(&self, name: &str) -> Option<String>;
    /// The names of every variable set.
    fn names(&self) -> Vec<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn names(&self) -> Vec<String> {
        std::env::vars_os()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect()
    }
}

/// A fixed list of variables, for tests.
impl<const N: usize> EnvSource for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    }
    fn names(&self) -> Vec<String> {
        self.iter().map(|(k, _)| (*k).to_owned()).collect()
    }
}

/// A variable a binary reads, and the older names that still work (with a
/// warning) until the next release.
#[derive(Debug, Clone, Copy)]
pub struct EnvVar {
    /// Its name, which starts with the binary's prefix.
    pub name: &'static str,
    /// Deprecated names for the same setting.
    pub old: &'static [&'static str],
}

impl EnvVar {
    /// A variable with no older name.
    pub const fn new(name: &'static str) -> EnvVar {
        EnvVar { name, old: &[] }
    }

    /// A variable that older releases read under other names.
    pub const fn renamed(name: &'static str, old: &'static [&'static str]) -> EnvVar {
        EnvVar { name, old }
    }
}

/// How a binary reads its environment, the same for both binaries:
/// - every variable it reads starts with its own prefix (`SPILLWAY_AGENT_`,
///   `SPILLWAY_INGESTER_`), so one environment can configure both;
/// - a variable with that prefix that it does not read is an error (a typo
///   would otherwise be ignored silently);
/// - an empty value counts as unset;
/// - a deprecated name still works and produces a warning.
#[derive(Debug, Clone, Copy)]
pub struct EnvPolicy {
    /// The prefix every variable of the binary starts with.
    pub prefix: &'static str,
    /// Every variable the binary reads.
    pub vars: &'static [EnvVar],
}

impl EnvPolicy {
    /// Starts reading `env` under this policy.
    pub fn reader<'a>(&'a self, env: &'a dyn EnvSource) -> EnvReader<'a> {
        EnvReader {
            policy: self,
            env,
            warnings: Vec::new(),
            errors: Vec::new(),
            applied: Vec::new(),
        }
    }
}

/// Reads variables under an [`EnvPolicy`], collecting deprecation warnings.
pub struct EnvReader<'a> {
    policy: &'a EnvPolicy,
    env: &'a dyn EnvSource,
    warnings: Vec<String>,
    errors: Vec<String>,
    applied: Vec<String>,
}

impl EnvReader<'_> {
    /// The value of `name` (or of one of its deprecated names), unless empty.
    pub fn get(&mut self, name: &str) -> Option<String> {
        let set = |n: &str| self.env.var(n).filter(|v| !v.is_empty());
        if let Some(v) = set(name) {
            self.applied.push(name.to_owned());
            return Some(v);
        }
        let var = self.policy.vars.iter().find(|v| v.name == name)?;
        for old in var.old {
            if let Some(v) = set(old) {
                self.warnings.push(format!(
                    "{old} is deprecated and will stop working in the next release; use {name}"
                ));
                self.applied.push((*old).to_owned());
                return Some(v);
            }
        }
        None
    }

    /// The variables read so far that were set (under the name that was
    /// set), in the order read: what the environment decided over the file.
    pub fn applied(&self) -> Vec<String> {
        self.applied.clone()
    }

    /// [`get`](Self::get), parsed; a value that does not parse is an error
    /// naming the variable (reported by [`finish`](Self::finish)).
    pub fn parse<T>(&mut self, name: &str) -> Option<T>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        let v = self.get(name)?;
        match v.parse() {
            Ok(t) => Some(t),
            Err(e) => {
                self.errors.push(format!("{name}: {e}"));
                None
            }
        }
    }

    /// The value of `name` as a duration (`10s`, `500ms`, `1m`); one that
    /// is not becomes an error that shows the form.
    pub fn duration(&mut self, name: &str) -> Option<std::time::Duration> {
        let v = self.get(name)?;
        match parse_duration(&v) {
            Ok(d) => Some(d),
            Err(e) => {
                self.errors.push(format!("{name}: {e}"));
                None
            }
        }
    }

    /// The errors (values that did not parse, then every variable with the
    /// policy's prefix that the binary does not read) and the deprecation
    /// warnings.
    pub fn finish(self) -> (Vec<String>, Vec<String>) {
        let mut unknown: Vec<String> = self
            .env
            .names()
            .into_iter()
            .filter(|n| {
                n.starts_with(self.policy.prefix) && !self.policy.vars.iter().any(|v| v.name == n)
            })
            .map(|n| {
                format!(
                    "{n}: unknown variable (this program reads {})",
                    self.policy
                        .vars
                        .iter()
                        .map(|v| v.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
            .collect();
        unknown.sort();
        let mut errors = self.errors;
        errors.extend(unknown);
        (errors, self.warnings)
    }
}

/// Every problem found while loading or validating a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

/// Parses TOML text into `T`; every problem of the text at once.
pub fn parse_toml<T: DeserializeOwned>(text: &str) -> Result<T, ConfigErrors> {
    match parse_toml_all(text) {
        (Some(value), errors) if errors.is_empty() => Ok(value),
        (_, errors) => Err(ConfigErrors(errors)),
    }
}

/// The most problems one file reports (a file that is not TOML at all
/// would otherwise be reported line by line).
const MAX_TOML_PROBLEMS: usize = 32;

/// Parses TOML text into `T`, reporting every problem rather than the
/// first: serde stops at the first unknown key or wrong type, so the line
/// it names is set aside (a table header: its whole table) and the rest
/// parsed again, until it parses. Lines are blanked, not removed, so every
/// message's line number is the file's. Returns what parsed without the
/// lines set aside (`None` if nothing did) and the problems.
pub fn parse_toml_all<T: DeserializeOwned>(text: &str) -> (Option<T>, Vec<String>) {
    let mut lines: Vec<&str> = text.lines().collect();
    // (line, message), reported in the file's order.
    let mut errors: Vec<(usize, String)> = Vec::new();
    let in_order = |mut errors: Vec<(usize, String)>| {
        errors.sort_by_key(|(line, _)| *line);
        errors.into_iter().map(|(_, m)| m).collect()
    };
    loop {
        let current = lines.join("\n");
        let error = match toml::from_str::<T>(&current) {
            Ok(value) => return (Some(value), in_order(errors)),
            Err(e) => e,
        };
        let message = error.to_string().trim().to_owned();
        let line = match error.span() {
            Some(span) if errors.len() + 1 < MAX_TOML_PROBLEMS => current
                [..span.start.min(current.len())]
                .matches('\n')
                .count(),
            _ => {
                errors.push((usize::MAX, message));
                return (None, in_order(errors));
            }
        };
        errors.push((line, message));
        // A table header goes with its keys, up to the next header.
        let end = if lines
            .get(line)
            .is_some_and(|l| l.trim_start().starts_with('['))
        {
            (line + 1..lines.len())
                .find(|&i| lines[i].trim_start().starts_with('['))
                .unwrap_or(lines.len())
        } else {
            line + 1
        };
        if lines
            .get(line..end)
            .is_none_or(|ls| ls.iter().all(|l| l.is_empty()))
        {
            return (None, in_order(errors));
        }
        for l in &mut lines[line..end] {
            *l = "";
        }
    }
}

/// A program's configuration, as [`load`] builds it.
pub trait Settings: DeserializeOwned + Default {
    /// Applies the environment; returns the problems found.
    fn apply_env(&mut self, env: &dyn EnvSource) -> Vec<String>;
    /// Reads the files the configuration names (password files); returns
    /// the problems found.
    fn read_files(&mut self) -> Vec<String> {
        Vec::new()
    }
    /// Checks every rule; reports all problems at once.
    fn validate(&self) -> Result<(), ConfigErrors>;
}

/// Loads a program's configuration: the file (or the defaults when `path`
/// is `None`), then the environment, then the files it names; validates,
/// and reports every problem of every step at once.
pub fn load<T: Settings>(path: Option<&Path>, env: &dyn EnvSource) -> Result<T, ConfigErrors> {
    // A file with problems still gives the rest of its settings, so that
    // the environment's and the rules' problems are reported with its own.
    let (mut config, mut errors): (T, Vec<String>) = match path {
        None => (T::default(), Vec::new()),
        Some(p) => read_toml_all(p)?,
    };
    errors.extend(config.apply_env(env));
    errors.extend(config.read_files());
    if let Err(ConfigErrors(more)) = config.validate() {
        errors.extend(more);
    }
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Reads and parses a TOML file: what parsed (the defaults where nothing
/// did) and every problem, each naming the file. An unreadable file is the
/// one error.
fn read_toml_all<T: DeserializeOwned + Default>(
    p: &Path,
) -> Result<(T, Vec<String>), ConfigErrors> {
    let text = std::fs::read_to_string(p).map_err(|e| {
        ConfigErrors(vec![format!(
            "cannot read config file {}: {e}",
            p.display()
        )])
    })?;
    let (value, errors) = parse_toml_all(&text);
    let errors = errors
        .into_iter()
        .map(|m| format!("{}: {m}", p.display()))
        .collect();
    Ok((value.unwrap_or_default(), errors))
}

/// The problem with `url`, the value of `key`, unless it is an http(s) URL.
pub fn http_url_problem(key: &str, url: &str) -> Option<String> {
    (!(url.starts_with("http://") || url.starts_with("https://")))
        .then(|| format!("{key} `{url}` must start with http:// or https://"))
}

/// A secret from configuration (a password). `Debug` never shows it, so a
/// configuration dumped with `{:?}`, or an error that carries one, does not
/// leak it; [`Secret::expose`] is the one way to read it.
#[derive(Clone, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it is empty (not set).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "\"<redacted>\""
        })
    }
}

/// librdkafka properties passed through from configuration. `Debug` redacts
/// the values of keys that hold secrets (`sasl.password`,
/// `ssl.key.password`, `ssl.key.pem`, `sasl.oauthbearer.client.secret`, ...).
#[derive(Clone, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(transparent)]
pub struct Properties(pub std::collections::BTreeMap<String, String>);

impl Properties {
    /// Whether the value of `key` is a secret.
    pub fn is_secret(key: &str) -> bool {
        let k = key.to_ascii_lowercase();
        [
            "password",
            "secret",
            "jaas",
            "token",
            ".pem",
            "key.pem",
            "credential",
        ]
        .iter()
        .any(|s| k.contains(s))
            || k.ends_with(".key")
    }
}

impl std::ops::Deref for Properties {
    type Target = std::collections::BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Properties {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl<'a> IntoIterator for &'a Properties {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let shown = if Self::is_secret(k) {
                    "<redacted>"
                } else {
                    v.as_str()
                };
                (k, shown)
            }))
            .finish()
    }
}

#[cfg(test)]
mod env_policy_tests {
    use super::*;

    const POLICY: EnvPolicy = EnvPolicy {
        prefix: "APP_",
        vars: &[
            EnvVar {
                name: "APP_URLS",
                old: &["OLD_URLS", "OLD_URL"],
            },
            EnvVar {
                name: "APP_USER",
                old: &[],
            },
        ],
    };

    #[test]
    fn new_names_win_old_names_warn_empty_is_unset() {
        let env = [("APP_URLS", "new"), ("OLD_URLS", "old"), ("APP_USER", "")];
        let mut r = POLICY.reader(&env);
        assert_eq!(r.get("APP_URLS").as_deref(), Some("new"));
        assert_eq!(r.get("APP_USER"), None);
        assert_eq!(r.applied(), ["APP_URLS"]);
        assert_eq!(r.finish(), (vec![], vec![]));

        let env = [("OLD_URL", "old")];
        let mut r = POLICY.reader(&env);
        assert_eq!(r.get("APP_URLS").as_deref(), Some("old"));
        assert_eq!(r.applied(), ["OLD_URL"]);
        let (errors, warnings) = r.finish();
        assert!(errors.is_empty());
        assert_eq!(
            warnings,
            ["OLD_URL is deprecated and will stop working in the next release; use APP_URLS"]
        );
    }

    #[test]
    fn an_unknown_variable_with_the_prefix_is_an_error() {
        let env = [("APP_URL", "typo"), ("OTHER_X", "not ours")];
        let (errors, _) = POLICY.reader(&env).finish();
        assert_eq!(
            errors,
            ["APP_URL: unknown variable (this program reads APP_URLS, APP_USER)"]
        );
    }
}

#[cfg(test)]
mod secret_tests {
    use super::*;

    #[test]
    fn debug_never_shows_a_secret() {
        let s = Secret::from("hunter2".to_owned());
        assert_eq!(format!("{s:?}"), "\"<redacted>\"");
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(format!("{:?}", Secret::default()), "\"\"");

        let mut p = Properties::default();
        for (k, v) in [
            ("sasl.password", "s3cret-1"),
            ("ssl.key.password", "s3cret-2"),
            ("ssl.key.pem", "s3cret-3"),
            ("sasl.oauthbearer.client.secret", "s3cret-4"),
            ("sasl.username", "alice"),
            ("security.protocol", "SASL_SSL"),
        ] {
            p.insert(k.into(), v.into());
        }
        let shown = format!("{p:?}");
        for secret in ["s3cret-1", "s3cret-2", "s3cret-3", "s3cret-4"] {
            assert!(!shown.contains(secret), "{secret} leaked in {shown}");
        }
        assert!(
            shown.contains("alice") && shown.contains("SASL_SSL"),
            "{shown}"
        );
    }
}

/// A duration as the configuration files write it (`10s`, `500ms`, `1m`,
/// `1h 30m`); the error names the value and shows the form.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    text.trim().parse::<humantime::Duration>().map(Into::into).map_err(|e| {
        format!("`{text}` is not a duration ({e}); write it with a unit, like `10s`, `500ms` or `1m`")
    })
}

#[cfg(test)]
mod duration_tests {
    use super::*;

    #[test]
    fn a_duration_without_a_unit_is_refused_with_the_form() {
        assert_eq!(
            parse_duration("10s"),
            Ok(std::time::Duration::from_secs(10))
        );
        let e = parse_duration("abc").unwrap_err();
        assert!(
            e.contains("`abc` is not a duration") && e.contains("`10s`"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod toml_problem_tests {
    use super::*;

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Agent {
        interval: u64,
        name: String,
    }

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct File {
        agent: Agent,
        topic: String,
    }

    #[test]
    fn every_unknown_key_and_wrong_type_is_reported_in_the_files_order() {
        let text = "topik = \"x\"\n[agent]\nintervl = 1\nname = 5\n[colect]\na = 1\n";
        let (parsed, errors) = parse_toml_all::<File>(text);
        assert_eq!(errors.len(), 4, "{errors:#?}");
        for (e, (line, needle)) in errors.iter().zip([
            (1, "unknown field `topik`"),
            (3, "unknown field `intervl`"),
            (4, "invalid type: integer `5`"),
            (5, "unknown field `colect`"),
        ]) {
            assert!(e.contains(&format!("line {line},")), "{e}");
            assert!(e.contains(needle), "{e}");
        }
        // What is left parses: the rest of the file still applies.
        assert!(parsed.is_some());
    }

    #[test]
    fn a_valid_file_has_no_problems_and_text_that_is_not_toml_stops() {
        let (parsed, errors) = parse_toml_all::<File>("topic = \"t\"\n[agent]\ninterval = 3\n");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            parsed.map(|f| (f.topic, f.agent.interval)),
            Some(("t".into(), 3))
        );
        let (_, errors) = parse_toml_all::<File>(&"= = =\n".repeat(100));
        assert!(
            !errors.is_empty() && errors.len() <= MAX_TOML_PROBLEMS,
            "{}",
            errors.len()
        );
    }
}
