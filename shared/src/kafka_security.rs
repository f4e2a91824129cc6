//! TLS and SASL towards Kafka, as configuration both programs share: the
//! `[kafka.tls]` and `[kafka.sasl]` blocks and the librdkafka properties
//! they become. No Kafka client here: each program passes
//! [`KafkaSecurity::properties`] to its own.
//!
//! librdkafka's names are the reference (CONFIGURATION.md): `security.protocol`
//! follows from which blocks are set (`SSL`, `SASL_PLAINTEXT`, `SASL_SSL`);
//! without a CA file, `ssl.ca.location = probe` makes librdkafka look for the
//! system's CA store in the usual places instead of the OpenSSL build's own
//! directory (a statically linked OpenSSL looks in `/usr/local/ssl`, where
//! Debian keeps nothing: fede1024/rust-rdkafka#594).

use std::path::PathBuf;

use serde::Deserialize;

use crate::settings::{Properties, Secret};

/// `[kafka.tls]`: encrypt the connection to the brokers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaTls {
    /// Use TLS. Setting any other key of the block turns it on.
    pub enabled: bool,
    /// PEM file of the CA(s) that sign the brokers' certificates; the
    /// system's CA store when unset.
    pub ca_file: Option<PathBuf>,
    /// PEM file of this client's certificate (mutual TLS).
    pub cert_file: Option<PathBuf>,
    /// PEM file of this client's private key (mutual TLS).
    pub key_file: Option<PathBuf>,
    /// File holding the private key's password, if the key is encrypted.
    pub key_password_file: Option<PathBuf>,
    /// Check that the broker's certificate names the host connected to.
    pub verify_hostname: bool,
    /// The key password, read from `key_password_file`.
    #[serde(skip)]
    pub key_password: Secret,
}

impl Default for KafkaTls {
    fn default() -> Self {
        KafkaTls {
            enabled: false,
            ca_file: None,
            cert_file: None,
            key_file: None,
            key_password_file: None,
            verify_hostname: true,
            key_password: Secret::default(),
        }
    }
}

/// SASL mechanisms librdkafka offers that Spillway configures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SaslMechanism {
    /// Username and password in the clear (use it over TLS only).
    #[serde(rename = "PLAIN")]
    Plain,
    /// Salted challenge-response, SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// Salted challenge-response, SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    /// OAuth 2 bearer tokens from an OIDC token endpoint (client
    /// credentials).
    #[serde(rename = "OAUTHBEARER")]
    OauthBearer,
}

impl SaslMechanism {
    /// librdkafka's name.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::OauthBearer => "OAUTHBEARER",
        }
    }
}

/// `[kafka.sasl]`: authenticate to the brokers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSasl {
    /// `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512` or `OAUTHBEARER`.
    pub mechanism: SaslMechanism,
    /// User name (PLAIN, SCRAM).
    #[serde(default)]
    pub username: String,
    /// Password (PLAIN, SCRAM). Prefer `password_file`.
    #[serde(default)]
    pub password: Secret,
    /// A file holding the password (trailing newline ignored).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// OIDC token endpoint (OAUTHBEARER).
    #[serde(default)]
    pub token_endpoint_url: String,
    /// OIDC client id (OAUTHBEARER).
    #[serde(default)]
    pub client_id: String,
    /// OIDC client secret (OAUTHBEARER). Prefer `client_secret_file`.
    #[serde(default)]
    pub client_secret: Secret,
    /// A file holding the client secret.
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// OIDC scope (OAUTHBEARER), optional.
    #[serde(default)]
    pub scope: String,
}

/// The `tls` and `sasl` blocks of a program's `[kafka]` section, seen
/// together: what they become and what they rule out.
#[derive(Debug, Clone, Copy, Default)]
pub struct KafkaSecurity<'a> {
    /// TLS; plaintext when absent.
    pub tls: Option<&'a KafkaTls>,
    /// SASL; none when absent.
    pub sasl: Option<&'a KafkaSasl>,
}

/// The environment variables of the blocks, after a program's prefix
/// (`SPILLWAY_AGENT_`, `SPILLWAY_INGESTER_`).
pub const ENV_SUFFIXES: [&str; 6] = [
    "KAFKA_TLS_CA_FILE",
    "KAFKA_TLS_CERT_FILE",
    "KAFKA_TLS_KEY_FILE",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD_FILE",
];

/// Applies `<prefix>KAFKA_TLS_*` and `<prefix>KAFKA_SASL_*` (a TLS variable
/// turns TLS on; the SASL ones need a mechanism, from the file or
/// `<prefix>KAFKA_SASL_MECHANISM`); returns the problems.
pub fn apply_env(
    tls: &mut Option<KafkaTls>,
    sasl: &mut Option<KafkaSasl>,
    r: &mut crate::settings::EnvReader<'_>,
    prefix: &str,
) -> Vec<String> {
    let mut errors = Vec::new();
    let var = |suffix: &str| format!("{prefix}{suffix}");
    for (suffix, field) in [
        ("KAFKA_TLS_CA_FILE", 0),
        ("KAFKA_TLS_CERT_FILE", 1),
        ("KAFKA_TLS_KEY_FILE", 2),
    ] {
        if let Some(v) = r.get(&var(suffix)) {
            let t = tls.get_or_insert_with(KafkaTls::default);
            let slot = match field {
                0 => &mut t.ca_file,
                1 => &mut t.cert_file,
                _ => &mut t.key_file,
            };
            *slot = Some(v.into());
        }
    }
    if let Some(m) = r.get(&var("KAFKA_SASL_MECHANISM")) {
        match toml::Value::String(m.clone()).try_into::<SaslMechanism>() {
            Ok(mechanism) => match sasl {
                Some(s) => s.mechanism = mechanism,
                None => *sasl = Some(KafkaSasl::new(mechanism)),
            },
            Err(_) => errors.push(format!(
                "{}: `{m}` is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER",
                var("KAFKA_SASL_MECHANISM")
            )),
        }
    }
    for suffix in ["KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD_FILE"] {
        if let Some(v) = r.get(&var(suffix)) {
            match sasl {
                Some(s) if suffix.ends_with("USERNAME") => s.username = v,
                Some(s) => s.password_file = Some(v.into()),
                None => errors.push(format!(
                    "{} needs a SASL mechanism: set {} or [kafka.sasl] mechanism",
                    var(suffix),
                    var("KAFKA_SASL_MECHANISM")
                )),
            }
        }
    }
    errors
}

/// Reads the files both blocks name (secrets; certificates checked to be
/// readable); returns the problems.
pub fn read_files(
    tls: &mut Option<KafkaTls>,
    sasl: &mut Option<KafkaSasl>,
    section: &str,
) -> Vec<String> {
    let mut errors = Vec::new();
    if let Some(t) = tls {
        errors.extend(t.read_files(section));
    }
    if let Some(s) = sasl {
        errors.extend(s.read_files(section));
    }
    errors
}

impl KafkaSasl {
    /// A block with only its mechanism set.
    pub fn new(mechanism: SaslMechanism) -> Self {
        KafkaSasl {
            mechanism,
            username: String::new(),
            password: Secret::default(),
            password_file: None,
            token_endpoint_url: String::new(),
            client_id: String::new(),
            client_secret: Secret::default(),
            client_secret_file: None,
            scope: String::new(),
        }
    }

    /// Reads the password and client secret files.
    pub fn read_files(&mut self, section: &str) -> Vec<String> {
        let mut errors = Vec::new();
        read_secret(
            &self.password_file,
            &mut self.password,
            &format!("{section}.sasl.password_file"),
            &mut errors,
        );
        read_secret(
            &self.client_secret_file,
            &mut self.client_secret,
            &format!("{section}.sasl.client_secret_file"),
            &mut errors,
        );
        errors
    }
}

impl KafkaTls {
    /// Reads the key password file, and checks that the certificate and
    /// key files can be opened (librdkafka reads them itself).
    pub fn read_files(&mut self, section: &str) -> Vec<String> {
        let mut errors = Vec::new();
        read_secret(
            &self.key_password_file,
            &mut self.key_password,
            &format!("{section}.tls.key_password_file"),
            &mut errors,
        );
        for (key, file) in [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
        ] {
            if let Some(path) = file
                && let Err(e) = std::fs::File::open(path)
            {
                errors.push(format!("{section}.tls.{key} {}: {e}", path.display()));
            }
        }
        errors
    }
}

/// Reads a secret file (trailing newline ignored) into `into`.
fn read_secret(file: &Option<PathBuf>, into: &mut Secret, key: &str, errors: &mut Vec<String>) {
    if let Some(path) = file {
        match std::fs::read_to_string(path) {
            Ok(s) => *into = s.trim_end_matches(['\r', '\n']).to_owned().into(),
            Err(e) => errors.push(format!("{key} {}: {e}", path.display())),
        }
    }
}

impl KafkaSecurity<'_> {
    /// Whether TLS is on.
    pub fn tls_enabled(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| {
            t.enabled
                || t.ca_file.is_some()
                || t.cert_file.is_some()
                || t.key_file.is_some()
                || t.key_password_file.is_some()
        })
    }

    /// Every problem of the blocks, and every pass-through property that
    /// would contradict them (`section` names the `[kafka]` section).
    pub fn validate(&self, section: &str, properties: &Properties) -> Vec<String> {
        let mut errors = Vec::new();
        if let Some(t) = self.tls {
            if t.cert_file.is_some() != t.key_file.is_some() {
                errors.push(format!(
                    "{section}.tls: cert_file and key_file go together (mutual TLS needs both)"
                ));
            }
            if t.key_password_file.is_some() && t.key_file.is_none() {
                errors.push(format!(
                    "{section}.tls.key_password_file is set without key_file"
                ));
            }
        }
        if let Some(s) = self.sasl {
            let password = !s.password.is_empty() || s.password_file.is_some();
            match s.mechanism {
                SaslMechanism::Plain | SaslMechanism::ScramSha256 | SaslMechanism::ScramSha512 => {
                    if s.username.is_empty() {
                        errors.push(format!(
                            "{section}.sasl.username is required for {}",
                            s.mechanism.as_str()
                        ));
                    }
                    if !password {
                        errors.push(format!(
                            "{section}.sasl: password or password_file is required for {}",
                            s.mechanism.as_str()
                        ));
                    }
                }
                SaslMechanism::OauthBearer => {
                    for (key, empty) in [
                        ("token_endpoint_url", s.token_endpoint_url.is_empty()),
                        ("client_id", s.client_id.is_empty()),
                        (
                            "client_secret",
                            s.client_secret.is_empty() && s.client_secret_file.is_none(),
                        ),
                    ] {
                        if empty {
                            errors
                                .push(format!("{section}.sasl.{key} is required for OAUTHBEARER"));
                        }
                    }
                }
            }
            if s.mechanism == SaslMechanism::Plain && !self.tls_enabled() {
                errors.push(format!(
                    "{section}.sasl: PLAIN sends the password in the clear; enable {section}.tls"
                ));
            }
        }
        // A pass-through property must not silently win over, or lose to,
        // a setting of the blocks.
        for (key, _) in self.properties() {
            if properties.contains_key(&key) {
                errors.push(format!(
                    "{section}.properties.{key} conflicts with {section}.tls / {section}.sasl, which set it: keep one"
                ));
            }
        }
        errors
    }

    /// The librdkafka properties the blocks stand for (secrets included:
    /// pass them to the client, never to a log).
    pub fn properties(&self) -> Vec<(String, String)> {
        let tls = self.tls_enabled();
        let mut out = Vec::new();
        let mut set = |k: &str, v: &str| out.push((k.to_owned(), v.to_owned()));
        match (tls, self.sasl.is_some()) {
            (false, false) => return Vec::new(),
            (true, false) => set("security.protocol", "SSL"),
            (false, true) => set("security.protocol", "SASL_PLAINTEXT"),
            (true, true) => set("security.protocol", "SASL_SSL"),
        }
        if let Some(t) = self.tls.filter(|_| tls) {
            match &t.ca_file {
                Some(ca) => set("ssl.ca.location", &ca.display().to_string()),
                None => set("ssl.ca.location", "probe"),
            }
            if let (Some(cert), Some(key)) = (&t.cert_file, &t.key_file) {
                set("ssl.certificate.location", &cert.display().to_string());
                set("ssl.key.location", &key.display().to_string());
                if !t.key_password.is_empty() {
                    set("ssl.key.password", t.key_password.expose());
                }
            }
            set(
                "ssl.endpoint.identification.algorithm",
                if t.verify_hostname { "https" } else { "none" },
            );
        }
        if let Some(s) = self.sasl {
            set("sasl.mechanism", s.mechanism.as_str());
            match s.mechanism {
                SaslMechanism::OauthBearer => {
                    set("sasl.oauthbearer.method", "oidc");
                    set("sasl.oauthbearer.token.endpoint.url", &s.token_endpoint_url);
                    set("sasl.oauthbearer.client.id", &s.client_id);
                    set("sasl.oauthbearer.client.secret", s.client_secret.expose());
                    if !s.scope.is_empty() {
                        set("sasl.oauthbearer.scope", &s.scope);
                    }
                }
                _ => {
                    set("sasl.username", &s.username);
                    set("sasl.password", s.password.expose());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Blocks {
        tls: Option<KafkaTls>,
        sasl: Option<KafkaSasl>,
    }

    fn parse(toml: &str) -> Blocks {
        toml::from_str(toml).expect("valid")
    }

    impl Blocks {
        fn view(&self) -> KafkaSecurity<'_> {
            KafkaSecurity {
                tls: self.tls.as_ref(),
                sasl: self.sasl.as_ref(),
            }
        }
    }

    fn props(b: &Blocks) -> std::collections::BTreeMap<String, String> {
        b.view().properties().into_iter().collect()
    }

    #[test]
    fn nothing_set_is_plaintext() {
        assert!(KafkaSecurity::default().properties().is_empty());
    }

    #[test]
    fn tls_with_the_system_store_probes_for_it() {
        let s = parse("[tls]\nenabled = true\n");
        let p = props(&s);
        assert_eq!(p["security.protocol"], "SSL");
        assert_eq!(p["ssl.ca.location"], "probe");
        assert_eq!(p["ssl.endpoint.identification.algorithm"], "https");
        assert!(
            s.view()
                .validate("kafka", &Properties::default())
                .is_empty()
        );
    }

    #[test]
    fn mutual_tls_and_scram_make_sasl_ssl() {
        let s = parse(
            "[tls]\nca_file = \"/ca.pem\"\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\n\
             [sasl]\nmechanism = \"SCRAM-SHA-512\"\nusername = \"u\"\npassword = \"p\"\n",
        );
        let p = props(&s);
        assert_eq!(p["security.protocol"], "SASL_SSL");
        assert_eq!(p["ssl.ca.location"], "/ca.pem");
        assert_eq!(p["ssl.certificate.location"], "/c.pem");
        assert_eq!(p["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(p["sasl.password"], "p");
        assert!(format!("{s:?}").contains("<redacted>") && !format!("{s:?}").contains("\"p\""));
    }

    #[test]
    fn every_problem_is_reported() {
        let s = parse("[tls]\ncert_file = \"/c.pem\"\n[sasl]\nmechanism = \"PLAIN\"\n");
        let mut pass = Properties::default();
        pass.insert("security.protocol".into(), "SSL".into());
        pass.insert("sasl.mechanism".into(), "PLAIN".into());
        let errors = s.view().validate("kafka", &pass).join("\n");
        for needle in [
            "go together",
            "username is required",
            "password or password_file",
            "sasl.mechanism conflicts",
            "security.protocol conflicts",
        ] {
            assert!(errors.contains(needle), "{needle} missing from:\n{errors}");
        }
        let plain = parse("[sasl]\nmechanism = \"PLAIN\"\nusername = \"u\"\npassword = \"p\"\n");
        assert!(plain.view().validate("kafka", &Properties::default())[0].contains("in the clear"));
        assert!(toml::from_str::<Blocks>("[sasl]\nmechanism = \"GSSAPI\"\n").is_err());
    }
}
