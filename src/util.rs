//! Small helpers shared by several subsystems: durations, bounded reads, hashing.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

/// Parses a human duration such as `30s`, `5m`, `1h30m` or `500ms`.
///
/// A bare number is refused: a unit makes the intent explicit (`30` could mean seconds or milliseconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("empty duration; write it with a unit, e.g. `30s` or `5m`".into());
    }
    if trimmed.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "`{trimmed}` has no unit; write e.g. `{trimmed}s` or `{trimmed}ms`"
        ));
    }
    let duration = humantime::parse_duration(trimmed)
        .map_err(|e| format!("`{trimmed}` is not a duration ({e}); use e.g. `30s`, `5m`, `1h`"))?;
    // Far larger values overflow clock arithmetic (and mean nothing for an agent that polls).
    if duration > MAX_DURATION {
        return Err(format!(
            "`{trimmed}` is longer than the 10 years any setting may take"
        ));
    }
    Ok(duration)
}

/// The longest duration any setting accepts.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Logs a warning when a secret file can be read by its group or by others.
pub fn warn_if_exposed(path: &std::path::Path, field: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(metadata) = std::fs::metadata(path)
        && metadata.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            file = %path.display(),
            mode = format!("{:o}", metadata.permissions().mode() & 0o777),
            "{field}: the secret file is readable by its group or by others; make it 0600 (or use a systemd credential)"
        );
    }
}

/// An error and every `source()` under it, joined by `: ` (transport errors hide the useful part there).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    // Library errors (reqwest's among them) print the URL they were given, secrets and all.
    redact_urls(&text)
}

/// A URL fit for logs, status and the audit log: user info and query values become `***`, the
/// fragment is dropped. A user name alone stays for ssh (`git@…` names no secret); for other
/// schemes a user name may be a token (`https://TOKEN@host`), so it goes too.
pub fn redact_url(text: &str) -> String {
    let Ok(mut url) = url::Url::parse(text) else {
        return redact_unparsed(text);
    };
    let ssh = matches!(url.scheme(), "ssh" | "git+ssh" | "ssh+git");
    let mut changed = false;
    if url.password().is_some() || (!ssh && !url.username().is_empty()) {
        let _ = url.set_password(None);
        let _ = url.set_username("***");
        changed = true;
    }
    if url.query().is_some() {
        let keys: Vec<String> = url.query_pairs().map(|(key, _)| key.into_owned()).collect();
        let redacted: Vec<String> = keys.iter().map(|key| format!("{key}=***")).collect();
        url.set_query(Some(&redacted.join("&")));
        changed = true;
    }
    if url.fragment().is_some() {
        url.set_fragment(None);
        changed = true;
    }
    if changed {
        url.to_string()
    } else {
        text.to_string()
    }
}

/// For text `url` cannot parse: anything between `://` and an `@` before the path is hidden.
fn redact_unparsed(text: &str) -> String {
    let Some(start) = text.find("://").map(|i| i + 3) else {
        return text.to_string();
    };
    let authority_end = text[start..].find('/').map_or(text.len(), |i| start + i);
    match text[start..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &text[..start], &text[start + at..]),
        None => text.to_string(),
    }
}

/// Every URL inside `text` (up to white space, quotes or brackets), redacted with [`redact_url`].
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(found) = rest.find("://") {
        let start = rest[..found]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        let end = rest[found..]
            .find(|c: char| {
                c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '(' | ')' | '`' | ',')
            })
            .map_or(rest.len(), |i| found + i);
        out.push_str(&rest[..start]);
        out.push_str(&redact_url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Formats a duration the way users write it in config files (`30s`, `5m`).
pub fn format_duration(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

/// Reads at most `limit` bytes of a file; a larger file is an error naming the limit.
pub fn read_file_limited(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut buffer = Vec::new();
    file.take(limit + 1).read_to_end(&mut buffer)?;
    if buffer.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("larger than the limit of {limit} bytes"),
        ));
    }
    Ok(buffer)
}

/// Hex-encoded SHA-256 of a byte slice.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The current wall-clock time; one place so tests and logs agree on the format.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// When the process last made progress (epoch ms): the service loop and every answer from Flink
/// mark it, and the systemd watchdog is fed only while it is recent, so a hung loop is restarted.
static LAST_PROGRESS_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Whether the service loop is waiting for its next poll: idle, which is not hung.
static IDLE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Notes that the service loop starts or stops waiting for its next poll.
pub fn set_idle(idle: bool) {
    IDLE.store(idle, std::sync::atomic::Ordering::Relaxed);
    mark_progress();
}

/// How long ago the process last made progress; zero while it waits idle for its next poll.
pub fn since_progress_or_idle() -> Duration {
    if IDLE.load(std::sync::atomic::Ordering::Relaxed) {
        Duration::ZERO
    } else {
        since_progress()
    }
}

/// Notes that the process made progress now.
pub fn mark_progress() {
    LAST_PROGRESS_MS.store(
        chrono::Utc::now().timestamp_millis(),
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// How long ago the process last made progress (forever if it never did).
pub fn since_progress() -> Duration {
    let last = LAST_PROGRESS_MS.load(std::sync::atomic::Ordering::Relaxed);
    if last == 0 {
        return Duration::MAX;
    }
    Duration::from_millis((chrono::Utc::now().timestamp_millis() - last).max(0) as u64)
}

/// Gives glibc's allocator one arena. It makes one per thread that allocates (up to eight per
/// core), and each keeps what a pass freed: the idle service held 107 MiB with 1,000 jobs, 48 MiB
/// with two arenas, 40 MiB with one. The agent's threads mostly wait, so they hardly contend for
/// it. Call before any thread starts.
pub fn use_one_allocator_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: a plain setting of glibc's allocator, made before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Lets a short command's heap grow in 64 MiB steps and keep what it frees at the top. By
/// default glibc gives the top of the heap back whenever 128 KiB are free there and asks for it
/// again on the next allocation, each time with a system call and fresh pages: `plan` over 1,000
/// jobs spent 3 ms of its 23 so. A command exits within seconds, which returns it all.
///
/// The heap is also offered to the kernel for transparent huge pages (where they are enabled,
/// `always` or `madvise`): each fresh page of it cost a fault, about 500 of `plan`'s 2,200,
/// and a huge page is one fault for 512 of them. This is what glibc's `glibc.malloc.hugetlb=1`
/// tunable does, which a program cannot set for itself. Call before any thread starts.
pub fn keep_heap_for_command() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: plain settings of glibc's allocator, made before other threads exist; the blocks
    // asked for are freed at once, and the advice covers only the heap's own new pages.
    unsafe {
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
        // The heap grows by the pad once a request does not fit in its top: ask until it did
        // (the top left at start is under 132 KiB). If glibc could not grow it with `brk` it
        // maps other memory, the break does not move, and nothing is advised.
        let before = libc::sbrk(0) as usize;
        let mut asked = Vec::with_capacity(4);
        while asked.len() < 4 && libc::sbrk(0) as usize == before {
            asked.push(libc::malloc(120 << 10));
        }
        for block in asked {
            libc::free(block);
        }
        let after = libc::sbrk(0) as usize;
        const HUGE_PAGE: usize = 2 << 20;
        let start = before.next_multiple_of(HUGE_PAGE);
        if after > start {
            // Advice only: where the kernel has no huge page to give, the pages stay small.
            libc::madvise(
                start as *mut libc::c_void,
                after - start,
                libc::MADV_HUGEPAGE,
            );
        }
    }
}

/// Gives memory a finished pass freed back to the system. glibc returns only the top of its heap
/// on its own; what a pass over 1,000 specs left in the middle stayed resident while idle.
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_secrets() {
        assert_eq!(
            redact_url("https://user:hunter2@git.example.com/a.git"),
            "https://***@git.example.com/a.git"
        );
        assert_eq!(
            redact_url("https://ghp_TOKEN@github.com/o/r"),
            "https://***@github.com/o/r"
        );
        assert_eq!(
            redact_url("https://s3.example.com/j.jar?X-Amz-Signature=abc&X-Amz-Expires=60#frag"),
            "https://s3.example.com/j.jar?X-Amz-Signature=***&X-Amz-Expires=***"
        );
        assert_eq!(
            redact_url("ssh://git@host:22/r.git"),
            "ssh://git@host:22/r.git"
        );
        assert_eq!(
            redact_url("ssh://git:pw@host/r.git"),
            "ssh://***@host/r.git"
        );
        assert_eq!(redact_url("http://127.0.0.1:8081"), "http://127.0.0.1:8081");
        assert_eq!(redact_url("/srv/specs"), "/srv/specs");
        assert_eq!(redact_url("https://u:p@[bad/x"), "https://***@[bad/x");
    }

    #[test]
    fn urls_inside_messages_lose_their_secrets() {
        let text = "error sending request for url (https://bot:hunter2@flink.internal/jobs?token=t0k): refused; see http://ok/";
        let redacted = redact_urls(text);
        assert!(
            !redacted.contains("hunter2") && !redacted.contains("t0k"),
            "{redacted}"
        );
        assert_eq!(
            redacted,
            "error sending request for url (https://***@flink.internal/jobs?token=***): refused; see http://ok/"
        );
        assert_eq!(redact_urls("no urls here"), "no urls here");
    }

    #[test]
    fn durations_need_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("30").unwrap_err().contains("no unit"));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("").is_err());
    }
}
