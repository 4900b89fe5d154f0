//! Configuration, in two stages: a raw serde shape (unknown fields refused)
//! layered from the embedded defaults (`config/default.toml`), an optional
//! file and `BILLSTREAM__<SECTION>__<KEY>` environment overrides; then
//! validated once into typed `Settings` (durations, the engine's rules),
//! passed around explicitly — never a global. Every error names the field.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use rust_decimal::Decimal;
use serde::Deserialize;

use crate::engine::config::InputWindows;
use crate::engine::time::{Timestamp, MICROS_PER_DAY};
use crate::engine::EngineConfig;

/// The defaults, embedded at build time from the readable file.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

/// Most live credit grants `billing.max_credit_grants` may allow per account.
const MAX_CREDIT_GRANTS: u32 = 1_000;
/// Most subjects `billing.max_subjects` may name per metric and period.
const MAX_SUBJECTS: u32 = 10_000;
/// Bounds of `kafka.max_record_bytes`: a bounded invoice or dead letter
/// needs some room; Kafka's own limits stop far below the upper one.
const MIN_RECORD_BYTES: u64 = 64 * 1024;
const MAX_RECORD_BYTES: u64 = 256 * 1024 * 1024;

/// Prefix of environment overrides: `BILLSTREAM__KAFKA__BROKERS=…`.
pub const ENV_PREFIX: &str = "BILLSTREAM__";

/// A configuration problem, naming the field (`kafka.brokers`) or source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {reason}")]
    Read { path: String, reason: String },
    /// A layer is not valid TOML, or does not fit the configuration's shape
    /// (unknown field, wrong type).
    #[error("{source_name}: {reason}")]
    Shape { source_name: String, reason: String },
    /// A field has a value billstream cannot use.
    #[error("config field `{field}`: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_string(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    environment: String,
    clock: String,
    kafka: RawKafka,
    topics: Topics,
    store: RawStore,
    batch: RawBatch,
    billing: RawBilling,
    api: RawApi,
    metrics: RawMetrics,
    run: RawRun,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    mode: String,
    shadow_prefix: String,
}

/// `run.mode`: what the processor may publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunMode {
    /// Every output to its topic.
    Live,
    /// Everything is computed and stored, but every output topic (and the
    /// internal progress topic) is named `prefix` + its configured name,
    /// and nothing that moves money or reaches a customer is published:
    /// the sinks drop charge requests and notifications
    /// (`sink::publishes`). For running beside the biller of record until
    /// billstream's invoices are trusted (`billstream reconcile`).
    Shadow { prefix: String },
}

impl RunMode {
    pub fn is_shadow(&self) -> bool {
        matches!(self, RunMode::Shadow { .. })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKafka {
    brokers: String,
    group_id: String,
    topic_prefix: String,
    session_timeout: String,
    max_poll_interval: String,
    unknown_account_wait: String,
    timer_hold: String,
    input_partitioner: String,
    transactional: bool,
    transactional_id: String,
    group_instance_id: String,
    id_headers: bool,
    max_record_bytes: u64,
    schema_registry_url: String,
    schema_registry_username: String,
    schema_registry_password: String,
    schema_registry_timeout: String,
    #[serde(default)]
    properties: std::collections::BTreeMap<String, PropertyValue>,
}

/// A librdkafka property value: librdkafka takes text, but `linger.ms = 5`
/// in the file or `BILLSTREAM__KAFKA__PROPERTIES__LINGER.MS=5` in the
/// environment reads as a number, so numbers and booleans are accepted and
/// passed on as their text.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum PropertyValue {
    Text(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
}

impl PropertyValue {
    fn text(&self) -> String {
        match self {
            PropertyValue::Text(s) => s.clone(),
            PropertyValue::Integer(n) => n.to_string(),
            PropertyValue::Float(x) => x.to_string(),
            PropertyValue::Bool(b) => b.to_string(),
        }
    }
}

/// Topic names (before the prefix).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topics {
    pub usage: String,
    pub payments: String,
    pub accounts: String,
    pub plans: String,
    pub invoices: String,
    pub charges: String,
    pub notifications: String,
    pub usage_rollups: String,
    pub journal: String,
    pub dlq: String,
    /// Internal, compacted, co-partitioned with the inputs: with
    /// `kafka.transactional`, each transaction records per account the
    /// last journal seq (and the dead letters) it published, so a new
    /// owner never publishes a committed output again.
    pub progress: String,
}

impl Topics {
    /// Every topic, in field order.
    fn all(&self) -> [&str; 11] {
        [
            &self.usage,
            &self.payments,
            &self.accounts,
            &self.plans,
            &self.invoices,
            &self.charges,
            &self.notifications,
            &self.usage_rollups,
            &self.journal,
            &self.dlq,
            &self.progress,
        ]
    }

    /// The name in this configuration (renamed, prefix applied) of the
    /// topic whose built-in default name is `default`: `schemas/manifest.json`
    /// names each record's topic by its default name.
    pub fn configured(&self, default: &str) -> Option<&str> {
        static DEFAULT: std::sync::OnceLock<Option<Topics>> = std::sync::OnceLock::new();
        let defaults = DEFAULT.get_or_init(|| {
            let mut table = parse_layer("built-in defaults", DEFAULTS).ok()?;
            table.remove("topics")?.try_into().ok()
        });
        let i = defaults
            .as_ref()?
            .all()
            .iter()
            .position(|t| *t == default)?;
        Some(self.all()[i])
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    kind: String,
    path: String,
    scylla_nodes: Vec<String>,
    keyspace: String,
    replication_class: String,
    replication_factor: u32,
    #[serde(default)]
    datacenters: std::collections::BTreeMap<String, u32>,
    local_datacenter: String,
    username: String,
    password: String,
    tls_ca_file: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatch {
    max_records: u64,
    max_wait: String,
    prefetch_kbytes: u64,
    checkpoint_events: u64,
    checkpoint_interval: String,
    max_unwritten_events: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBilling {
    grace: String,
    payment_terms: String,
    retry_schedule: Vec<String>,
    future_tolerance: String,
    late_window: String,
    dedup_window: String,
    /// Replaced by `late_window` (issue 12): refused with a pointer to it.
    #[serde(default)]
    late_periods: Option<toml::Value>,
    max_backdating: String,
    credit_low_threshold: String,
    expiry_warning: String,
    credit_expiry_warning: String,
    max_credit_grants: u32,
    rollup_lateness: String,
    max_quantity: String,
    max_subjects: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    listen: String,
    role_claim: String,
    report_max_accounts: u32,
    dead_letter_file: String,
    plans_file: String,
    jwt: RawJwt,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwt {
    algorithm: String,
    secret: String,
    public_key_path: String,
    issuer: String,
    audience: String,
}

/// The read-only HTTP API (`billstream api`, or `billstream run --api`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSettings {
    pub listen: std::net::SocketAddr,
    /// Claim of the token that lists its roles (an array of strings, or
    /// one space-separated string); it must contain `billing:read`.
    pub role_claim: String,
    /// The reports under the API (`/v1/reports/...`) and the console's
    /// charts across accounts read every account's journal: with more
    /// accounts than this they refuse (use `billstream report`). The
    /// console's search reads at most this many account ids.
    pub report_max_accounts: usize,
    /// The console reads dead letters from this JSON-lines file (the
    /// embedded mode's `billing.dlq.v1.jsonl`) instead of the DLQ topic.
    pub dead_letter_file: Option<PathBuf>,
    /// The price book is read from this JSON-lines file of plans (the
    /// demo's `plans.jsonl`, `simulate --plans`'s format) at start instead
    /// of the plans topic: the API then needs no Kafka and no registry.
    pub plans_file: Option<PathBuf>,
    pub jwt: JwtSettings,
}

/// How bearer tokens are verified. The key is checked when the API
/// starts (`api::auth::Verifier::from_settings`), so that processes that
/// serve no API need none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSettings {
    pub key: JwtKey,
    /// Required `iss` claim, if set.
    pub issuer: Option<String>,
    /// Required `aud` claim, if set.
    pub audience: Option<String>,
}

/// The verification key, by algorithm.
#[derive(Clone, PartialEq, Eq)]
pub enum JwtKey {
    /// HS256 with a shared secret (`api.jwt.secret`; empty = not configured).
    Hs256 { secret: String },
    /// RS256 with an RSA public key in a PEM file (`api.jwt.public_key_path`).
    Rs256 { public_key_path: PathBuf },
}

/// The secret never reaches a log or `billstream config`.
impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwtKey::Hs256 { secret } => f
                .debug_struct("Hs256")
                .field(
                    "secret",
                    &if secret.is_empty() {
                        "<not set>"
                    } else {
                        "<redacted>"
                    },
                )
                .finish(),
            JwtKey::Rs256 { public_key_path } => f
                .debug_struct("Rs256")
                .field("public_key_path", public_key_path)
                .finish(),
        }
    }
}

impl RawApi {
    fn validate(&self) -> Result<ApiSettings, ConfigError> {
        let listen = self.listen.trim().parse().map_err(|_| {
            invalid(
                "api.listen",
                format!(
                    "{:?} is not an address such as \"127.0.0.1:8080\"",
                    self.listen
                ),
            )
        })?;
        let role_claim = self.role_claim.trim();
        if role_claim.is_empty() {
            return Err(invalid("api.role_claim", "must not be empty"));
        }
        let j = &self.jwt;
        let key = match j.algorithm.trim() {
            "HS256" => {
                if !j.public_key_path.trim().is_empty() {
                    return Err(invalid(
                        "api.jwt.public_key_path",
                        "is for RS256; HS256 takes api.jwt.secret",
                    ));
                }
                if !j.secret.is_empty() && j.secret.len() < 32 {
                    return Err(invalid(
                        "api.jwt.secret",
                        "must be at least 32 bytes (256 bits) for HS256",
                    ));
                }
                JwtKey::Hs256 {
                    secret: j.secret.clone(),
                }
            }
            "RS256" => {
                if !j.secret.is_empty() {
                    return Err(invalid(
                        "api.jwt.secret",
                        "is for HS256; RS256 takes api.jwt.public_key_path",
                    ));
                }
                JwtKey::Rs256 {
                    public_key_path: PathBuf::from(j.public_key_path.trim()),
                }
            }
            other => {
                return Err(invalid(
                    "api.jwt.algorithm",
                    format!("{other:?} is not \"HS256\" or \"RS256\""),
                ))
            }
        };
        if self.report_max_accounts == 0 {
            return Err(invalid("api.report_max_accounts", "must be at least 1"));
        }
        let optional = |v: &str| (!v.trim().is_empty()).then(|| v.trim().to_string());
        Ok(ApiSettings {
            listen,
            role_claim: role_claim.to_string(),
            report_max_accounts: self.report_max_accounts as usize,
            dead_letter_file: optional(&self.dead_letter_file).map(PathBuf::from),
            plans_file: optional(&self.plans_file).map(PathBuf::from),
            jwt: JwtSettings {
                key,
                issuer: optional(&j.issuer),
                audience: optional(&j.audience),
            },
        })
    }
}

/// Kafka connection and consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    pub brokers: String,
    pub group_id: String,
    pub session_timeout: Duration,
    pub max_poll_interval: Duration,
    /// `kafka.unknown_account_wait`: how long a payments or usage record of
    /// an account not opened yet may wait for the accounts topic, while
    /// its partition there still has records to read, before it is
    /// dead-lettered `unknown_account` (zero: at once).
    pub unknown_account_wait: Duration,
    /// `kafka.timer_hold`: how far behind the processing clock timers may
    /// be held while an input partition has records left to read (they
    /// follow its stream time meanwhile; `KafkaSource::timers_floor`).
    pub timer_hold: Duration,
    /// `kafka.input_partitioner`: the partitioner the input topics'
    /// producers use; a record outside the partition its key hashes to is
    /// dead-lettered `wrong_partition` (`Any`: not checked).
    pub input_partitioner: crate::source::partitioner::Partitioner,
    pub transactional: bool,
    /// `transactional.id` of this instance's producer when `transactional`
    /// (stable across its restarts, unique among instances).
    pub transactional_id: Option<String>,
    /// Static group membership (`group.instance.id`): stable across this
    /// instance's restarts and unique among instances; `None`: dynamic.
    pub group_instance_id: Option<String>,
    /// `kafka.id_headers`: outputs also carry `event_id` and
    /// `causation_id` as Kafka headers (they are always in the payload).
    pub id_headers: bool,
    /// `kafka.max_record_bytes`: the largest record (payload, key and
    /// headers) the sink produces; a larger output or dead letter goes out
    /// in a bounded form under the same id (`contracts::bounded`).
    pub max_record_bytes: usize,
    /// A Confluent-compatible Schema Registry (`kafka.schema_registry_url`);
    /// `None`: schema ids come from `schemas/manifest.json`.
    pub schema_registry: Option<RegistrySettings>,
    /// Extra librdkafka properties for every client (`debug`, tuning, TLS
    /// and SASL: `security.protocol`, `ssl.ca.location`, `sasl.*`), applied
    /// after billstream's own settings.
    pub properties: KafkaProperties,
}

/// `kafka.properties`: a map of librdkafka property names to values. Its
/// `Debug` (what `billstream config` prints) shows every name but redacts
/// the value of any secret-looking one (`is_secret_property`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaProperties(pub std::collections::BTreeMap<String, String>);

/// Whether a librdkafka property holds a secret: any password
/// (`sasl.password`, `ssl.key.password`, `ssl.keystore.password`…), any
/// secret (`sasl.oauthbearer.client.secret`), a JAAS or OAUTHBEARER
/// configuration (they embed credentials), or a private key in PEM.
pub fn is_secret_property(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "password",
        "secret",
        "jaas",
        "oauthbearer.config",
        "key.pem",
    ]
    .iter()
    .any(|marker| name.contains(marker))
}

/// Why `kafka.properties` may not set `name` to `value`, if it may not:
/// the librdkafka properties billstream's guarantees rest on (SPEC §4).
/// Values that change nothing (the ones billstream sets itself) pass.
pub fn guarded_property(name: &str, value: &str) -> Option<String> {
    let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
    let (required, why) = match name.as_str() {
        "partition.assignment.strategy" => (
            "range",
            "billstream assigns with the range assignor, which hands partition p of every input topic to one member: the topics are co-partitioned by account, so one account has one owner; another assignor splits an account's topics between members",
        ),
        "enable.auto.commit" => (
            "false",
            "billstream commits input offsets itself, only after the state they produced is durable and its outputs acknowledged; auto-commit would commit records that were never applied",
        ),
        "enable.auto.offset.store" => (
            "false",
            "billstream stores the offsets to commit itself, after the state is durable",
        ),
        "auto.offset.reset" => (
            "earliest",
            "a partition with no committed offset must be read from its start, or the records before the first fetch are never billed",
        ),
        "isolation.level" => (
            "read_committed",
            "inputs of aborted producer transactions must not be billed",
        ),
        "enable.idempotence" => (
            "true",
            "the producer must not duplicate or reorder outputs on its retries",
        ),
        "acks" => (
            "all",
            "an output counts as published only once every in-sync replica has it",
        ),
        "group.id" | "group.instance.id" | "transactional.id" | "bootstrap.servers" => {
            return Some(format!(
                "set through kafka.{} instead",
                match name.as_str() {
                    "group.id" => "group_id",
                    "group.instance.id" => "group_instance_id",
                    "transactional.id" => "transactional_id",
                    _ => "brokers",
                }
            ))
        }
        _ => return None,
    };
    let same = value.eq_ignore_ascii_case(required)
        || (name == "acks" && value == "-1")
        || (required == "range" && value.eq_ignore_ascii_case("RangeAssignor"));
    (!same).then(|| format!("{value:?} is not allowed (must be {required:?}): {why}"))
}

impl std::fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let shown: &dyn std::fmt::Debug = if is_secret_property(k) {
                    &"<redacted>"
                } else {
                    v
                };
                (k, shown)
            }))
            .finish()
    }
}

impl std::ops::Deref for KafkaProperties {
    type Target = std::collections::BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KafkaProperties {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl<'a> IntoIterator for &'a KafkaProperties {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl FromIterator<(String, String)> for KafkaProperties {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        KafkaProperties(iter.into_iter().collect())
    }
}

/// How to reach the Schema Registry (`src/contracts/registry/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySettings {
    /// Base URL, `http://` or `https://`, without a trailing slash.
    pub url: String,
    /// HTTP basic auth (`kafka.schema_registry_username` / `_password`).
    pub basic_auth: Option<BasicAuth>,
    /// Longest wait for one answer (`kafka.schema_registry_timeout`).
    pub timeout: Duration,
}

/// A user name and password; the password never reaches a log or
/// `billstream config`.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicAuth {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Where billing state of record lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSettings {
    Embedded { path: PathBuf },
    Scylla(ScyllaSettings),
}

/// Where and how the ScyllaDB store keeps its tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScyllaSettings {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    /// A valid CQL identifier (checked), so it can be written into CQL text.
    pub keyspace: String,
    /// Replication of the keyspace, used by `billstream migrate`.
    pub replication: Replication,
    /// Datacenter whose nodes coordinate requests (`None` = any).
    pub local_datacenter: Option<String>,
    /// TTL of dedup records: the engine's dedup window and future
    /// tolerance, plus one day.
    pub dedup_ttl: Duration,
    /// Credentials for the server's PasswordAuthenticator (`None` = none).
    pub auth: Option<BasicAuth>,
    /// TLS to the nodes, verified against this CA (PEM); `None` = plain.
    pub tls_ca_file: Option<PathBuf>,
}

/// Keyspace replication (`store.replication_class` and its factors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replication {
    /// `SimpleStrategy` with one factor (single datacenter, development).
    Simple { factor: u32 },
    /// `NetworkTopologyStrategy` with one factor for every datacenter.
    NetworkTopology { factor: u32 },
    /// `NetworkTopologyStrategy` with a factor per named datacenter.
    PerDatacenter {
        factors: std::collections::BTreeMap<String, u32>,
    },
}

impl Replication {
    /// The CQL replication map, e.g.
    /// `{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}`.
    pub fn cql_map(&self) -> String {
        match self {
            Replication::Simple { factor } => {
                format!("{{'class': 'SimpleStrategy', 'replication_factor': {factor}}}")
            }
            Replication::NetworkTopology { factor } => {
                format!("{{'class': 'NetworkTopologyStrategy', 'replication_factor': {factor}}}")
            }
            Replication::PerDatacenter { factors } => {
                let mut map = String::from("{'class': 'NetworkTopologyStrategy'");
                for (dc, factor) in factors {
                    map.push_str(&format!(", '{dc}': {factor}"));
                }
                map.push('}');
                map
            }
        }
    }
}

/// Highest replication factor accepted (a typo guard, not a limit of ScyllaDB).
const MAX_REPLICATION_FACTOR: u32 = 9;

/// A CQL identifier billstream can write unquoted: a letter, then letters,
/// digits or `_`, at most 48 characters (ScyllaDB's keyspace name limit).
fn is_cql_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 48
}

fn host_port(field: &str, text: &str) -> Result<(), ConfigError> {
    let ok = text
        .trim()
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
    if ok {
        Ok(())
    } else {
        Err(invalid(field, format!("{text:?} is not host:port")))
    }
}

impl RawKafka {
    fn registry(&self) -> Result<Option<RegistrySettings>, ConfigError> {
        let url = self.schema_registry_url.trim().trim_end_matches('/');
        let timeout = duration(
            "kafka.schema_registry_timeout",
            &self.schema_registry_timeout,
        )?;
        if timeout.is_zero() {
            return Err(invalid(
                "kafka.schema_registry_timeout",
                "must be more than 0",
            ));
        }
        let (username, password) = (
            self.schema_registry_username.trim(),
            &self.schema_registry_password,
        );
        if url.is_empty() {
            if !username.is_empty() || !password.is_empty() {
                return Err(invalid(
                    "kafka.schema_registry_url",
                    "is empty, but a registry user name or password is set",
                ));
            }
            return Ok(None);
        }
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .ok_or_else(|| {
                invalid(
                    "kafka.schema_registry_url",
                    format!("{url:?} must start with http:// or https:// (or be empty)"),
                )
            })?;
        if rest.is_empty() || rest.contains(['@', '?', '#']) || rest.contains(char::is_whitespace) {
            return Err(invalid(
                "kafka.schema_registry_url",
                format!("{url:?} is not a base URL such as \"https://registry:8081\" (credentials go in kafka.schema_registry_username and _password)"),
            ));
        }
        let basic_auth = match (username.is_empty(), password.is_empty()) {
            (true, true) => None,
            (false, false) => Some(BasicAuth {
                username: username.to_string(),
                password: password.clone(),
            }),
            (true, false) => {
                return Err(invalid(
                    "kafka.schema_registry_username",
                    "is empty, but kafka.schema_registry_password is set",
                ))
            }
            (false, true) => {
                return Err(invalid(
                    "kafka.schema_registry_password",
                    "is empty, but kafka.schema_registry_username is set (set it from the environment: BILLSTREAM__KAFKA__SCHEMA_REGISTRY_PASSWORD)",
                ))
            }
        };
        Ok(Some(RegistrySettings {
            url: url.to_string(),
            basic_auth,
            timeout,
        }))
    }
}

impl RawStore {
    /// `dedup_micros`: how long after its write a dedup id may still be
    /// needed (dedup window + future tolerance: an id counts from at most
    /// that tolerance after its processing instant).
    fn scylla(&self, dedup_micros: i64) -> Result<ScyllaSettings, ConfigError> {
        if self.scylla_nodes.is_empty() {
            return Err(invalid(
                "store.scylla_nodes",
                "needs at least one host:port when store.kind = \"scylla\"",
            ));
        }
        for (i, node) in self.scylla_nodes.iter().enumerate() {
            host_port(&format!("store.scylla_nodes[{i}]"), node)?;
        }
        if !is_cql_identifier(&self.keyspace) {
            return Err(invalid(
                "store.keyspace",
                format!(
                    "{:?} is not a keyspace name (a letter, then letters, digits or _, at most 48)",
                    self.keyspace
                ),
            ));
        }
        let factor_ok = |field: &str, factor: u32| {
            if (1..=MAX_REPLICATION_FACTOR).contains(&factor) {
                Ok(factor)
            } else {
                Err(invalid(
                    field,
                    format!("{factor} is not between 1 and {MAX_REPLICATION_FACTOR}"),
                ))
            }
        };
        let replication = match self.replication_class.as_str() {
            "SimpleStrategy" => {
                if !self.datacenters.is_empty() {
                    return Err(invalid(
                        "store.datacenters",
                        "needs store.replication_class = \"NetworkTopologyStrategy\"",
                    ));
                }
                Replication::Simple {
                    factor: factor_ok("store.replication_factor", self.replication_factor)?,
                }
            }
            "NetworkTopologyStrategy" if self.datacenters.is_empty() => {
                Replication::NetworkTopology {
                    factor: factor_ok("store.replication_factor", self.replication_factor)?,
                }
            }
            "NetworkTopologyStrategy" => {
                for (dc, factor) in &self.datacenters {
                    let field = format!("store.datacenters.{dc}");
                    let name_ok = !dc.is_empty()
                        && dc
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
                    if !name_ok {
                        return Err(invalid(
                            &field,
                            "a datacenter name has letters, digits, '_', '-' or '.'",
                        ));
                    }
                    factor_ok(&field, *factor)?;
                }
                Replication::PerDatacenter {
                    factors: self.datacenters.clone(),
                }
            }
            other => {
                return Err(invalid(
                    "store.replication_class",
                    format!("{other:?} is not \"NetworkTopologyStrategy\" or \"SimpleStrategy\""),
                ))
            }
        };
        let local = self.local_datacenter.trim();
        if let Replication::PerDatacenter { factors } = &replication {
            if !local.is_empty() && !factors.contains_key(local) {
                return Err(invalid(
                    "store.local_datacenter",
                    format!("{local:?} is not one of store.datacenters"),
                ));
            }
        }
        let auth = match (self.username.is_empty(), self.password.is_empty()) {
            (true, true) => None,
            (false, false) => Some(BasicAuth {
                username: self.username.clone(),
                password: self.password.clone(),
            }),
            (true, false) => {
                return Err(invalid(
                    "store.username",
                    "is empty, but store.password is set",
                ))
            }
            (false, true) => {
                return Err(invalid(
                    "store.password",
                    "is empty, but store.username is set (set it from the environment: BILLSTREAM__STORE__PASSWORD)",
                ))
            }
        };
        let ca = self.tls_ca_file.trim();
        let tls_ca_file = (!ca.is_empty()).then(|| PathBuf::from(ca));
        if tls_ca_file.is_some() && !cfg!(feature = "tls") {
            return Err(invalid(
                "store.tls_ca_file",
                "needs a build with the `tls` cargo feature (the CQL driver's TLS links OpenSSL)",
            ));
        }
        let window = u64::try_from(dedup_micros).unwrap_or(0);
        Ok(ScyllaSettings {
            nodes: self
                .scylla_nodes
                .iter()
                .map(|n| n.trim().to_string())
                .collect(),
            keyspace: self.keyspace.clone(),
            replication,
            local_datacenter: (!local.is_empty()).then(|| local.to_string()),
            dedup_ttl: Duration::from_micros(window) + Duration::from_secs(86_400),
            auth,
            tls_ca_file,
        })
    }
}

/// Batching and back-pressure limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSettings {
    pub max_records: usize,
    pub max_wait: Duration,
    /// What the consumer may fetch ahead of the batch being processed,
    /// in KiB (librdkafka's `queued.max.messages.kbytes`): consumption of
    /// a partition pauses while this much waits, and resumes as it drains.
    pub prefetch_kbytes: u64,
    /// An account whose only changes are usage is written once it holds
    /// this many unwritten records (1: every batch)...
    pub checkpoint_events: u32,
    /// ...or once its changes have waited this long...
    pub checkpoint_interval: Duration,
    /// ...or when more records than this wait unwritten across all
    /// accounts (then every account is written). Bounds the memory held.
    pub max_unwritten_events: u64,
}

/// The processing clock that drives timers (period close, due dates,
/// retries, rollups) and stamps what is processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// The machine's UTC wall clock (production).
    Wall,
    /// Frozen at one instant: timers due up to it fire, later ones never.
    /// For replays, simulations and tests whose outputs must not depend on
    /// when they ran.
    Fixed(Timestamp),
}

impl Clock {
    pub fn now(self) -> Timestamp {
        match self {
            Clock::Wall => Timestamp::from_datetime(chrono::Utc::now()),
            Clock::Fixed(t) => t,
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub environment: String,
    pub clock: Clock,
    pub kafka: KafkaSettings,
    /// Topic names with the prefix applied.
    pub topics: Topics,
    pub store: StoreSettings,
    pub batch: BatchSettings,
    /// The engine's rules (grace, terms, dunning, windows).
    pub engine: EngineConfig,
    /// The read-only HTTP API.
    pub api: ApiSettings,
    /// Where `billstream run` serves `/metrics`, `/healthz` and `/readyz`
    /// (`None`: not served).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Live, or shadow (`topics` then names the shadow output topics).
    pub run: RunMode,
}

/// Parse "500ms", "45s", "5m", "1h", "14d" (a whole number and a unit).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().ok()?;
    let secs = |k: u64| n.checked_mul(k).map(Duration::from_secs);
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => None,
    }
}

/// Kafka's rule for topic names (also used for ids billstream hands to
/// Kafka): at most 249 of letters, digits, '.', '-' and '_'.
fn kafka_name(name: &str) -> bool {
    name.len() <= 249
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
}

fn duration(field: &str, text: &str) -> Result<Duration, ConfigError> {
    parse_duration(text).ok_or_else(|| {
        invalid(field, format!("{text:?} is not a duration (write e.g. \"500ms\", \"45s\", \"5m\", \"1h\", \"14d\")"))
    })
}

fn micros(field: &str, text: &str) -> Result<i64, ConfigError> {
    let d = duration(field, text)?;
    i64::try_from(d.as_micros()).map_err(|_| invalid(field, "too long"))
}

fn decimal(field: &str, text: &str) -> Result<Decimal, ConfigError> {
    Decimal::from_str(text.trim())
        .map_err(|_| invalid(field, format!("{text:?} is not a decimal number")))
}

fn parse_layer(source_name: &str, text: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|e| ConfigError::Shape {
        source_name: source_name.to_string(),
        reason: e.to_string(),
    })
}

/// Overlay `top` onto `base`, table by table.
fn merge(base: &mut toml::Table, top: toml::Table) {
    for (k, v) in top {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(t)) => merge(b, t),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// The environment overrides among `vars`, as a TOML layer. A value is
/// read as TOML when it parses as one (`true`, `3`, `["1d","2d"]`), as a
/// string otherwise.
fn env_layer(vars: impl Iterator<Item = (String, String)>) -> Result<toml::Table, ConfigError> {
    let mut layer = toml::Table::new();
    for (name, raw) in vars {
        let Some(path) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let keys: Vec<String> = path.split("__").map(|k| k.to_ascii_lowercase()).collect();
        if keys.iter().any(String::is_empty) {
            return Err(ConfigError::Shape {
                source_name: name.clone(),
                reason: "empty key in variable name".into(),
            });
        }
        let value = format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(raw));
        let mut table = &mut layer;
        for k in &keys[..keys.len() - 1] {
            let entry = table
                .entry(k.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(ConfigError::Shape {
                        source_name: name.clone(),
                        reason: format!("`{k}` is not a section"),
                    })
                }
            };
        }
        table.insert(keys[keys.len() - 1].clone(), value);
    }
    Ok(layer)
}

impl Settings {
    /// Defaults, then the file (if any), then `BILLSTREAM__…` variables of
    /// this process, validated.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let text = match file {
            Some(p) => Some(std::fs::read_to_string(p).map_err(|e| ConfigError::Read {
                path: p.display().to_string(),
                reason: e.to_string(),
            })?),
            None => None,
        };
        let name = file.map(|p| p.display().to_string());
        Settings::from_layers(text.as_deref().zip(name.as_deref()), std::env::vars())
    }

    /// The same from explicit layers (tests, and anything embedding billstream).
    pub fn from_layers(
        file: Option<(&str, &str)>,
        vars: impl Iterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let mut table = parse_layer("built-in defaults", DEFAULTS)?;
        if let Some((text, name)) = file {
            merge(&mut table, parse_layer(name, text)?);
        }
        merge(&mut table, env_layer(vars)?);
        let raw: Raw = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Shape {
                source_name: file.map_or("configuration".to_string(), |(_, n)| n.to_string()),
                reason: e.message().to_string(),
            })?;
        raw.validate()
    }
}

impl Raw {
    fn validate(self) -> Result<Settings, ConfigError> {
        let nonempty = |field: &str, v: &str| {
            if v.trim().is_empty() {
                Err(invalid(field, "must not be empty"))
            } else {
                Ok(())
            }
        };
        nonempty("environment", &self.environment)?;
        nonempty("kafka.brokers", &self.kafka.brokers)?;
        for b in self.kafka.brokers.split(',') {
            let b = b.trim();
            let port_ok = b
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !port_ok {
                return Err(invalid("kafka.brokers", format!("{b:?} is not host:port")));
            }
        }
        nonempty("kafka.group_id", &self.kafka.group_id)?;
        let transactional_id = self.kafka.transactional_id.trim();
        if self.kafka.transactional && transactional_id.is_empty() {
            return Err(invalid(
                "kafka.transactional_id",
                "needs a stable id per instance (e.g. its pod or host name) when kafka.transactional = true: a restart with the same id fences the crashed instance's open transaction at once",
            ));
        }
        let group_instance_id = self.kafka.group_instance_id.trim();
        if !group_instance_id.is_empty() && !kafka_name(group_instance_id) {
            return Err(invalid(
                "kafka.group_instance_id",
                format!("{group_instance_id:?}: use letters, digits, '.', '-' and '_' (at most 249), e.g. the pod name"),
            ));
        }
        for (name, value) in &self.kafka.properties {
            if let Some(why) = guarded_property(name, &value.text()) {
                return Err(invalid(&format!("kafka.properties.{name}"), why));
            }
        }
        if !cfg!(feature = "tls") {
            if let Some(protocol) = self.kafka.properties.get("security.protocol") {
                let protocol = protocol.text();
                if !protocol.eq_ignore_ascii_case("plaintext") {
                    return Err(invalid(
                        "kafka.properties.security.protocol",
                        format!("{protocol:?}: this billstream was built without TLS and SASL; build it with `cargo build --release --features tls` (needs OpenSSL's headers and pkg-config), or use PLAINTEXT"),
                    ));
                }
            }
        }
        let schema_registry = self.kafka.registry()?;
        let prefix = &self.kafka.topic_prefix;
        let mut topics = self.topics.clone();
        for (field, name) in [
            ("topics.usage", &mut topics.usage),
            ("topics.payments", &mut topics.payments),
            ("topics.accounts", &mut topics.accounts),
            ("topics.plans", &mut topics.plans),
            ("topics.invoices", &mut topics.invoices),
            ("topics.charges", &mut topics.charges),
            ("topics.notifications", &mut topics.notifications),
            ("topics.usage_rollups", &mut topics.usage_rollups),
            ("topics.journal", &mut topics.journal),
            ("topics.dlq", &mut topics.dlq),
            ("topics.progress", &mut topics.progress),
        ] {
            let name: &mut String = name;
            nonempty(field, name.as_str())?;
            let full = format!("{prefix}{name}");
            if !kafka_name(&full) {
                return Err(invalid(
                    field,
                    format!("{full:?} is not a valid Kafka topic name"),
                ));
            }
            *name = full;
        }
        let run = match self.run.mode.trim() {
            "live" => RunMode::Live,
            "shadow" => {
                let shadow = self.run.shadow_prefix.trim();
                if shadow.is_empty() {
                    return Err(invalid(
                        "run.shadow_prefix",
                        "must not be empty in shadow mode: the shadow's outputs need topics of their own (e.g. \"shadow.\")",
                    ));
                }
                for name in [
                    &mut topics.invoices,
                    &mut topics.charges,
                    &mut topics.notifications,
                    &mut topics.usage_rollups,
                    &mut topics.journal,
                    &mut topics.dlq,
                    &mut topics.progress,
                ] {
                    let full = format!("{shadow}{name}");
                    if !kafka_name(&full) {
                        return Err(invalid(
                            "run.shadow_prefix",
                            format!("{full:?} is not a valid Kafka topic name"),
                        ));
                    }
                    *name = full;
                }
                RunMode::Shadow {
                    prefix: shadow.to_string(),
                }
            }
            other => {
                return Err(invalid(
                    "run.mode",
                    format!("{other:?} is not \"live\" or \"shadow\""),
                ))
            }
        };
        use crate::source::partitioner::Partitioner;
        let input_partitioner = match self.kafka.input_partitioner.trim() {
            "murmur2" => Partitioner::Murmur2,
            "crc32" => Partitioner::Crc32,
            "any" => Partitioner::Any,
            other => {
                return Err(invalid(
                    "kafka.input_partitioner",
                    format!("{other:?} is not \"murmur2\" (the Java client's default), \"crc32\" (librdkafka's default) or \"any\" (not checked)"),
                ))
            }
        };
        let (session, poll) = (
            duration("kafka.session_timeout", &self.kafka.session_timeout)?,
            duration("kafka.max_poll_interval", &self.kafka.max_poll_interval)?,
        );
        if poll < session {
            return Err(invalid(
                "kafka.max_poll_interval",
                "must be at least kafka.session_timeout",
            ));
        }
        if self.batch.max_records == 0 {
            return Err(invalid("batch.max_records", "must be at least 1"));
        }
        if !(1..=2_097_151).contains(&self.batch.prefetch_kbytes) {
            return Err(invalid(
                "batch.prefetch_kbytes",
                "must be between 1 and 2097151 (KiB)",
            ));
        }
        if !(1..=1_000_000).contains(&self.batch.checkpoint_events) {
            return Err(invalid(
                "batch.checkpoint_events",
                "must be between 1 (write every batch) and 1000000",
            ));
        }
        let timer_hold = duration("kafka.timer_hold", &self.kafka.timer_hold)?;
        if timer_hold > Duration::from_secs(86_400) {
            // A record is processed as early as this before the clock and
            // must still find its id: the CQL store keeps dedup ids one day
            // past the dedup window (`ScyllaSettings::dedup_ttl`).
            return Err(invalid(
                "kafka.timer_hold",
                "must be at most 24h (records are processed up to this far behind the clock, and dedup ids are kept one day past the dedup window)",
            ));
        }
        let checkpoint_interval =
            duration("batch.checkpoint_interval", &self.batch.checkpoint_interval)?;
        if checkpoint_interval > Duration::from_secs(3600) {
            return Err(invalid(
                "batch.checkpoint_interval",
                "must be at most 1h (a crash replays up to this much input)",
            ));
        }
        let b = &self.billing;
        let mut engine = EngineConfig::new(self.environment.trim());
        engine.grace_micros = micros("billing.grace", &b.grace)?;
        engine.payment_terms_micros = micros("billing.payment_terms", &b.payment_terms)?;
        engine.retry_schedule_micros = b
            .retry_schedule
            .iter()
            .enumerate()
            .map(|(i, d)| micros(&format!("billing.retry_schedule[{i}]"), d))
            .collect::<Result<_, _>>()?;
        engine.future_tolerance_micros = micros("billing.future_tolerance", &b.future_tolerance)?;
        if engine.future_tolerance_micros > MICROS_PER_DAY {
            return Err(invalid("billing.future_tolerance", "must be at most 1d"));
        }
        if b.late_periods.is_some() {
            return Err(invalid(
                "billing.late_periods",
                "was replaced by billing.late_window, a duration (e.g. \"35d\"): late input is \
                 bounded by its age, which the dedup window always covers",
            ));
        }
        engine.windows = InputWindows::new(
            micros("billing.late_window", &b.late_window)?,
            micros("billing.dedup_window", &b.dedup_window)?,
        )
        .map_err(|e| invalid(&format!("billing.{}", e.setting), e.reason))?;
        engine.max_backdating_micros = micros("billing.max_backdating", &b.max_backdating)?;
        if engine.max_backdating_micros > 3660 * MICROS_PER_DAY {
            return Err(invalid(
                "billing.max_backdating",
                "must be at most 3660d (an opening closes every period since it at once)",
            ));
        }
        engine.credit_low_threshold =
            decimal("billing.credit_low_threshold", &b.credit_low_threshold)?;
        if engine.credit_low_threshold.is_sign_negative() {
            return Err(invalid(
                "billing.credit_low_threshold",
                "must not be negative",
            ));
        }
        engine.expiry_warning_micros = micros("billing.expiry_warning", &b.expiry_warning)?;
        engine.credit_expiry_warning_micros =
            micros("billing.credit_expiry_warning", &b.credit_expiry_warning)?;
        if !(1..=MAX_CREDIT_GRANTS).contains(&b.max_credit_grants) {
            return Err(invalid(
                "billing.max_credit_grants",
                format!(
                    "{} is not between 1 and {MAX_CREDIT_GRANTS}",
                    b.max_credit_grants
                ),
            ));
        }
        engine.max_credit_grants = b.max_credit_grants as usize;
        engine.rollup_lateness_micros = micros("billing.rollup_lateness", &b.rollup_lateness)?;
        engine.max_quantity = decimal("billing.max_quantity", &b.max_quantity)?;
        if engine.max_quantity <= Decimal::ZERO {
            return Err(invalid("billing.max_quantity", "must be positive"));
        }
        if !(1..=MAX_SUBJECTS).contains(&b.max_subjects) {
            return Err(invalid(
                "billing.max_subjects",
                format!("{} is not between 1 and {MAX_SUBJECTS}", b.max_subjects),
            ));
        }
        engine.max_subjects = b.max_subjects as usize;
        let max_record_bytes = self.kafka.max_record_bytes;
        if !(MIN_RECORD_BYTES..=MAX_RECORD_BYTES).contains(&max_record_bytes) {
            return Err(invalid(
                "kafka.max_record_bytes",
                format!(
                    "{max_record_bytes} is not between {MIN_RECORD_BYTES} and {MAX_RECORD_BYTES}"
                ),
            ));
        }
        let store = match self.store.kind.as_str() {
            "embedded" => {
                nonempty("store.path", &self.store.path)?;
                StoreSettings::Embedded {
                    path: PathBuf::from(&self.store.path),
                }
            }
            "scylla" => StoreSettings::Scylla(
                self.store
                    .scylla(engine.windows.dedup_micros() + engine.future_tolerance_micros)?,
            ),
            other => {
                return Err(invalid(
                    "store.kind",
                    format!("{other:?} is not \"embedded\" or \"scylla\""),
                ))
            }
        };
        let api = self.api.validate()?;
        let metrics_text = self.metrics.listen.trim();
        let metrics_listen = if metrics_text.is_empty() {
            None
        } else {
            Some(metrics_text.parse().map_err(|_| {
                invalid(
                    "metrics.listen",
                    format!(
                        "{:?} is not an address such as \"127.0.0.1:9464\" (or \"\" to serve no metrics)",
                        self.metrics.listen
                    ),
                )
            })?)
        };
        let clock = match self.clock.trim() {
            "wall" => Clock::Wall,
            text => Clock::Fixed(Timestamp::parse_rfc3339(text).ok_or_else(|| {
                invalid(
                    "clock",
                    format!("{text:?} is neither \"wall\" nor an RFC 3339 instant such as \"2026-11-22T10:30:00Z\""),
                )
            })?),
        };
        Ok(Settings {
            environment: self.environment.trim().to_string(),
            clock,
            kafka: KafkaSettings {
                brokers: self.kafka.brokers.clone(),
                group_id: self.kafka.group_id.clone(),
                session_timeout: duration("kafka.session_timeout", &self.kafka.session_timeout)?,
                max_poll_interval: duration(
                    "kafka.max_poll_interval",
                    &self.kafka.max_poll_interval,
                )?,
                unknown_account_wait: duration(
                    "kafka.unknown_account_wait",
                    &self.kafka.unknown_account_wait,
                )?,
                timer_hold,
                input_partitioner,
                transactional: self.kafka.transactional,
                transactional_id: self
                    .kafka
                    .transactional
                    .then(|| transactional_id.to_string()),
                group_instance_id: (!group_instance_id.is_empty())
                    .then(|| group_instance_id.to_string()),
                id_headers: self.kafka.id_headers,
                max_record_bytes: max_record_bytes as usize,
                schema_registry,
                properties: self
                    .kafka
                    .properties
                    .iter()
                    .map(|(k, v)| (k.clone(), v.text()))
                    .collect(),
            },
            topics,
            store,
            batch: BatchSettings {
                max_records: self.batch.max_records as usize,
                max_wait: duration("batch.max_wait", &self.batch.max_wait)?,
                prefetch_kbytes: self.batch.prefetch_kbytes,
                checkpoint_events: self.batch.checkpoint_events as u32,
                checkpoint_interval,
                max_unwritten_events: self.batch.max_unwritten_events,
            },
            engine,
            api,
            metrics_listen,
            run,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(file: Option<&str>, vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::from_layers(
            file.map(|t| (t, "billstream.toml")),
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_validate_and_match_the_engine_defaults() {
        let s = load(None, &[]).unwrap();
        assert_eq!(s.engine, EngineConfig::new("prod"));
        assert_eq!(s.topics.usage, "billing.usage.v1");
        assert_eq!(s.batch.max_wait, Duration::from_millis(500));
        assert_eq!(s.batch.checkpoint_events, 100);
        assert_eq!(s.batch.checkpoint_interval, Duration::from_secs(120));
        assert_eq!(s.batch.max_unwritten_events, 1_000_000);
        assert_eq!(
            s.store,
            StoreSettings::Embedded {
                path: "data/state".into()
            }
        );
        assert_eq!(s.kafka.schema_registry, None);
        assert_eq!(s.kafka.max_record_bytes, 1_000_000);
        assert_eq!(s.clock, Clock::Wall);
    }

    #[test]
    fn issue_12_late_window_dedup_window_and_max_backdating_are_validated_at_start() {
        let s = load(
            Some("[billing]\nlate_window = \"7d\"\ndedup_window = \"60d\"\nmax_backdating = \"30d\"\n"),
            &[],
        )
        .unwrap();
        assert_eq!(s.engine.windows.late_micros(), 7 * MICROS_PER_DAY);
        assert_eq!(s.engine.windows.dedup_micros(), 60 * MICROS_PER_DAY);
        assert_eq!(s.engine.max_backdating_micros, 30 * MICROS_PER_DAY);
        // A late window the dedup window does not cover cannot be set.
        let e = load(None, &[("BILLSTREAM__BILLING__LATE_WINDOW", "40d")]).unwrap_err();
        let message = e.to_string();
        assert!(
            message.contains("`billing.late_window`") && message.contains("billing.dedup_window"),
            "{message}"
        );
    }

    #[test]
    fn issue_13_credit_grant_settings_are_read_and_checked_naming_the_field() {
        let s = load(None, &[]).unwrap();
        assert_eq!(s.engine.max_credit_grants, 32);
        assert_eq!(s.engine.credit_expiry_warning_micros, 7 * MICROS_PER_DAY);
        let s = load(
            None,
            &[
                ("BILLSTREAM__BILLING__MAX_CREDIT_GRANTS", "4"),
                ("BILLSTREAM__BILLING__CREDIT_EXPIRY_WARNING", "3d"),
            ],
        )
        .unwrap();
        assert_eq!(s.engine.max_credit_grants, 4);
        assert_eq!(s.engine.credit_expiry_warning_micros, 3 * MICROS_PER_DAY);
        for (var, value, field) in [
            (
                "BILLSTREAM__BILLING__MAX_CREDIT_GRANTS",
                "0",
                "billing.max_credit_grants",
            ),
            (
                "BILLSTREAM__BILLING__MAX_CREDIT_GRANTS",
                "1001",
                "billing.max_credit_grants",
            ),
            (
                "BILLSTREAM__BILLING__CREDIT_EXPIRY_WARNING",
                "soon",
                "billing.credit_expiry_warning",
            ),
        ] {
            let err = load(None, &[(var, value)]).unwrap_err();
            assert!(err.to_string().contains(field), "{err}");
        }
    }

    #[test]
    fn issue_12_subject_and_record_bounds_are_validated_naming_the_field() {
        let s = load(
            None,
            &[
                ("BILLSTREAM__BILLING__MAX_SUBJECTS", "7"),
                ("BILLSTREAM__KAFKA__MAX_RECORD_BYTES", "2000000"),
            ],
        )
        .unwrap();
        assert_eq!(s.engine.max_subjects, 7);
        assert_eq!(s.kafka.max_record_bytes, 2_000_000);
        for (var, value, field) in [
            (
                "BILLSTREAM__BILLING__MAX_SUBJECTS",
                "0",
                "billing.max_subjects",
            ),
            (
                "BILLSTREAM__BILLING__MAX_SUBJECTS",
                "10001",
                "billing.max_subjects",
            ),
            (
                "BILLSTREAM__KAFKA__MAX_RECORD_BYTES",
                "1000",
                "kafka.max_record_bytes",
            ),
        ] {
            let err = load(None, &[(var, value)]).unwrap_err();
            assert!(err.to_string().contains(field), "{err}");
        }
    }

    #[test]
    fn clock_is_wall_or_a_frozen_instant() {
        let s = load(None, &[("BILLSTREAM__CLOCK", "2026-11-22T10:30:00Z")]).unwrap();
        let at = Timestamp::parse_rfc3339("2026-11-22T10:30:00Z").unwrap();
        assert_eq!(s.clock, Clock::Fixed(at));
        assert_eq!(s.clock.now(), at);
        let before = Timestamp::from_datetime(chrono::Utc::now());
        assert!(Clock::Wall.now() >= before);
    }

    #[test]
    fn readme_example_parses() {
        let readme = include_str!("../README.md");
        // The example of the Configuration section (other sections have
        // smaller ones).
        let section = readme
            .find("\n## Configuration\n")
            .expect("README has a Configuration section");
        let start = section
            + readme[section..]
                .find("```toml\n")
                .expect("the Configuration section has a toml example")
            + "```toml\n".len();
        let end = start + readme[start..].find("```").expect("the example is closed");
        let s = load(Some(&readme[start..end]), &[]).unwrap();
        assert_eq!(s.environment, "staging");
        assert_eq!(s.topics.dlq, "acme.billing.dlq.v1");
        assert_eq!(
            s.kafka.schema_registry.map(|r| r.url).as_deref(),
            Some("http://schema-registry:8081")
        );
        assert_eq!(s.engine.retry_schedule_micros.len(), 4);
        assert_eq!(s.api.role_claim, "realm_access.roles");
        assert_eq!(
            s.api.jwt.key,
            JwtKey::Rs256 {
                public_key_path: "/etc/billstream/idp-public.pem".into()
            }
        );
    }

    #[test]
    fn kafka_properties_take_numbers_and_booleans_as_text() {
        let s = load(
            Some("[kafka.properties]\n\"linger.ms\" = 20\n\"debug\" = \"broker\"\n"),
            &[
                ("BILLSTREAM__KAFKA__PROPERTIES__SOCKET.TIMEOUT.MS", "5000"),
                (
                    "BILLSTREAM__KAFKA__PROPERTIES__ENABLE.SSL.CERTIFICATE.VERIFICATION",
                    "false",
                ),
                (
                    "BILLSTREAM__KAFKA__PROPERTIES__SECURITY.PROTOCOL",
                    "PLAINTEXT",
                ),
            ],
        )
        .unwrap();
        let p = |k: &str| s.kafka.properties.get(k).map(String::as_str);
        assert_eq!(p("linger.ms"), Some("20"));
        assert_eq!(p("debug"), Some("broker"));
        assert_eq!(p("socket.timeout.ms"), Some("5000"));
        assert_eq!(p("enable.ssl.certificate.verification"), Some("false"));
        assert_eq!(p("security.protocol"), Some("PLAINTEXT"));
    }

    /// Issue 15 item 4: an assignor override broke co-partitioning (an
    /// account's topics split between members), and auto-commit or
    /// `latest` could lose inputs; each is refused at start-up, naming the
    /// field.
    #[test]
    fn properties_that_break_a_guarantee_are_refused_naming_the_field() {
        for (name, value) in [
            ("PARTITION.ASSIGNMENT.STRATEGY", "cooperative-sticky"),
            ("PARTITION.ASSIGNMENT.STRATEGY", "roundrobin"),
            ("ENABLE.AUTO.COMMIT", "true"),
            ("ENABLE.AUTO.OFFSET.STORE", "true"),
            ("AUTO.OFFSET.RESET", "latest"),
            ("ISOLATION.LEVEL", "read_uncommitted"),
            ("ENABLE.IDEMPOTENCE", "false"),
            ("ACKS", "1"),
            ("GROUP.ID", "other"),
            ("TRANSACTIONAL.ID", "x"),
        ] {
            let message = load(
                None,
                &[(&format!("BILLSTREAM__KAFKA__PROPERTIES__{name}"), value)],
            )
            .unwrap_err()
            .to_string();
            let field = format!("kafka.properties.{}", name.to_ascii_lowercase());
            assert!(message.contains(&field), "{name}={value}: {message}");
        }
        for (name, value) in [
            ("PARTITION.ASSIGNMENT.STRATEGY", "range"),
            ("ACKS", "-1"),
            ("ISOLATION.LEVEL", "read_committed"),
            ("LINGER.MS", "20"),
        ] {
            load(
                None,
                &[(&format!("BILLSTREAM__KAFKA__PROPERTIES__{name}"), value)],
            )
            .unwrap_or_else(|e| panic!("{name}={value} refused: {e}"));
        }
    }

    #[test]
    fn a_secure_protocol_needs_the_tls_build() {
        let e = load(
            None,
            &[(
                "BILLSTREAM__KAFKA__PROPERTIES__SECURITY.PROTOCOL",
                "SASL_SSL",
            )],
        );
        if cfg!(feature = "tls") {
            e.unwrap();
        } else {
            let message = e.unwrap_err().to_string();
            assert!(
                message.contains("kafka.properties.security.protocol")
                    && message.contains("--features tls"),
                "{message}"
            );
        }
        load(
            None,
            &[(
                "BILLSTREAM__KAFKA__PROPERTIES__SECURITY.PROTOCOL",
                "plaintext",
            )],
        )
        .unwrap();
    }

    #[test]
    fn file_then_environment_override_the_defaults() {
        let s = load(
            Some("[kafka]\nbrokers = \"k1:9092,k2:9092\"\n[billing]\ngrace = \"2h\"\n"),
            &[
                ("BILLSTREAM__BILLING__GRACE", "30m"),
                ("BILLSTREAM__BATCH__MAX_RECORDS", "5000"),
                ("BILLSTREAM__BILLING__RETRY_SCHEDULE", "[\"2d\"]"),
                ("OTHER", "x"),
            ],
        )
        .unwrap();
        assert_eq!(s.kafka.brokers, "k1:9092,k2:9092");
        assert_eq!(s.engine.grace_micros, 30 * 60 * 1_000_000);
        assert_eq!(s.batch.max_records, 5000);
        assert_eq!(s.engine.retry_schedule_micros, vec![2 * 86_400 * 1_000_000]);
    }

    #[test]
    fn unknown_field_is_refused_by_name() {
        let e = load(Some("[kafka]\nbroker = \"x:1\"\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("broker"), "{e}");
        let e = load(None, &[("BILLSTREAM__KAFKA__BROKERZ", "x:1")]).unwrap_err();
        assert!(e.to_string().contains("brokerz"), "{e}");
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases: &[(&str, &str)] = &[
            ("[kafka]\nbrokers = \"\"\n", "kafka.brokers"),
            ("[kafka]\nbrokers = \"localhost\"\n", "kafka.brokers"),
            ("[billing]\ngrace = \"an hour\"\n", "billing.grace"),
            (
                "[billing]\nretry_schedule = [\"1d\", \"3x\"]\n",
                "billing.retry_schedule[1]",
            ),
            ("[billing]\ndedup_window = \"7d\"\n", "billing.dedup_window"),
            ("[billing]\nlate_window = \"36d\"\n", "billing.late_window"),
            (
                "[billing]\nlate_window = \"90d\"\ndedup_window = \"60d\"\n",
                "billing.late_window",
            ),
            ("[billing]\nlate_window = \"soon\"\n", "billing.late_window"),
            ("[billing]\nlate_periods = 3\n", "billing.late_periods"),
            ("[billing]\nmax_backdating = \"5000d\"\n", "billing.max_backdating"),
            ("[billing]\nmax_backdating = \"-1d\"\n", "billing.max_backdating"),
            ("[billing]\nfuture_tolerance = \"2d\"\n", "billing.future_tolerance"),
            (
                "[billing]\ncredit_low_threshold = \"five\"\n",
                "billing.credit_low_threshold",
            ),
            ("[store]\nkind = \"postgres\"\n", "store.kind"),
            ("[store]\nkind = \"scylla\"\n", "store.scylla_nodes"),
            (
                "[store]\nkind = \"scylla\"\nscylla_nodes = [\"db1\"]\n",
                "store.scylla_nodes[0]",
            ),
            (
                "[store]\nkind = \"scylla\"\nscylla_nodes = [\"db1:9042\"]\nkeyspace = \"bill-stream\"\n",
                "store.keyspace",
            ),
            (
                "[store]\nkind = \"scylla\"\nscylla_nodes = [\"db1:9042\"]\nreplication_class = \"Everywhere\"\n",
                "store.replication_class",
            ),
            (
                "[store]\nkind = \"scylla\"\nscylla_nodes = [\"db1:9042\"]\nreplication_factor = 0\n",
                "store.replication_factor",
            ),
            (
                "[store]\nkind = \"scylla\"\nscylla_nodes = [\"db1:9042\"]\nreplication_class = \"SimpleStrategy\"\n[store.datacenters]\ndc1 = 3\n",
                "store.datacenters",
            ),
            (
                "[store]\nkind = \"scylla\"\nscylla_nodes = [\"db1:9042\"]\n[store.datacenters]\ndc1 = 30\n",
                "store.datacenters.dc1",
            ),
            (
                "[store]\nkind = \"scylla\"\nscylla_nodes = [\"db1:9042\"]\nlocal_datacenter = \"dc9\"\n[store.datacenters]\ndc1 = 3\n",
                "store.local_datacenter",
            ),
            ("[kafka]\ntopic_prefix = \"a b\"\n", "topics.usage"),
            ("[batch]\nprefetch_kbytes = 0\n", "batch.prefetch_kbytes"),
            ("[batch]\ncheckpoint_events = 0\n", "batch.checkpoint_events"),
            ("[kafka]\ngroup_instance_id = \"pod 1\"\n", "kafka.group_instance_id"),
            ("[batch]\ncheckpoint_interval = \"2h\"\n", "batch.checkpoint_interval"),
            ("[kafka]\ntimer_hold = \"25h\"\n", "kafka.timer_hold"),
            ("[batch]\ncheckpoint_interval = \"soon\"\n", "batch.checkpoint_interval"),
            ("clock = \"yesterday\"\n", "clock"),
            (
                "[kafka]\nschema_registry_url = \"registry:8081\"\n",
                "kafka.schema_registry_url",
            ),
            (
                "[kafka]\nschema_registry_url = \"https://user:pw@registry:8081\"\n",
                "kafka.schema_registry_url",
            ),
            (
                "[kafka]\nschema_registry_username = \"sr\"\n",
                "kafka.schema_registry_url",
            ),
            (
                "[kafka]\nschema_registry_url = \"http://registry:8081\"\nschema_registry_username = \"sr\"\n",
                "kafka.schema_registry_password",
            ),
            (
                "[kafka]\nschema_registry_url = \"http://registry:8081\"\nschema_registry_password = \"pw\"\n",
                "kafka.schema_registry_username",
            ),
            (
                "[kafka]\nschema_registry_timeout = \"0s\"\n",
                "kafka.schema_registry_timeout",
            ),
            (
                "[kafka]\ntransactional = true\n",
                "kafka.transactional_id",
            ),
            ("[api]\nlisten = \"localhost\"\n", "api.listen"),
            ("[metrics]\nlisten = \"9464\"\n", "metrics.listen"),
            ("[api]\nrole_claim = \" \"\n", "api.role_claim"),
            (
                "[api]\nreport_max_accounts = 0\n",
                "api.report_max_accounts",
            ),
            ("[api.jwt]\nalgorithm = \"none\"\n", "api.jwt.algorithm"),
            ("[api.jwt]\nsecret = \"short\"\n", "api.jwt.secret"),
            (
                "[api.jwt]\nalgorithm = \"RS256\"\nsecret = \"0123456789abcdef0123456789abcdef\"\n",
                "api.jwt.secret",
            ),
            (
                "[api.jwt]\npublic_key_path = \"key.pem\"\n",
                "api.jwt.public_key_path",
            ),
        ];
        for (file, field) in cases {
            let e = load(Some(file), &[]).unwrap_err();
            assert!(
                e.to_string().contains(&format!("`{field}`")),
                "{file:?} gave {e}"
            );
        }
    }

    #[test]
    fn issue_15_cql_store_credentials_and_tls_are_settings_and_the_password_is_redacted() {
        let s = load(
            Some("[store]\nkind = \"scylla\"\nscylla_nodes = [\"db1:9042\"]\nusername = \"billing\"\ntls_ca_file = \"/etc/ssl/cql-ca.pem\"\n"),
            &[("BILLSTREAM__STORE__PASSWORD", "s3cret-cql")],
        )
        .unwrap();
        let StoreSettings::Scylla(scylla) = &s.store else {
            panic!("expected the scylla store");
        };
        assert_eq!(
            scylla.auth,
            Some(BasicAuth {
                username: "billing".into(),
                password: "s3cret-cql".into()
            })
        );
        assert_eq!(
            scylla.tls_ca_file.as_deref(),
            Some(Path::new("/etc/ssl/cql-ca.pem"))
        );
        let printed = format!("{s:?}");
        assert!(!printed.contains("s3cret-cql"), "{printed}");
        assert!(printed.contains("billing"));
        for (file, field) in [
            ("username = \"billing\"\n", "store.password"),
            ("password = \"pw\"\n", "store.username"),
        ] {
            let e = load(
                Some(&format!(
                    "[store]\nkind = \"scylla\"\nscylla_nodes = [\"db1:9042\"]\n{file}"
                )),
                &[],
            )
            .unwrap_err();
            assert!(e.to_string().contains(field), "{file}: {e}");
        }
        // Defaults: neither.
        let s = load(
            Some("[store]\nkind = \"scylla\"\nscylla_nodes = [\"db1:9042\"]\n"),
            &[],
        )
        .unwrap();
        let StoreSettings::Scylla(scylla) = &s.store else {
            panic!("expected the scylla store");
        };
        assert_eq!((&scylla.auth, &scylla.tls_ca_file), (&None, &None));
    }

    #[test]
    fn scylla_store_settings_validate_into_replication() {
        let s = load(
            Some("[store]\nkind = \"scylla\"\nscylla_nodes = [\"db1:9042\", \"db2:9042\"]\nlocal_datacenter = \"eu\"\n[store.datacenters]\neu = 3\nus = 2\n"),
            &[],
        )
        .unwrap();
        let StoreSettings::Scylla(scylla) = s.store else {
            panic!("expected the scylla store, got {:?}", s.store);
        };
        assert_eq!(scylla.nodes, ["db1:9042", "db2:9042"]);
        assert_eq!(scylla.keyspace, "billstream");
        assert_eq!(scylla.local_datacenter.as_deref(), Some("eu"));
        assert_eq!(
            scylla.replication.cql_map(),
            "{'class': 'NetworkTopologyStrategy', 'eu': 3, 'us': 2}"
        );
        // The dedup TTL covers the dedup window (35 days) and the future
        // tolerance (5 minutes), plus a day.
        assert_eq!(scylla.dedup_ttl, Duration::from_secs(36 * 86_400 + 300));

        let s = load(
            Some("[store]\nkind = \"scylla\"\nscylla_nodes = [\"127.0.0.1:9042\"]\nreplication_class = \"SimpleStrategy\"\nreplication_factor = 1\n"),
            &[("BILLSTREAM__BILLING__DEDUP_WINDOW", "40d")],
        )
        .unwrap();
        let StoreSettings::Scylla(scylla) = s.store else {
            panic!("expected the scylla store");
        };
        assert_eq!(
            scylla.replication.cql_map(),
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        );
        assert_eq!(scylla.dedup_ttl, Duration::from_secs(41 * 86_400 + 300));
        assert_eq!(
            Replication::NetworkTopology { factor: 3 }.cql_map(),
            "{'class': 'NetworkTopologyStrategy', 'replication_factor': 3}"
        );
    }

    #[test]
    fn api_settings_default_to_loopback_and_keep_the_secret_out_of_debug() {
        let s = load(None, &[]).unwrap();
        assert_eq!(s.api.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s.api.role_claim, "roles");
        assert_eq!(s.api.report_max_accounts, 10_000);
        assert_eq!(s.api.dead_letter_file, None);
        assert_eq!(s.api.plans_file, None);
        assert_eq!(
            s.api.jwt.key,
            JwtKey::Hs256 {
                secret: String::new()
            }
        );
        let secret = "a-shared-secret-of-at-least-32-bytes!";
        let s = load(
            None,
            &[
                ("BILLSTREAM__API__JWT__SECRET", secret),
                ("BILLSTREAM__API__JWT__ISSUER", "https://idp.example"),
            ],
        )
        .unwrap();
        assert_eq!(
            s.api.jwt.key,
            JwtKey::Hs256 {
                secret: secret.into()
            }
        );
        assert_eq!(s.api.jwt.issuer.as_deref(), Some("https://idp.example"));
        assert_eq!(s.api.jwt.audience, None);
        assert!(!format!("{s:?}").contains(secret));
        let s = load(
            Some(
                "[api.jwt]\nalgorithm = \"RS256\"\npublic_key_path = \"/etc/billstream/idp.pem\"\n",
            ),
            &[],
        )
        .unwrap();
        assert_eq!(
            s.api.jwt.key,
            JwtKey::Rs256 {
                public_key_path: "/etc/billstream/idp.pem".into()
            }
        );
    }

    #[test]
    fn registry_settings_take_the_password_from_the_environment_and_hide_it() {
        let s = load(
            Some("[kafka]\nschema_registry_url = \"https://registry.example:8081/\"\nschema_registry_username = \"billstream\"\n"),
            &[
                ("BILLSTREAM__KAFKA__SCHEMA_REGISTRY_PASSWORD", "s3cret-from-env"),
                ("BILLSTREAM__KAFKA__SCHEMA_REGISTRY_TIMEOUT", "3s"),
            ],
        )
        .unwrap();
        let registry = s.kafka.schema_registry.clone().expect("a registry");
        assert_eq!(registry.url, "https://registry.example:8081");
        assert_eq!(registry.timeout, Duration::from_secs(3));
        assert_eq!(
            registry.basic_auth,
            Some(BasicAuth {
                username: "billstream".into(),
                password: "s3cret-from-env".into()
            })
        );
        assert!(!format!("{s:?}").contains("s3cret-from-env"));
        let plain = load(
            None,
            &[(
                "BILLSTREAM__KAFKA__SCHEMA_REGISTRY_URL",
                "http://127.0.0.1:8081",
            )],
        )
        .unwrap();
        let registry = plain.kafka.schema_registry.expect("a registry");
        assert_eq!(registry.basic_auth, None);
        assert_eq!(registry.timeout, Duration::from_secs(10));
    }

    #[test]
    fn manifest_topics_map_to_configured_names() {
        let s = load(
            Some("[kafka]\ntopic_prefix = \"acme.\"\n[topics]\nusage = \"metering\"\n"),
            &[],
        )
        .unwrap();
        assert_eq!(
            s.topics.configured("billing.usage.v1"),
            Some("acme.metering")
        );
        assert_eq!(
            s.topics.configured("billing.dlq.v1"),
            Some("acme.billing.dlq.v1")
        );
        assert_eq!(s.topics.configured("billing.nope.v1"), None);
    }

    #[test]
    fn durations_parse_strictly() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(
            parse_duration("14d"),
            Some(Duration::from_secs(14 * 86_400))
        );
        assert_eq!(parse_duration("1.5h"), None);
        assert_eq!(parse_duration("h"), None);
        assert_eq!(parse_duration("10"), None);
    }

    #[test]
    fn issue_14_run_mode_defaults_to_live_with_the_configured_topics() {
        let s = load(None, &[]).unwrap();
        assert_eq!(s.run, RunMode::Live);
        assert_eq!(s.topics.invoices, "billing.invoices.v1");
        assert_eq!(s.topics.charges, "billing.charges.v1");
    }

    #[test]
    fn issue_14_shadow_mode_moves_every_output_onto_shadow_topics_and_keeps_the_inputs() {
        let s = load(
            Some("[run]\nmode = \"shadow\"\n[kafka]\ntopic_prefix = \"acme.\"\n"),
            &[],
        )
        .unwrap();
        assert_eq!(
            s.run,
            RunMode::Shadow {
                prefix: "shadow.".into()
            }
        );
        assert!(s.run.is_shadow());
        // The inputs are the live ones: a shadow reads what live reads.
        assert_eq!(s.topics.usage, "acme.billing.usage.v1");
        assert_eq!(s.topics.payments, "acme.billing.payments.v1");
        assert_eq!(s.topics.accounts, "acme.billing.accounts.v1");
        assert_eq!(s.topics.plans, "acme.billing.plans.v1");
        // Every output, the internal progress topic too, gets the prefix
        // on top (charges and notifications are never published; their
        // names are shadow ones all the same).
        assert_eq!(s.topics.invoices, "shadow.acme.billing.invoices.v1");
        assert_eq!(s.topics.journal, "shadow.acme.billing.journal.v1");
        assert_eq!(
            s.topics.usage_rollups,
            "shadow.acme.billing.usage-rollups.v1"
        );
        assert_eq!(s.topics.dlq, "shadow.acme.billing.dlq.v1");
        assert_eq!(s.topics.progress, "shadow.acme.billing.progress.v1");
        assert_eq!(s.topics.charges, "shadow.acme.billing.charges.v1");
        assert_eq!(
            s.topics.notifications,
            "shadow.acme.billing.notifications.v1"
        );
        let custom = load(
            None,
            &[
                ("BILLSTREAM__RUN__MODE", "shadow"),
                ("BILLSTREAM__RUN__SHADOW_PREFIX", "trial-"),
            ],
        )
        .unwrap();
        assert_eq!(custom.topics.invoices, "trial-billing.invoices.v1");
    }

    #[test]
    fn issue_14_bad_run_settings_name_the_field() {
        let field = |file: &str| match load(Some(file), &[]) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("{file:?}: {other:?}"),
        };
        assert_eq!(field("[run]\nmode = \"dry\"\n"), "run.mode");
        assert_eq!(
            field("[kafka]\ninput_partitioner = \"random\"\n"),
            "kafka.input_partitioner"
        );
        assert_eq!(
            field("[run]\nmode = \"shadow\"\nshadow_prefix = \"\"\n"),
            "run.shadow_prefix"
        );
        assert_eq!(
            field("[run]\nmode = \"shadow\"\nshadow_prefix = \"a b\"\n"),
            "run.shadow_prefix"
        );
    }
}
