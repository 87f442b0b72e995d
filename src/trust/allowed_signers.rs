//! A strict subset of OpenSSH's allowed_signers: literal principals, required namespaces, `Z` times, ed25519 keys.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};

use crate::limits::Limits;

use super::sshsig::{fingerprint, parse_public_key_blob};

/// A line of the file that is outside the supported subset or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {reason}", path.display())]
pub struct AllowedSignersError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line number (0 for the whole file).
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// Why no trusted signer matched a signature's key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignerError {
    /// The key is not in the file.
    #[error("key {fingerprint} is not in the allowed signers")]
    UnknownKey {
        /// The key's fingerprint.
        fingerprint: String,
    },
    /// The key is listed, but not for this namespace.
    #[error(
        "key {fingerprint} ({principal}, line {line}) is not allowed to sign for namespace `{namespace}` (only {allowed})"
    )]
    NamespaceNotAllowed {
        /// The key's fingerprint.
        fingerprint: String,
        /// The line's first principal.
        principal: String,
        /// The line.
        line: usize,
        /// The namespace asked for.
        namespace: String,
        /// The namespaces the line allows.
        allowed: String,
    },
    /// The key's validity ended before the time it was judged at.
    #[error(
        "key {fingerprint} ({principal}, line {line}) expired: valid-before {valid_before}, judged at {at}"
    )]
    Expired {
        /// The key's fingerprint.
        fingerprint: String,
        /// The line's first principal.
        principal: String,
        /// The line.
        line: usize,
        /// The bound.
        valid_before: DateTime<Utc>,
        /// When the agent first saw the signed object.
        at: DateTime<Utc>,
    },
    /// The key's validity had not begun.
    #[error(
        "key {fingerprint} ({principal}, line {line}) is not valid yet: valid-after {valid_after}, judged at {at}"
    )]
    NotYetValid {
        /// The key's fingerprint.
        fingerprint: String,
        /// The line's first principal.
        principal: String,
        /// The line.
        line: usize,
        /// The bound.
        valid_after: DateTime<Utc>,
        /// When the agent first saw the signed object.
        at: DateTime<Utc>,
    },
}

/// One accepted line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedSigner {
    /// Literal principals, or `*@domain`.
    pub principals: Vec<String>,
    /// Namespaces the key may sign for.
    pub namespaces: Vec<String>,
    /// Inclusive lower bound of validity.
    pub valid_after: Option<DateTime<Utc>>,
    /// Inclusive upper bound of validity.
    pub valid_before: Option<DateTime<Utc>>,
    /// The ed25519 key.
    pub key: [u8; 32],
    /// Where it was defined.
    pub line: usize,
}

impl AllowedSigner {
    /// The principal used to name this signer in logs and the audit trail.
    pub fn principal(&self) -> &str {
        self.principals.first().map(String::as_str).unwrap_or("")
    }
}

/// The parsed file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedSigners {
    /// Accepted lines in file order.
    pub signers: Vec<AllowedSigner>,
}

fn literal_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['*', '?', '!', '"', '\'', ',', ' '])
}

fn valid_principal(principal: &str) -> bool {
    match principal.strip_prefix("*@") {
        Some(domain) => literal_name(domain) && !domain.contains('@'),
        None => literal_name(principal),
    }
}

fn parse_time(value: &str) -> Result<DateTime<Utc>, String> {
    let digits = value.strip_suffix('Z').ok_or_else(|| {
        format!(
            "time `{value}` must end in Z (UTC); local times depend on the verifier's time zone"
        )
    })?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("time `{value}` must be YYYYMMDD[HHMM[SS]]Z"));
    }
    let parsed = match digits.len() {
        8 => NaiveDate::parse_from_str(digits, "%Y%m%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0)),
        12 => NaiveDateTime::parse_from_str(digits, "%Y%m%d%H%M").ok(),
        14 => NaiveDateTime::parse_from_str(digits, "%Y%m%d%H%M%S").ok(),
        _ => None,
    };
    parsed
        .map(|t| Utc.from_utc_datetime(&t))
        .ok_or_else(|| format!("time `{value}` must be YYYYMMDD[HHMM[SS]]Z"))
}

/// Splits `a,b="x,y",c` into `(name, value)` pairs, respecting quotes.
fn split_options(text: &str) -> Result<Vec<(String, Option<String>)>, String> {
    let mut options = Vec::new();
    let mut chars = text.chars().peekable();
    while chars.peek().is_some() {
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            name.push(c);
            chars.next();
        }
        let mut value = None;
        if chars.peek() == Some(&'=') {
            chars.next();
            let mut raw = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == '"' {
                        closed = true;
                        break;
                    }
                    raw.push(c);
                }
                if !closed {
                    return Err(format!("unterminated quote in option `{name}`"));
                }
            } else {
                return Err(format!(
                    "the value of option `{name}` must be in double quotes, as ssh-keygen requires"
                ));
            }
            value = Some(raw);
        }
        match chars.next() {
            None | Some(',') => {}
            Some(c) => return Err(format!("unexpected `{c}` after option `{name}`")),
        }
        if name.is_empty() {
            return Err("empty option".into());
        }
        options.push((name.to_ascii_lowercase(), value));
    }
    Ok(options)
}

fn looks_like_key_type(token: &str) -> bool {
    token.starts_with("ssh-") || token.starts_with("ecdsa-") || token.starts_with("sk-")
}

fn parse_line(line: &str) -> Result<AllowedSigner, String> {
    let mut tokens = line.split_ascii_whitespace();
    let principals_text = tokens.next().ok_or("empty line")?;
    let options_text = tokens.next().ok_or("missing options and key")?;
    if looks_like_key_type(options_text) {
        return Err(
            "`namespaces=\"…\"` is required on every line (e.g. namespaces=\"git\")".into(),
        );
    }
    let key_type = tokens.next().ok_or("missing key type")?;
    let key_text = tokens.next().ok_or("missing key")?;

    if principals_text.starts_with('"') {
        return Err("quoted principals are not supported".into());
    }
    let principals: Vec<String> = principals_text.split(',').map(str::to_string).collect();
    if let Some(bad) = principals.iter().find(|p| !valid_principal(p)) {
        return Err(format!(
            "principal `{bad}` is not supported: use literal names or `*@domain` (no other patterns)"
        ));
    }

    let mut namespaces = None;
    let mut valid_after = None;
    let mut valid_before = None;
    for (name, value) in split_options(options_text)? {
        let slot_taken = match name.as_str() {
            "namespaces" => namespaces.is_some(),
            "valid-after" => valid_after.is_some(),
            "valid-before" => valid_before.is_some(),
            _ => false,
        };
        if slot_taken {
            return Err(format!("option `{name}` is repeated"));
        }
        match (name.as_str(), value) {
            ("cert-authority", _) => {
                return Err("`cert-authority` is not supported: list each signer's key".into());
            }
            ("namespaces", Some(value)) => {
                let list: Vec<String> = value.split(',').map(str::to_string).collect();
                if let Some(bad) = list.iter().find(|n| !literal_name(n)) {
                    return Err(format!(
                        "namespace `{bad}` must be a literal name (no patterns)"
                    ));
                }
                namespaces = Some(list);
            }
            ("valid-after", Some(value)) => valid_after = Some(parse_time(&value)?),
            ("valid-before", Some(value)) => valid_before = Some(parse_time(&value)?),
            ("namespaces" | "valid-after" | "valid-before", None) => {
                return Err(format!("option `{name}` needs a value"));
            }
            (other, _) => return Err(format!("unknown option `{other}`")),
        }
    }
    let namespaces = namespaces
        .ok_or("`namespaces=\"…\"` is required on every line (e.g. namespaces=\"git\")")?;
    if let (Some(after), Some(before)) = (valid_after, valid_before)
        && before <= after
    {
        return Err("valid-before must be later than valid-after".into());
    }
    if key_type != "ssh-ed25519" {
        return Err(format!(
            "key type `{key_type}` is not supported: only ssh-ed25519"
        ));
    }
    let blob = base64::engine::general_purpose::STANDARD
        .decode(key_text)
        .map_err(|_| "key is not valid base64".to_string())?;
    let key = parse_public_key_blob(&blob).map_err(|e| format!("key: {e}"))?;
    Ok(AllowedSigner {
        principals,
        namespaces,
        valid_after,
        valid_before,
        key,
        line: 0,
    })
}

impl AllowedSigners {
    /// Whether a key is valid only for a time (`valid-after`, `valid-before`): only then does the
    /// time a signature is judged at change its verdict.
    pub fn any_time_bound(&self) -> bool {
        self.signers
            .iter()
            .any(|s| s.valid_after.is_some() || s.valid_before.is_some())
    }

    /// Parses the text of a file; `source` names it in errors.
    pub fn parse(text: &str, source: &Path) -> Result<AllowedSigners, AllowedSignersError> {
        let mut signers = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut signer = parse_line(line).map_err(|reason| AllowedSignersError {
                path: source.to_path_buf(),
                line: index + 1,
                reason,
            })?;
            signer.line = index + 1;
            signers.push(signer);
        }
        Ok(AllowedSigners { signers })
    }

    /// Reads and parses a file (size-capped).
    pub fn load(path: &Path) -> Result<AllowedSigners, AllowedSignersError> {
        let whole = |reason: String| AllowedSignersError {
            path: path.to_path_buf(),
            line: 0,
            reason,
        };
        let bytes = crate::util::read_file_limited(path, Limits::DEFAULT.allowed_signers_bytes)
            .map_err(|e| whole(e.to_string()))?;
        let text = String::from_utf8(bytes).map_err(|_| whole("not UTF-8".into()))?;
        Self::parse(&text, path)
    }

    /// The signer line that allows `key` to sign for `namespace` at time `at`, or the precise reason none does.
    pub fn find(
        &self,
        key: &[u8; 32],
        namespace: &str,
        at: DateTime<Utc>,
    ) -> Result<&AllowedSigner, SignerError> {
        let fingerprint = fingerprint(key);
        let mut closest: Option<SignerError> = None;
        for signer in self.signers.iter().filter(|s| &s.key == key) {
            let principal = signer.principal().to_string();
            if !signer.namespaces.iter().any(|n| n == namespace) {
                closest.get_or_insert(SignerError::NamespaceNotAllowed {
                    fingerprint: fingerprint.clone(),
                    principal,
                    line: signer.line,
                    namespace: namespace.to_string(),
                    allowed: signer.namespaces.join(","),
                });
                continue;
            }
            if let Some(before) = signer.valid_before.filter(|b| at > *b) {
                closest = Some(SignerError::Expired {
                    fingerprint: fingerprint.clone(),
                    principal,
                    line: signer.line,
                    valid_before: before,
                    at,
                });
                continue;
            }
            if let Some(after) = signer.valid_after.filter(|a| at < *a) {
                closest = Some(SignerError::NotYetValid {
                    fingerprint: fingerprint.clone(),
                    principal,
                    line: signer.line,
                    valid_after: after,
                    at,
                });
                continue;
            }
            return Ok(signer);
        }
        Err(closest.unwrap_or(SignerError::UnknownKey { fingerprint }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIPq+Fkxszmg84trHwRqXJEmhv9wea6JeuIMbBmFUEWkR";

    fn parse(text: &str) -> Result<AllowedSigners, AllowedSignersError> {
        AllowedSigners::parse(text, Path::new("signers"))
    }

    #[test]
    fn the_supported_subset_parses() {
        let text = format!(
            "# team\n\nalice@example.com,*@ops.example.com namespaces=\"git,flink-gitops-artifact\",valid-after=\"20250101Z\",VALID-BEFORE=\"20300101120000Z\" ssh-ed25519 {KEY} alice laptop\n"
        );
        let signers = parse(&text).unwrap();
        let s = &signers.signers[0];
        assert_eq!(s.line, 3);
        assert_eq!(s.principals, ["alice@example.com", "*@ops.example.com"]);
        assert_eq!(s.namespaces, ["git", "flink-gitops-artifact"]);
        assert_eq!(
            s.valid_before.unwrap().to_rfc3339(),
            "2030-01-01T12:00:00+00:00"
        );
    }

    #[test]
    fn everything_outside_the_subset_names_its_line() {
        let cases = [
            (
                format!("a@x cert-authority,namespaces=\"git\" ssh-ed25519 {KEY}"),
                "cert-authority",
            ),
            (
                format!("a@x ssh-ed25519 {KEY}"),
                "namespaces=\"…\"` is required",
            ),
            (
                format!("a@x namespaces=\"git\" ecdsa-sha2-nistp256 {KEY}"),
                "only ssh-ed25519",
            ),
            (
                format!("a@x namespaces=\"git\",no-touch-required ssh-ed25519 {KEY}"),
                "unknown option",
            ),
            (
                format!("a?@x namespaces=\"git\" ssh-ed25519 {KEY}"),
                "principal `a?@x`",
            ),
            (
                format!("a@x namespaces=\"git\",valid-before=\"20300101\" ssh-ed25519 {KEY}"),
                "must end in Z",
            ),
            (
                format!("a@x namespaces=\"git\",valid-before=20300101Z ssh-ed25519 {KEY}"),
                "must be in double quotes",
            ),
            (
                format!("a@x namespaces=\"git\",namespaces=\"file\" ssh-ed25519 {KEY}"),
                "repeated",
            ),
            (
                "a@x namespaces=\"git\" ssh-ed25519 %%%notbase64".to_string(),
                "base64",
            ),
            (
                format!("a@x namespaces=\"g*\" ssh-ed25519 {KEY}"),
                "literal name",
            ),
            (
                format!("\"a b\" namespaces=\"git\" ssh-ed25519 {KEY}"),
                "quoted principals",
            ),
            (
                format!(
                    "a@x namespaces=\"git\",valid-after=\"20300101Z\",valid-before=\"20200101Z\" ssh-ed25519 {KEY}"
                ),
                "later than",
            ),
        ];
        for (line, expected) in cases {
            let err = parse(&format!("# header\n{line}\n")).unwrap_err();
            assert_eq!(err.line, 2, "{line}");
            assert!(err.to_string().starts_with("signers:2: "), "{err}");
            assert!(err.reason.contains(expected), "{line}: {err}");
        }
    }
}
