//! Reads typed values out of a parsed TOML document and the environment,
//! collecting every problem instead of stopping at the first one, so a
//! technician fixes a broken file in one pass.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use toml_edit::{Item, Table};

/// Prefix of every environment variable the gateway reads.
pub const ENV_PREFIX: &str = "KIOSK_GATEWAY_";

/// One thing wrong with the configuration, located as precisely as possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where the value came from.
    pub origin: Origin,
    /// `section.key`, or just `section` for problems with a whole table.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// Where a value (or a problem with it) came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    /// The config file.
    File {
        /// The file.
        path: PathBuf,
        /// The line, when known.
        line: Option<usize>,
    },
    /// An environment variable, by name.
    Env(String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::File {
                path,
                line: Some(line),
            } => write!(
                f,
                "{}:{line}: {}: {}",
                path.display(),
                self.key,
                self.message
            ),
            Origin::File { path, line: None } => {
                write!(f, "{}: {}: {}", path.display(), self.key, self.message)
            }
            Origin::Env(var) => write!(
                f,
                "environment variable {var}: {}: {}",
                self.key, self.message
            ),
        }
    }
}

/// The process environment as far as configuration is concerned: the
/// `KIOSK_GATEWAY_*` variables and the folders systemd hands a service.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
    credentials_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
}

impl Env {
    /// What the process was started with.
    pub fn from_process() -> Self {
        let vars = std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        let dir = |name| std::env::var_os(name).map(PathBuf::from);
        Self {
            vars,
            credentials_dir: dir("CREDENTIALS_DIRECTORY"),
            // systemd may list several state folders separated by ':'.
            state_dir: std::env::var("STATE_DIRECTORY")
                .ok()
                .and_then(|s| s.split(':').next().map(PathBuf::from)),
        }
    }

    /// systemd's `StateDirectory=` for this service, when there is one.
    pub fn state_dir(&self) -> Option<PathBuf> {
        self.state_dir.clone()
    }

    /// Variables and a credentials folder given explicitly, for tests and tools.
    pub fn new<I, K, V>(vars: I, credentials_dir: Option<PathBuf>) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            vars: vars
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            credentials_dir,
            state_dir: None,
        }
    }
}

/// The credential id the shipped systemd unit loads its credentials folder under.
const CREDENTIAL_PREFIX: &str = "kiosk-gateway";

/// Variables with the prefix that are not configuration overrides.
const NON_OVERRIDE_VARS: &[&str] = &["KIOSK_GATEWAY_CONFIG"];

fn env_var_name(section: &str, key: &str) -> String {
    format!("{ENV_PREFIX}{}_{}", section, key).to_ascii_uppercase()
}

/// A raw value before it is given a type.
enum Raw<'a> {
    Toml(&'a Item),
    Env(&'a str),
}

pub struct Loader<'a> {
    path: PathBuf,
    base_dir: PathBuf,
    src: &'a str,
    root: &'a Table,
    env: &'a Env,
    problems: Vec<Problem>,
    known: BTreeMap<&'static str, BTreeSet<&'static str>>,
}

impl<'a> Loader<'a> {
    pub fn new(path: &Path, src: &'a str, root: &'a Table, env: &'a Env) -> Self {
        // Absolute, so paths in the config mean the same from any working folder.
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let base_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Self {
            path: path.clone(),
            base_dir,
            src,
            root,
            env,
            problems: Vec::new(),
            known: BTreeMap::new(),
        }
    }

    fn line_of(&self, span: Option<std::ops::Range<usize>>) -> Option<usize> {
        span.map(|s| {
            self.src[..s.start.min(self.src.len())]
                .matches('\n')
                .count()
                + 1
        })
    }

    /// The line a key (or, failing that, its section header) sits on.
    pub fn line(&self, section: &str, key: Option<&str>) -> Option<usize> {
        let table = self.root.get(section).and_then(Item::as_table_like)?;
        let key_span = key
            .and_then(|k| table.get_key_value(k))
            .and_then(|(k, _)| k.span());
        let section_span = self.root.key(section).and_then(|k| k.span());
        self.line_of(key_span.or(section_span))
    }

    pub fn file_origin(&self, line: Option<usize>) -> Origin {
        Origin::File {
            path: self.path.clone(),
            line,
        }
    }

    pub fn problem(&mut self, origin: Origin, key: String, message: impl Into<String>) {
        self.problems.push(Problem {
            origin,
            key,
            message: message.into(),
        });
    }

    /// Records a problem about `section.key` located in the file.
    pub fn problem_at(&mut self, section: &str, key: &str, message: impl Into<String>) {
        let origin = self.file_origin(self.line(section, Some(key)));
        self.problem(origin, format!("{section}.{key}"), message);
    }

    /// Whether the file or the environment gives `section.key` at all,
    /// for a default that depends on another key.
    pub fn is_set(&mut self, section: &'static str, key: &'static str) -> bool {
        self.raw(section, key).is_some()
    }

    fn raw(&mut self, section: &'static str, key: &'static str) -> Option<(Raw<'a>, Origin)> {
        self.known.entry(section).or_default().insert(key);
        let var = env_var_name(section, key);
        if let Some(v) = self.env.vars.get(&var) {
            return Some((Raw::Env(v.as_str()), Origin::Env(var)));
        }
        let root: &'a Table = self.root;
        let table = root.get(section)?.as_table_like()?;
        let (k, item) = table.get_key_value(key)?;
        let line = self.line_of(k.span());
        Some((Raw::Toml(item), self.file_origin(line)))
    }

    /// Reads a value with `parse`, which gets the TOML item or the env
    /// string and returns the typed value or what was expected.
    fn typed<T>(
        &mut self,
        section: &'static str,
        key: &'static str,
        default: T,
        parse: impl FnOnce(Raw<'_>) -> Result<T, String>,
    ) -> T {
        let Some((raw, origin)) = self.raw(section, key) else {
            return default;
        };
        match parse(raw) {
            Ok(v) => v,
            Err(message) => {
                self.problem(origin, format!("{section}.{key}"), message);
                default
            }
        }
    }

    pub fn string(&mut self, section: &'static str, key: &'static str, default: &str) -> String {
        self.typed(section, key, default.to_string(), |raw| match raw {
            Raw::Env(s) => Ok(s.to_string()),
            Raw::Toml(item) => item
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("expected a string, found {}", describe(item))),
        })
    }

    pub fn boolean(&mut self, section: &'static str, key: &'static str, default: bool) -> bool {
        self.typed(section, key, default, |raw| match raw {
            Raw::Env(s) => match s {
                "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" => Ok(false),
                other => Err(format!("expected true or false, found {other:?}")),
            },
            Raw::Toml(item) => item
                .as_bool()
                .ok_or_else(|| format!("expected true or false, found {}", describe(item))),
        })
    }

    pub fn integer(
        &mut self,
        section: &'static str,
        key: &'static str,
        default: i64,
        range: RangeInclusive<i64>,
    ) -> i64 {
        let expected = format!(
            "expected an integer from {} to {}",
            range.start(),
            range.end()
        );
        self.typed(section, key, default, |raw| {
            let v = match raw {
                Raw::Env(s) => s
                    .trim()
                    .parse::<i64>()
                    .map_err(|_| format!("{expected}, found {s:?}"))?,
                Raw::Toml(item) => item
                    .as_integer()
                    .ok_or_else(|| format!("{expected}, found {}", describe(item)))?,
            };
            if range.contains(&v) {
                Ok(v)
            } else {
                Err(format!("{expected}, found {v}"))
            }
        })
    }

    /// A list of strings; from the environment, comma-separated.
    pub fn strings(
        &mut self,
        section: &'static str,
        key: &'static str,
        default: &[&str],
    ) -> Vec<String> {
        let default: Vec<String> = default.iter().map(|s| s.to_string()).collect();
        self.typed(section, key, default, |raw| match raw {
            Raw::Env(s) => Ok(s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()),
            Raw::Toml(item) => item
                .as_array()
                .and_then(|a| a.iter().map(|v| v.as_str().map(str::to_string)).collect())
                .ok_or_else(|| format!("expected a list of strings, found {}", describe(item))),
        })
    }

    /// A number, integer or not, within `range`.
    pub fn number(
        &mut self,
        section: &'static str,
        key: &'static str,
        default: f64,
        range: RangeInclusive<f64>,
    ) -> f64 {
        let expected = format!(
            "expected a number from {} to {}",
            range.start(),
            range.end()
        );
        self.typed(section, key, default, |raw| {
            let v = match raw {
                Raw::Env(s) => s
                    .trim()
                    .parse::<f64>()
                    .map_err(|_| format!("{expected}, found {s:?}"))?,
                Raw::Toml(item) => item
                    .as_float()
                    .or_else(|| item.as_integer().map(|i| i as f64))
                    .ok_or_else(|| format!("{expected}, found {}", describe(item)))?,
            };
            if range.contains(&v) {
                Ok(v)
            } else {
                Err(format!("{expected}, found {v}"))
            }
        })
    }

    /// A duration written the human way: `"30s"`, `"5m"`, `"1h 30m"`.
    pub fn duration(
        &mut self,
        section: &'static str,
        key: &'static str,
        default: Duration,
        range: RangeInclusive<Duration>,
    ) -> Duration {
        let expected = format!(
            "expected a duration such as \"30s\" or \"5m\", from {} to {}",
            humantime::format_duration(*range.start()),
            humantime::format_duration(*range.end())
        );
        self.typed(section, key, default, |raw| {
            let s = match raw {
                Raw::Env(s) => s,
                Raw::Toml(item) => item
                    .as_str()
                    .ok_or_else(|| format!("{expected}, found {}", describe(item)))?,
            };
            let d = humantime::parse_duration(s).map_err(|_| format!("{expected}, found {s:?}"))?;
            if range.contains(&d) {
                Ok(d)
            } else {
                Err(format!("{expected}, found {s:?}"))
            }
        })
    }

    /// One of a fixed set of words.
    pub fn choice(
        &mut self,
        section: &'static str,
        key: &'static str,
        default: &'static str,
        options: &[&'static str],
    ) -> &'static str {
        let expected = format!("expected one of {}", quoted_list(options));
        self.typed(section, key, default, |raw| {
            let s = match raw {
                Raw::Env(s) => s,
                Raw::Toml(item) => item
                    .as_str()
                    .ok_or_else(|| format!("{expected}, found {}", describe(item)))?,
            };
            options
                .iter()
                .find(|o| **o == s)
                .copied()
                .ok_or_else(|| format!("{expected}, found {s:?}{}", did_you_mean(s, options)))
        })
    }

    pub fn socket_addr(
        &mut self,
        section: &'static str,
        key: &'static str,
        default: SocketAddr,
    ) -> SocketAddr {
        let expected = "expected an address and port such as \"127.0.0.1:8080\"";
        self.typed(section, key, default, |raw| {
            let s = match raw {
                Raw::Env(s) => s,
                Raw::Toml(item) => item
                    .as_str()
                    .ok_or_else(|| format!("{expected}, found {}", describe(item)))?,
            };
            s.parse().map_err(|_| format!("{expected}, found {s:?}"))
        })
    }

    /// An optional http(s) URL; an empty string means "not set".
    pub fn url(&mut self, section: &'static str, key: &'static str) -> Option<url::Url> {
        let expected = "expected an http:// or https:// URL";
        self.typed(section, key, None, |raw| {
            let s = match raw {
                Raw::Env(s) => s,
                Raw::Toml(item) => item
                    .as_str()
                    .ok_or_else(|| format!("{expected}, found {}", describe(item)))?,
            };
            if s.is_empty() {
                return Ok(None);
            }
            match url::Url::parse(s) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(Some(u)),
                _ => Err(format!("{expected}, found {s:?}")),
            }
        })
    }

    /// A filesystem path; relative paths are taken from the config file's folder.
    pub fn path(&mut self, section: &'static str, key: &'static str, default: PathBuf) -> PathBuf {
        let s = self.string(section, key, "");
        if s.is_empty() {
            return default;
        }
        self.resolve(Path::new(&s))
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// A secret named `section.name`. It is read, in this order, from the
    /// environment (`KIOSK_GATEWAY_SECTION_NAME`), from the file named by
    /// `name_file`, or from systemd's credential `section_name`. Writing the
    /// secret itself into the config file is refused: config files get
    /// copied, pasted and committed.
    pub fn secret(&mut self, section: &'static str, name: &'static str) -> Option<SecretString> {
        let file_key: &'static str = match name {
            "api_key" => "api_key_file",
            "token" => "token_file",
            other => unreachable!("secret key {other} has no *_file key"),
        };
        // The inline key is "known" only so it is not reported as a typo.
        self.known.entry(section).or_default().insert(name);
        if self
            .root
            .get(section)
            .and_then(Item::as_table_like)
            .is_some_and(|t| t.contains_key(name))
        {
            self.problem_at(
                section,
                name,
                format!(
                    "secrets are not read from the config file; put it in a file and set \
                     {file_key}, or set {}",
                    env_var_name(section, name)
                ),
            );
        }
        let var = env_var_name(section, name);
        if let Some(v) = self.env.vars.get(&var) {
            return non_empty(v)
                .map(|v| SecretString::from(v.to_string()))
                .or_else(|| {
                    self.problem(
                        Origin::Env(var),
                        format!("{section}.{name}"),
                        "is set but empty",
                    );
                    None
                });
        }
        let file = self.string(section, file_key, "");
        if !file.is_empty() {
            let path = self.resolve(Path::new(&file));
            return self.read_secret_file(section, file_key, &path);
        }
        // `LoadCredential=daily_api_key:...` names it directly; the shipped
        // unit loads the folder /etc/kiosk-gateway/credentials with
        // `LoadCredential=kiosk-gateway:<folder>`, which prefixes each name.
        let dir = self.env.credentials_dir.clone()?;
        let names = [
            format!("{section}_{name}"),
            format!("{CREDENTIAL_PREFIX}_{section}_{name}"),
        ];
        let found = names.iter().map(|n| dir.join(n)).find(|p| p.exists())?;
        self.read_secret_file(section, file_key, &found)
    }

    fn read_secret_file(
        &mut self,
        section: &'static str,
        file_key: &'static str,
        path: &Path,
    ) -> Option<SecretString> {
        match std::fs::read_to_string(path) {
            Ok(s) => match non_empty(&s) {
                Some(v) => Some(SecretString::from(v.to_string())),
                None => {
                    self.problem_at(section, file_key, format!("{} is empty", path.display()));
                    None
                }
            },
            Err(e) => {
                self.problem_at(
                    section,
                    file_key,
                    format!("cannot read {}: {e}", path.display()),
                );
                None
            }
        }
    }

    /// Reports sections, keys and `KIOSK_GATEWAY_*` variables that nothing
    /// asked for: almost always a typo, and silently ignoring one would
    /// leave a kiosk running on a default its operator meant to change.
    fn report_unknown(&mut self) {
        let sections: Vec<&'static str> = self.known.keys().copied().collect();
        let mut found = Vec::new();
        for (name, item) in self.root.iter() {
            let key_line = self.line_of(self.root.key(name).and_then(|k| k.span()));
            match self.known.get(name) {
                None => found.push((
                    key_line,
                    name.to_string(),
                    format!("unknown section{}", did_you_mean(name, &sections)),
                )),
                Some(keys) => match item.as_table_like() {
                    None => found.push((
                        key_line,
                        name.to_string(),
                        format!("expected a table [{name}], found {}", describe(item)),
                    )),
                    Some(table) => {
                        let keys: Vec<&'static str> = keys.iter().copied().collect();
                        for (key, _) in table.iter() {
                            if !keys.contains(&key) {
                                let line = self
                                    .line_of(table.get_key_value(key).and_then(|(k, _)| k.span()));
                                found.push((
                                    line,
                                    format!("{name}.{key}"),
                                    format!("unknown key{}", did_you_mean(key, &keys)),
                                ));
                            }
                        }
                    }
                },
            }
        }
        for (line, key, message) in found {
            let origin = self.file_origin(line);
            self.problem(origin, key, message);
        }
        let known_vars: Vec<String> = self
            .known
            .iter()
            .flat_map(|(s, keys)| keys.iter().map(move |k| env_var_name(s, k)))
            .collect();
        let unknown_vars: Vec<String> = self
            .env
            .vars
            .keys()
            .filter(|v| !known_vars.contains(v) && !NON_OVERRIDE_VARS.contains(&v.as_str()))
            .cloned()
            .collect();
        let candidates: Vec<&str> = known_vars.iter().map(String::as_str).collect();
        for var in unknown_vars {
            let hint = did_you_mean(&var, &candidates);
            self.problem(
                Origin::Env(var.clone()),
                var,
                format!("not a configuration variable{hint}"),
            );
        }
    }

    /// Ends loading: unknown keys are reported and all problems returned
    /// in file order.
    pub fn finish(mut self) -> Vec<Problem> {
        self.report_unknown();
        self.problems.sort_by(|a, b| a.origin.cmp(&b.origin));
        self.problems
    }
}

/// A secret as the rest of the gateway sees it ([`super::secret_text`]),
/// if anything is left.
fn non_empty(s: &str) -> Option<&str> {
    let t = super::secret_text(s);
    (!t.is_empty()).then_some(t)
}

fn describe(item: &Item) -> String {
    match item {
        Item::None => "nothing".into(),
        Item::Table(_) | Item::ArrayOfTables(_) => "a table".into(),
        Item::Value(v) => match v {
            toml_edit::Value::String(s) => format!("the string {:?}", s.value()),
            toml_edit::Value::Integer(i) => format!("the integer {}", i.value()),
            toml_edit::Value::Float(f) => format!("the number {}", f.value()),
            toml_edit::Value::Boolean(b) => format!("{}", b.value()),
            toml_edit::Value::Datetime(_) => "a date".into(),
            toml_edit::Value::Array(_) => "an array".into(),
            toml_edit::Value::InlineTable(_) => "a table".into(),
        },
    }
}

fn quoted_list(options: &[&str]) -> String {
    let quoted: Vec<String> = options.iter().map(|o| format!("{o:?}")).collect();
    quoted.join(", ")
}

/// `"; did you mean \"x\"?"` for the closest candidate, or nothing.
pub fn did_you_mean(word: &str, candidates: &[&str]) -> String {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!("; did you mean {c:?}?"))
        .unwrap_or_default()
}
