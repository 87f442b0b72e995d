//! https and ssh spec repositories against real servers on loopback: git's own `git http-backend`
//! behind TLS with a test CA and basic auth, and OpenSSH's `sshd` with a test host key. The right
//! credentials fetch; a wrong token, a wrong client key, an unknown or changed host key, an untrusted
//! CA and a server that never answers are refused with a clear error, and a token never travels over
//! plain http.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flink_gitops::testing::FakeFlink;
use support::*;

/// A child process killed when the test ends, passed or not.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The spec repository, as a bare repository that the servers publish.
fn published_repo(root: &Path) -> (SpecRepo, PathBuf) {
    let repo = SpecRepo::new();
    repo.write("artifacts/job.jar", b"PK\x03\x04 not run by the plan");
    repo.write(
        "jobs/orders.yaml",
        stream_spec("orders", "artifacts/job.jar", 1),
    );
    repo.commit("orders");
    let bare = root.join("specs.git");
    run(Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(repo.path())
        .arg(&bare));
    (repo, bare)
}

/// A config for `url` with extra `repo:` lines, trusting the repo's signer; Flink is the fake at `flink`.
fn config_for(work: &Path, repo: &SpecRepo, url: &str, repo_extra: &str, flink: &str) -> PathBuf {
    let path = write_config(work, repo, flink);
    let text = std::fs::read_to_string(&path).unwrap().replacen(
        &format!("  url: {}\n", repo.path().display()),
        &format!("  url: {url}\n  fetch_timeout: 5s\n{repo_extra}"),
        1,
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// `plan -o json` with a fresh state directory each time (so each call really fetches from scratch).
fn plan(config: &Path) -> (Option<i32>, String, String) {
    let _ = std::fs::remove_dir_all(config.parent().unwrap().join("state"));
    let output = flink_gitops(&["plan", "-c", config.to_str().unwrap(), "-o", "json"]);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn assert_plans_create_orders(config: &Path) {
    let (code, stdout, stderr) = plan(config);
    assert!(
        stdout.contains("\"orders\"") && stdout.contains("create"),
        "exit {code:?}\nstdout: {stdout}\nstderr: {stderr}"
    );
}

fn assert_fetch_refused(config: &Path, expected: &[&str]) -> String {
    let (code, stdout, stderr) = plan(config);
    assert_eq!(code, Some(1), "stdout: {stdout}\nstderr: {stderr}");
    assert!(!stdout.contains("create"), "{stdout}");
    for text in expected {
        assert!(stderr.contains(text), "expected `{text}` in: {stderr}");
    }
    stderr
}

fn fake_flink() -> (tokio::runtime::Runtime, String) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let fake = FakeFlink::new();
    let address = runtime.block_on(fake.serve()).unwrap();
    (runtime, format!("http://{address}"))
}

#[test]
fn https_remote_with_a_token_from_a_file_and_a_private_ca() {
    let work = tempfile::tempdir().unwrap();
    let pki = work.path().join("pki");
    std::fs::create_dir(&pki).unwrap();
    support::tls::make_pki(&pki);
    let (repo, bare) = published_repo(work.path());
    let token = "s3cret-token-4711";
    std::fs::write(work.path().join("token"), format!("{token}\n")).unwrap();
    std::fs::write(work.path().join("wrong-token"), "not-the-token\n").unwrap();
    for file in ["token", "wrong-token"] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            work.path().join(file),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    }
    let port_file = work.path().join("port");
    let _server = Server(
        Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/git_https_server.py"))
            .arg(bare.parent().unwrap())
            .args([pki.join("server.pem"), pki.join("server.key")])
            .arg("ci-bot")
            .arg(work.path().join("token"))
            .arg(&port_file)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs the test's https git server"),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let port: u16 = loop {
        if let Ok(text) = std::fs::read_to_string(&port_file) {
            break text.trim().parse().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the https git server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let (_runtime, flink) = fake_flink();
    let url = format!("https://127.0.0.1:{port}/specs.git");
    let ca = format!("  tls:\n    ca_file: {}\n", pki.join("ca.pem").display());
    let auth = |file: &str| format!("  auth:\n    username: ci-bot\n    token_file: {file}\n");

    // The right token and CA, for the repository at `path` on the server.
    let with_token_and_ca = |path: &str| {
        config_for(
            work.path(),
            &repo,
            &format!("https://127.0.0.1:{port}/{path}"),
            &(auth("token") + &ca),
            &flink,
        )
    };
    assert_plans_create_orders(&with_token_and_ca("specs.git"));

    // A moved repository: the ref advertisement is redirected (https to https), and the negotiation
    // goes where it was redirected, as git does (a POST to the old place would not survive the 301).
    assert_plans_create_orders(&with_token_and_ca("moved/specs.git"));
    // A redirect to plain http would send the token in clear text: not followed.
    assert_fetch_refused(
        &with_token_and_ca("to-http/specs.git"),
        &["redirect away from https"],
    );

    let wrong_token = config_for(
        work.path(),
        &repo,
        &url,
        &(auth("wrong-token") + &ca),
        &flink,
    );
    let stderr = assert_fetch_refused(
        &wrong_token,
        &["authentication failed", "wrong-token", "ci-bot"],
    );
    assert!(
        !stderr.contains("not-the-token"),
        "the token is never printed: {stderr}"
    );

    let no_token = config_for(work.path(), &repo, &url, &ca, &flink);
    assert_fetch_refused(&no_token, &["asks for credentials", "repo.auth.token_file"]);

    let untrusted_ca = config_for(work.path(), &repo, &url, &auth("token"), &flink);
    assert_fetch_refused(
        &untrusted_ca,
        &["fetching https://127.0.0.1", "certificate"],
    );

    // The system's CA bundle (`SSL_CERT_FILE`, read by the agent's https client): with the private
    // CA as the system's bundle, the same config fetches.
    let _ = std::fs::remove_dir_all(work.path().join("state"));
    let with_system_ca = Command::new(env!("CARGO_BIN_EXE_flink-gitops"))
        .args(["plan", "-c", untrusted_ca.to_str().unwrap(), "-o", "json"])
        .env_remove("FLINK_GITOPS_CONFIG")
        .env("SSL_CERT_FILE", pki.join("ca.pem"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&with_system_ca.stdout);
    assert!(
        stdout.contains("\"orders\"") && stdout.contains("create"),
        "exit {:?}\nstdout: {stdout}\nstderr: {}",
        with_system_ca.status.code(),
        String::from_utf8_lossy(&with_system_ca.stderr)
    );

    // The same token over plain http would travel in clear text: refused before anything is sent.
    let plain = config_for(
        work.path(),
        &repo,
        &format!("http://127.0.0.1:{port}/specs.git"),
        &auth("token"),
        &flink,
    );
    let (code, _, stderr) = plan(&plain);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("repo.auth.token_file") && stderr.contains("clear text"),
        "{stderr}"
    );
}

/// `sshd` on a free loopback port, accepting `client_key` for the current user.
struct Sshd {
    _process: Server,
    port: u16,
    host_public: String,
}

fn start_sshd(dir: &Path, client_public: &str) -> Sshd {
    let sshd = Path::new("/usr/sbin/sshd");
    assert!(
        sshd.exists(),
        "/usr/sbin/sshd is missing: scripts/test installs openssh-server (apt-get install openssh-server)"
    );
    let host_key = dir.join("host_key");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&host_key));
    std::fs::write(dir.join("authorized_keys"), format!("{client_public}\n")).unwrap();
    // sshd insists on its privilege-separation folder when it runs as root.
    let _ = std::fs::create_dir_all("/run/sshd");
    let port = free_port();
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {key}\nPidFile {dir}/sshd.pid\nAuthorizedKeysFile {dir}/authorized_keys\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin prohibit-password\n",
            key = host_key.display(),
            dir = dir.display(),
        ),
    )
    .unwrap();
    let process = Server(
        Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start sshd"),
    );
    wait_for_port(port, "sshd");
    let host_public = std::fs::read_to_string(host_key.with_extension("pub")).unwrap();
    Sshd {
        _process: process,
        port,
        host_public: host_public
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" "),
    }
}

#[test]
fn ssh_remote_with_strict_host_key_checking() {
    let work = tempfile::tempdir().unwrap();
    let (repo, bare) = published_repo(work.path());
    let client = Signer::new("agent@example.com");
    let stranger = Signer::new("stranger@example.com");
    let sshd = start_sshd(work.path(), &client.public);
    let (_runtime, flink) = fake_flink();
    let user = run(Command::new("id").arg("-un")).trim().to_string();
    let url = format!("ssh://{user}@127.0.0.1:{}{}", sshd.port, bare.display());
    let host = format!("[127.0.0.1]:{}", sshd.port);
    let known_hosts = |name: &str, line: &str| {
        let path = work.path().join(name);
        std::fs::write(&path, format!("{line}\n")).unwrap();
        path
    };
    let auth = |key: &Path, known: &Path| {
        format!(
            "  auth:\n    ssh_key_file: {}\n    known_hosts_file: {}\n",
            key.display(),
            known.display()
        )
    };
    let right_hosts = known_hosts("known_hosts", &format!("{host} {}", sshd.host_public));

    let good = config_for(
        work.path(),
        &repo,
        &url,
        &auth(&client.key, &right_hosts),
        &flink,
    );
    assert_plans_create_orders(&good);

    // OpenSSL (libssh2's) reads the system's configuration only when an ssh remote is fetched: a
    // broken one fails that fetch, naming it, and a local repository never reads it.
    let broken_conf = work.path().join("broken-openssl.cnf");
    std::fs::write(&broken_conf, "openssl_conf = init\n[init\n").unwrap();
    let with_broken_conf = |config: &Path| {
        let _ = std::fs::remove_dir_all(config.parent().unwrap().join("state"));
        Command::new(env!("CARGO_BIN_EXE_flink-gitops"))
            .args(["plan", "-c", config.to_str().unwrap(), "-o", "json"])
            .env_remove("FLINK_GITOPS_CONFIG")
            .env("OPENSSL_CONF", &broken_conf)
            .output()
            .unwrap()
    };
    let refused = with_broken_conf(&good);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("OpenSSL configuration") && stderr.contains("broken-openssl.cnf"),
        "{stderr}"
    );
    let local = config_for(
        work.path(),
        &repo,
        &repo.path().display().to_string(),
        "",
        &flink,
    );
    let planned = with_broken_conf(&local);
    assert!(
        String::from_utf8_lossy(&planned.stdout).contains("create"),
        "{}",
        String::from_utf8_lossy(&planned.stderr)
    );

    // Another key for the same host: the server is not the one the file vouches for.
    let other_host_key = Signer::new("other-host");
    let changed = known_hosts(
        "known_hosts_changed",
        &format!("{host} {}", other_host_key.public),
    );
    let fingerprint = run(Command::new("ssh-keygen")
        .arg("-lf")
        .arg(work.path().join("host_key.pub")));
    let fingerprint = fingerprint.split_whitespace().nth(1).unwrap().to_string();
    let config = config_for(
        work.path(),
        &repo,
        &url,
        &auth(&client.key, &changed),
        &flink,
    );
    assert_fetch_refused(&config, &["REMOTE HOST KEY MISMATCH", &host, &fingerprint]);

    // The right key, listed for another port: an unknown host, never trusted on first use.
    let elsewhere = known_hosts(
        "known_hosts_elsewhere",
        &format!("127.0.0.1 {}", sshd.host_public),
    );
    let config = config_for(
        work.path(),
        &repo,
        &url,
        &auth(&client.key, &elsewhere),
        &flink,
    );
    assert_fetch_refused(&config, &["is not listed in known_hosts", &fingerprint]);

    let config = config_for(
        work.path(),
        &repo,
        &url,
        &auth(&stranger.key, &right_hosts),
        &flink,
    );
    assert_fetch_refused(
        &config,
        &["authentication failed", &stranger.key.display().to_string()],
    );

    // Without a known_hosts file the config is refused before any connection.
    let config = config_for(
        work.path(),
        &repo,
        &url,
        &format!("  auth:\n    ssh_key_file: {}\n", client.key.display()),
        &flink,
    );
    let (code, _, stderr) = plan(&config);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("repo.auth.known_hosts_file"), "{stderr}");
}

#[test]
fn a_server_that_never_answers_is_given_up_at_the_fetch_timeout() {
    let work = tempfile::tempdir().unwrap();
    let repo = SpecRepo::new();
    repo.write(
        "jobs/orders.yaml",
        stream_spec("orders", "artifacts/job.jar", 1),
    );
    repo.commit("orders");
    // Accepts connections and never says a word, like a stalled proxy.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for stream in silent.incoming().take(4).flatten() {
            open.push(stream);
        }
        // Holds the connections open past the agent's timeouts; the test does not wait for it.
        std::thread::sleep(Duration::from_secs(30));
    });
    let (_runtime, flink) = fake_flink();
    let config = config_for(
        work.path(),
        &repo,
        &format!("https://127.0.0.1:{port}/specs.git"),
        "",
        &flink,
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("fetch_timeout: 5s", "fetch_timeout: 2s");
    std::fs::write(&config, text).unwrap();
    let started = Instant::now();
    assert_fetch_refused(&config, &["repo.fetch_timeout (2s)"]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "gave up after {:?}",
        started.elapsed()
    );
    drop(held);
}
