//! What kind of remote `repo.url` names, and strict SSH host-key checking against a `known_hosts` file.
//!
//! The host-key check is written by hand because it decides whom the agent trusts to serve the spec
//! repository: no trust on first use, no fallback to `~/.ssh/known_hosts`, and a refusal that says which
//! key the server offered.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use hmac::{KeyInit, Mac};

use crate::limits::Limits;

/// How the agent reaches the spec repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remote {
    /// A path or `file://` URL on this machine.
    Local,
    /// Plain `http://` or `git://`: allowed only without credentials.
    Http,
    /// `https://`.
    Https,
    /// `ssh://[user@]host[:port]/path` or the scp form `[user@]host:path`.
    Ssh {
        /// The user in the URL, if any.
        user: Option<String>,
        /// The host name or address.
        host: String,
        /// The TCP port (22 unless the URL says otherwise).
        port: u16,
    },
}

impl Remote {
    /// Classifies a `repo.url` the way git does; `Err` says why it cannot be used.
    pub fn parse(url: &str) -> Result<Remote, String> {
        if let Some((scheme, _)) = url.split_once("://") {
            let parsed = url::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
            return match scheme.to_ascii_lowercase().as_str() {
                "file" => Ok(Remote::Local),
                // git:// is plain text like http://: no credentials can go with it.
                "http" | "git" => Ok(Remote::Http),
                "https" => Ok(Remote::Https),
                "ssh" | "git+ssh" | "ssh+git" => {
                    let host = parsed
                        .host_str()
                        .filter(|h| !h.is_empty())
                        .ok_or_else(|| format!("`{url}` names no host"))?;
                    Ok(Remote::Ssh {
                        user: Some(parsed.username())
                            .filter(|u| !u.is_empty())
                            .map(str::to_string),
                        host: host
                            .trim_start_matches('[')
                            .trim_end_matches(']')
                            .to_string(),
                        port: parsed.port().unwrap_or(22),
                    })
                }
                other => Err(format!(
                    "unsupported scheme `{other}`: use a local path, file://, https://, ssh:// or git://"
                )),
            };
        }
        // git's rule for the scp form: a colon before any slash, and not a Windows drive letter.
        match url.split_once(':') {
            Some((authority, _)) if !authority.contains('/') && authority.len() > 1 => {
                let (user, host) = match authority.rsplit_once('@') {
                    Some((user, host)) => (Some(user.to_string()), host),
                    None => (None, authority),
                };
                let host = host.trim_start_matches('[').trim_end_matches(']');
                if host.is_empty() {
                    return Err(format!("`{url}` names no host"));
                }
                Ok(Remote::Ssh {
                    user,
                    host: host.to_string(),
                    port: 22,
                })
            }
            _ => Ok(Remote::Local),
        }
    }

    /// The name OpenSSH looks up in `known_hosts`: `host`, or `[host]:port` off the default port.
    pub fn known_hosts_name(host: &str, port: u16) -> String {
        if port == 22 {
            host.to_string()
        } else {
            format!("[{host}]:{port}")
        }
    }
}

/// Why a server's host key was refused, or the file could not be used.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HostKeyError {
    /// No line of the file names this host.
    #[error(
        "the ssh host {host} is not listed in known_hosts file {file} (it offered {key_type} {fingerprint}); add the host's keys, e.g. with `ssh-keyscan -p PORT HOST`, after checking them"
    )]
    Unknown {
        /// `host` or `[host]:port`.
        host: String,
        /// The known_hosts file.
        file: PathBuf,
        /// The offered key's type.
        key_type: String,
        /// `SHA256:…` of the offered key.
        fingerprint: String,
    },
    /// The host is listed, with other keys.
    #[error(
        "REMOTE HOST KEY MISMATCH: the ssh host {host} offered {key_type} {fingerprint}, which known_hosts file {file} does not list for it; someone may be intercepting the connection, or the host key changed"
    )]
    Mismatch {
        /// `host` or `[host]:port`.
        host: String,
        /// The known_hosts file.
        file: PathBuf,
        /// The offered key's type.
        key_type: String,
        /// `SHA256:…` of the offered key.
        fingerprint: String,
    },
    /// The offered key is marked `@revoked`.
    #[error(
        "the ssh host {host} offered {fingerprint}, which known_hosts file {file} marks @revoked"
    )]
    Revoked {
        /// `host` or `[host]:port`.
        host: String,
        /// The known_hosts file.
        file: PathBuf,
        /// `SHA256:…` of the offered key.
        fingerprint: String,
    },
    /// The file cannot be read or a line cannot be parsed.
    #[error("known_hosts file {file}: {reason}")]
    File {
        /// The known_hosts file.
        file: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Marker {
    None,
    Revoked,
    CertAuthority,
}

#[derive(Debug, Clone)]
struct Entry {
    marker: Marker,
    hosts: HostPatterns,
    key: Vec<u8>,
}

#[derive(Debug, Clone)]
enum HostPatterns {
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
    List(Vec<String>),
}

impl HostPatterns {
    fn matches(&self, name: &str) -> bool {
        match self {
            HostPatterns::Hashed { salt, hash } => {
                let Ok(mut mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(salt) else {
                    return false;
                };
                mac.update(name.as_bytes());
                mac.verify_slice(hash).is_ok()
            }
            HostPatterns::List(patterns) => {
                let name = name.to_ascii_lowercase();
                let mut matched = false;
                for pattern in patterns {
                    match pattern.strip_prefix('!') {
                        Some(negated) if wildcard_match(&negated.to_ascii_lowercase(), &name) => {
                            return false;
                        }
                        Some(_) => {}
                        None => matched |= wildcard_match(&pattern.to_ascii_lowercase(), &name),
                    }
                }
                matched
            }
        }
    }
}

/// OpenSSH's pattern language: `*` any run of characters, `?` one character.
fn wildcard_match(pattern: &str, name: &str) -> bool {
    let (pattern, name): (Vec<char>, Vec<char>) =
        (pattern.chars().collect(), name.chars().collect());
    let (mut p, mut n) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some('*') => {
                backtrack = Some((p, n));
                p += 1;
            }
            Some(&c) if c == '?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match backtrack {
                Some((star, consumed)) => {
                    p = star + 1;
                    n = consumed + 1;
                    backtrack = Some((star, consumed + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// The keys a `known_hosts` file lists.
#[derive(Debug, Clone)]
pub struct KnownHosts {
    file: PathBuf,
    entries: Vec<Entry>,
}

impl KnownHosts {
    /// Reads and parses the file; any line it cannot understand is an error naming the line.
    pub fn load(file: &Path) -> Result<KnownHosts, HostKeyError> {
        let bytes = crate::util::read_file_limited(file, Limits::DEFAULT.known_hosts_bytes)
            .map_err(|e| HostKeyError::File {
                file: file.to_path_buf(),
                reason: e.to_string(),
            })?;
        let text = String::from_utf8(bytes).map_err(|_| HostKeyError::File {
            file: file.to_path_buf(),
            reason: "not UTF-8 text".into(),
        })?;
        Self::parse(file, &text)
    }

    fn parse(file: &Path, text: &str) -> Result<KnownHosts, HostKeyError> {
        let mut entries = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: &str| HostKeyError::File {
                file: file.to_path_buf(),
                reason: format!("line {}: {reason}", index + 1),
            };
            let mut fields = line.split_whitespace();
            let mut first = fields.next().unwrap_or_default();
            let marker = match first {
                "@revoked" => Marker::Revoked,
                "@cert-authority" => Marker::CertAuthority,
                other if other.starts_with('@') => return Err(bad("unknown marker")),
                _ => Marker::None,
            };
            if marker != Marker::None {
                first = fields.next().ok_or_else(|| bad("no host pattern"))?;
            }
            let hosts = match first.strip_prefix("|1|") {
                Some(hashed) => {
                    let (salt, hash) = hashed
                        .split_once('|')
                        .ok_or_else(|| bad("hashed host without a hash"))?;
                    HostPatterns::Hashed {
                        salt: STANDARD.decode(salt).map_err(|_| bad("bad salt"))?,
                        hash: STANDARD.decode(hash).map_err(|_| bad("bad hash"))?,
                    }
                }
                None => HostPatterns::List(first.split(',').map(str::to_string).collect()),
            };
            let key_type = fields.next().ok_or_else(|| bad("no key type"))?;
            let key = fields
                .next()
                .and_then(|encoded| STANDARD.decode(encoded).ok())
                .ok_or_else(|| bad("no readable base64 key"))?;
            if key_type_of(&key).as_deref() != Some(key_type) {
                return Err(bad(&format!("the key is not a `{key_type}` key")));
            }
            entries.push(Entry { marker, hosts, key });
        }
        Ok(KnownHosts {
            file: file.to_path_buf(),
            entries,
        })
    }

    /// Accepts `key` (the SSH wire encoding of the server's host key) for `host` on `port`, or says why not.
    pub fn check(&self, host: &str, port: u16, key: &[u8]) -> Result<(), HostKeyError> {
        let name = Remote::known_hosts_name(host, port);
        let fingerprint = fingerprint(key);
        let key_type = key_type_of(key).unwrap_or_else(|| "unknown".into());
        let for_host: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|entry| entry.hosts.matches(&name))
            .collect();
        if for_host
            .iter()
            .any(|entry| entry.marker == Marker::Revoked && entry.key == key)
        {
            return Err(HostKeyError::Revoked {
                host: name,
                file: self.file.clone(),
                fingerprint,
            });
        }
        // Host certificates are not accepted: a CA line trusts nothing by itself here.
        let plain: Vec<&&Entry> = for_host
            .iter()
            .filter(|entry| entry.marker == Marker::None)
            .collect();
        if plain.iter().any(|entry| entry.key == key) {
            return Ok(());
        }
        if plain.is_empty() {
            Err(HostKeyError::Unknown {
                host: name,
                file: self.file.clone(),
                key_type,
                fingerprint,
            })
        } else {
            Err(HostKeyError::Mismatch {
                host: name,
                file: self.file.clone(),
                key_type,
                fingerprint,
            })
        }
    }
}

/// The algorithm name at the start of an SSH public-key blob.
fn key_type_of(key: &[u8]) -> Option<String> {
    let length = u32::from_be_bytes(key.get(..4)?.try_into().ok()?) as usize;
    let name = key.get(4..4usize.checked_add(length)?)?;
    String::from_utf8(name.to_vec()).ok()
}

/// `SHA256:…` as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &[u8]) -> String {
    use sha2::Digest;
    format!(
        "SHA256:{}",
        STANDARD_NO_PAD.encode(sha2::Sha256::digest(key))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(key_type: &str, body: &[u8]) -> Vec<u8> {
        let mut out = (key_type.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(key_type.as_bytes());
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn line(hosts: &str, key: &[u8]) -> String {
        format!("{hosts} ssh-ed25519 {}\n", STANDARD.encode(key))
    }

    #[test]
    fn remotes_are_classified_like_git_does() {
        assert_eq!(Remote::parse("/srv/specs.git"), Ok(Remote::Local));
        assert_eq!(Remote::parse("file:///srv/specs.git"), Ok(Remote::Local));
        assert_eq!(
            Remote::parse("https://git.example.com/a.git"),
            Ok(Remote::Https)
        );
        assert_eq!(
            Remote::parse("http://git.example.com/a.git"),
            Ok(Remote::Http)
        );
        assert_eq!(
            Remote::parse("git@github.com:org/specs.git"),
            Ok(Remote::Ssh {
                user: Some("git".into()),
                host: "github.com".into(),
                port: 22
            })
        );
        assert_eq!(
            Remote::parse("ssh://deploy@[::1]:2222/srv/specs.git"),
            Ok(Remote::Ssh {
                user: Some("deploy".into()),
                host: "::1".into(),
                port: 2222
            })
        );
        assert!(Remote::parse("ftp://host/x").is_err());
    }

    #[test]
    fn host_keys_are_checked_by_name_port_and_key() {
        let good = blob("ssh-ed25519", &[7; 32]);
        let other = blob("ssh-ed25519", &[8; 32]);
        let file = Path::new("known_hosts");
        let text =
            line("git.example.com,10.0.0.1", &good) + &line("[git.example.com]:2222", &other);
        let known = KnownHosts::parse(file, &text).unwrap();
        assert_eq!(known.check("git.example.com", 22, &good), Ok(()));
        assert_eq!(known.check("10.0.0.1", 22, &good), Ok(()));
        assert!(matches!(
            known.check("git.example.com", 22, &other),
            Err(HostKeyError::Mismatch { .. })
        ));
        assert_eq!(known.check("git.example.com", 2222, &other), Ok(()));
        assert!(matches!(
            known.check("git.example.com", 2222, &good),
            Err(HostKeyError::Mismatch { .. })
        ));
        assert!(matches!(
            known.check("evil.example.com", 22, &good),
            Err(HostKeyError::Unknown { .. })
        ));
    }

    #[test]
    fn hashed_names_wildcards_negation_and_markers() {
        let key = blob("ssh-ed25519", &[1; 32]);
        let salt = [9u8; 20];
        let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(&salt).unwrap();
        mac.update(b"[127.0.0.1]:2200");
        let hashed = format!(
            "|1|{}|{}",
            STANDARD.encode(salt),
            STANDARD.encode(mac.finalize().into_bytes())
        );
        let text = line(&hashed, &key)
            + &line("*.example.com,!bad.example.com", &key)
            + &format!(
                "@cert-authority *.ca.example ssh-ed25519 {}\n",
                STANDARD.encode(&key)
            )
            + &format!(
                "@revoked revoked.example ssh-ed25519 {}\n",
                STANDARD.encode(&key)
            )
            + &line("revoked.example", &key);
        let known = KnownHosts::parse(Path::new("k"), &text).unwrap();
        assert_eq!(known.check("127.0.0.1", 2200, &key), Ok(()));
        assert!(known.check("127.0.0.1", 22, &key).is_err());
        assert_eq!(known.check("git.example.com", 22, &key), Ok(()));
        assert!(known.check("bad.example.com", 22, &key).is_err());
        assert!(known.check("x.ca.example", 22, &key).is_err());
        assert!(matches!(
            known.check("revoked.example", 22, &key),
            Err(HostKeyError::Revoked { .. })
        ));
    }

    #[test]
    fn unreadable_lines_are_errors_with_their_number() {
        let error = KnownHosts::parse(Path::new("k"), "# c\n\nhost ssh-ed25519 !!!\n").unwrap_err();
        assert!(error.to_string().contains("line 3"), "{error}");
        let key = blob("ssh-rsa", &[1; 8]);
        let error = KnownHosts::parse(Path::new("k"), &line("host", &key)).unwrap_err();
        assert!(
            error.to_string().contains("not a `ssh-ed25519` key"),
            "{error}"
        );
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*", "anything"));
        assert!(wildcard_match("a*c", "abbbc"));
        assert!(wildcard_match("a?c", "abc"));
        assert!(!wildcard_match("a?c", "abbc"));
        assert!(wildcard_match("*.example.com", "git.example.com"));
        assert!(!wildcard_match("*.example.com", "example.com"));
    }
}
