//! git's smart HTTP protocol over https, spoken by the agent's own HTTP client (rustls, the same
//! as the Flink client's) instead of libgit2's OpenSSL stream.
//!
//! Why: libgit2 built with OpenSSL makes its TLS context when it starts, in every process and for
//! every command, https remote or not. That was about a millisecond of each command's start and
//! most of OpenSSL's pages in the idle service. Here TLS is set up only when an https remote is
//! fetched.
//!
//! libgit2 keeps the protocol (ref advertisement, negotiation, pack); this module only carries its
//! requests: `GET info/refs?service=git-upload-pack` and `POST git-upload-pack`.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use git2::transport::{Service, SmartSubtransport, SmartSubtransportStream, Transport};

use super::{NO_CREDENTIALS, Refusal, credentials_refused};

/// What one fetch's https requests need: set by the fetch on its own thread, read by the transport.
pub(super) struct HttpsFetch {
    /// User name for the token (`repo.auth.username`, else the URL's, else `git`).
    pub(super) user: String,
    /// The token and the file it came from (named in errors; the token never is).
    pub(super) token: Option<(String, PathBuf)>,
    /// `repo.tls.ca_file`, trusted besides the system's CAs.
    pub(super) ca_file: Option<PathBuf>,
    /// No request runs past this.
    pub(super) deadline: Instant,
    /// Where a refusal is kept for the fetch's error.
    pub(super) refusal: Refusal,
}

thread_local! {
    static CURRENT_FETCH: RefCell<Option<Arc<HttpsFetch>>> = const { RefCell::new(None) };
}

/// Makes `fetch` the settings of https requests on this thread until the guard is dropped.
pub(super) fn during(fetch: HttpsFetch) -> impl Drop {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            CURRENT_FETCH.with(|current| current.borrow_mut().take());
        }
    }
    CURRENT_FETCH.with(|current| *current.borrow_mut() = Some(Arc::new(fetch)));
    Reset
}

/// Makes libgit2 use this module for `https://` remotes.
///
/// # Safety
/// libgit2's transport registry is not synchronised: call before any other thread uses git2.
pub(super) unsafe fn register() -> Result<(), git2::Error> {
    // SAFETY: the caller guarantees no other thread uses git2 yet.
    unsafe {
        git2::transport::register("https", |remote| {
            let fetch = CURRENT_FETCH
                .with(|current| current.borrow().clone())
                .ok_or_else(|| {
                    git2::Error::from_str("https remotes are fetched only by the agent's fetch")
                })?;
            let subtransport = HttpsSubtransport::new(fetch)?;
            Transport::smart(remote, true, subtransport)
        })
    }
}

struct HttpsSubtransport {
    fetch: Arc<HttpsFetch>,
    runtime: Arc<tokio::runtime::Runtime>,
    client: reqwest::Client,
    /// Set once the server asked for credentials, so later requests of the fetch carry them.
    send_token: Arc<AtomicBool>,
    /// Where the ref advertisement was redirected to, if it was: the negotiation goes there too, as
    /// git does (a POST is not redirected as such).
    redirected_base: Arc<Mutex<Option<String>>>,
}

impl HttpsSubtransport {
    fn new(fetch: Arc<HttpsFetch>) -> Result<HttpsSubtransport, git2::Error> {
        let refuse = |reason: String| git2::Error::from_str(&fetch.refusal.record(reason));
        // The fetch runs on a thread of its own, outside the agent's runtime.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| refuse(format!("cannot start the https client: {e}")))?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(fetch.deadline.saturating_duration_since(Instant::now()))
            // Git servers tell git clients by this prefix.
            .user_agent(concat!(
                "git/2.0 (flink-gitops/",
                env!("CARGO_PKG_VERSION"),
                ")"
            ))
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                if attempt.url().scheme() != "https" {
                    attempt.error("a redirect away from https is not followed")
                } else if attempt.previous().len() >= 5 {
                    attempt.error("more than 5 redirects")
                } else {
                    attempt.follow()
                }
            }));
        if let Some(file) = &fetch.ca_file {
            let pem = crate::util::read_file_limited(
                file,
                crate::limits::Limits::DEFAULT.credential_file_bytes,
            )
            .map_err(|e| refuse(format!("repo.tls.ca_file {}: {e}", file.display())))?;
            for certificate in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| refuse(format!("repo.tls.ca_file {}: {e}", file.display())))?
            {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client = {
            let _entered = runtime.enter();
            builder
                .build()
                .map_err(|e| refuse(format!("cannot start the https client: {e}")))?
        };
        Ok(HttpsSubtransport {
            fetch,
            runtime: Arc::new(runtime),
            client,
            send_token: Arc::new(AtomicBool::new(false)),
            redirected_base: Arc::new(Mutex::new(None)),
        })
    }
}

impl SmartSubtransport for HttpsSubtransport {
    fn action(
        &self,
        url: &str,
        action: Service,
    ) -> Result<Box<dyn SmartSubtransportStream>, git2::Error> {
        let base = lock(&self.redirected_base)
            .clone()
            .unwrap_or_else(|| url.trim_end_matches('/').to_string());
        let (request, expected_type) = match action {
            Service::UploadPackLs => (
                Request::Get(format!("{base}/info/refs?service=git-upload-pack")),
                "application/x-git-upload-pack-advertisement",
            ),
            Service::UploadPack => (
                Request::Post(format!("{base}/git-upload-pack")),
                "application/x-git-upload-pack-result",
            ),
            Service::ReceivePackLs | Service::ReceivePack => {
                return Err(git2::Error::from_str("the agent never pushes"));
            }
        };
        Ok(Box::new(HttpsStream {
            fetch: Arc::clone(&self.fetch),
            runtime: Arc::clone(&self.runtime),
            client: self.client.clone(),
            send_token: Arc::clone(&self.send_token),
            redirected_base: Arc::clone(&self.redirected_base),
            request,
            expected_type,
            body: Vec::new(),
            response: None,
            chunk: bytes::Bytes::new(),
        }))
    }

    fn close(&self) -> Result<(), git2::Error> {
        Ok(())
    }
}

enum Request {
    Get(String),
    Post(String),
}

/// One request: what libgit2 writes is the body; the first read sends it.
struct HttpsStream {
    fetch: Arc<HttpsFetch>,
    runtime: Arc<tokio::runtime::Runtime>,
    client: reqwest::Client,
    send_token: Arc<AtomicBool>,
    redirected_base: Arc<Mutex<Option<String>>>,
    request: Request,
    expected_type: &'static str,
    body: Vec<u8>,
    response: Option<reqwest::Response>,
    chunk: bytes::Bytes,
}

impl HttpsStream {
    fn send(&mut self) -> Result<reqwest::Response, String> {
        let mut with_token = self.send_token.load(Ordering::Relaxed);
        loop {
            let request = match &self.request {
                Request::Get(url) => self.client.get(url),
                Request::Post(url) => self
                    .client
                    .post(url)
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        "application/x-git-upload-pack-request",
                    )
                    .header(reqwest::header::ACCEPT, self.expected_type)
                    .body(self.body.clone()),
            };
            let request = match (&self.fetch.token, with_token) {
                (Some((token, _)), true) => request.basic_auth(&self.fetch.user, Some(token)),
                _ => request,
            }
            // Each request, body included, ends by the fetch's deadline.
            .timeout(
                self.fetch
                    .deadline
                    .saturating_duration_since(Instant::now()),
            );
            let response = self
                .runtime
                // reqwest sets up its timeout when the request is sent: inside the runtime.
                .block_on(async { request.send().await })
                .map_err(|e| describe(&e))?;
            if response.status() != reqwest::StatusCode::UNAUTHORIZED {
                return Ok(response);
            }
            match &self.fetch.token {
                Some(_) if !with_token => {
                    with_token = true;
                    self.send_token.store(true, Ordering::Relaxed);
                }
                Some((_, file)) => {
                    return Err(self.refuse(credentials_refused(
                        &format!("the token in {}", file.display()),
                        &self.fetch.user,
                    )));
                }
                None => return Err(self.refuse(NO_CREDENTIALS.into())),
            }
        }
    }

    fn refuse(&self, reason: String) -> String {
        self.fetch.refusal.record(reason)
    }

    fn answer(&mut self) -> Result<reqwest::Response, String> {
        let response = self.send()?;
        let status = response.status();
        if !status.is_success() {
            return Err(self.refuse(format!(
                "{} answered HTTP {status}",
                crate::util::redact_url(response.url().as_str())
            )));
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .unwrap_or("")
            .trim();
        if content_type != self.expected_type {
            return Err(self.refuse(format!(
                "{} does not speak git's smart HTTP protocol (content type `{content_type}`, expected `{}`)",
                crate::util::redact_url(response.url().as_str()),
                self.expected_type
            )));
        }
        if let Request::Get(asked) = &self.request
            && response.url().as_str() != asked
            && let Some(base) = response
                .url()
                .as_str()
                .strip_suffix("/info/refs?service=git-upload-pack")
        {
            *lock(&self.redirected_base) = Some(base.to_string());
        }
        Ok(response)
    }
}

impl Read for HttpsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.response.is_none() {
            self.response = Some(self.answer().map_err(io::Error::other)?);
        }
        while self.chunk.is_empty() {
            let Some(response) = self.response.as_mut() else {
                return Ok(0);
            };
            match self.runtime.block_on(response.chunk()) {
                Ok(Some(chunk)) => self.chunk = chunk,
                Ok(None) => return Ok(0),
                Err(e) => return Err(io::Error::other(describe(&e))),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

impl Write for HttpsStream {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.body.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The error with its causes (reqwest's own message hides whether it was the certificate).
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    if let Some(url) = error.url() {
        text = text.replace(url.as_str(), &crate::util::redact_url(url.as_str()));
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if text.contains("certificate") {
        text.push_str(" (a server with a private CA needs repo.tls.ca_file)");
    }
    text
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
