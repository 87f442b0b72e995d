//! `flink-gitops run` as a child process: start, query over HTTP, signal, stop (killed on drop).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{SpecRepo, write_config};

pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
    pub port: u16,
}

impl Daemon {
    pub fn start(config: &Path, log: PathBuf, env: &[(&str, &str)]) -> Daemon {
        Daemon::spawn(
            Command::new(env!("CARGO_BIN_EXE_flink-gitops")),
            config,
            log,
            env,
        )
    }

    /// Starts the daemon with its soft limit on open files set to `limit` (systemd's default
    /// `LimitNOFILE=` soft limit is 1024), so descriptor exhaustion shows as it would in production.
    pub fn start_with_open_files(config: &Path, log: PathBuf, limit: u64) -> Daemon {
        let mut shell = Command::new("sh");
        // `exec` keeps the pid, so killing the child kills the daemon.
        shell.args([
            "-c",
            &format!("ulimit -Sn {limit} && exec \"$0\" \"$@\""),
            env!("CARGO_BIN_EXE_flink-gitops"),
        ]);
        Daemon::spawn(shell, config, log, &[])
    }

    fn spawn(mut command: Command, config: &Path, log: PathBuf, env: &[(&str, &str)]) -> Daemon {
        let text = std::fs::read_to_string(config).unwrap();
        let port: u16 = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("listen: 127.0.0.1:"))
            .and_then(|p| p.trim().parse().ok())
            .expect("config has server.listen");
        let child = command
            .args(["-vv", "run", "-c", config.to_str().unwrap()])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon { child, log, port }
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        let output = Command::new("curl")
            .args(["-s", "--max-time", "5", "-w", "\n%{http_code}"])
            .arg(format!("http://127.0.0.1:{}{path}", self.port))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.parse().unwrap_or(0), body.to_string())
    }

    /// One series of `/metrics` as the text format prints it (`name` or `name{label="value"}`);
    /// 0 when absent, as a labelled counter is until it first counts.
    pub fn metric(&self, series: &str) -> f64 {
        let (code, text) = self.get("/metrics");
        assert_eq!(code, 200, "/metrics: {text}");
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(|value| {
                value
                    .trim()
                    .parse()
                    .unwrap_or_else(|e| panic!("{series} {value}: {e}"))
            })
            .unwrap_or(0.0)
    }

    pub fn post_webhook(&self, body: &str, headers: &[String]) -> u16 {
        let mut command = Command::new("curl");
        command.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            "--data-binary",
            body,
        ]);
        for header in headers {
            command.args(["-H", header]);
        }
        let output = command
            .arg(format!("http://127.0.0.1:{}/webhook", self.port))
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).parse().unwrap_or(0)
    }

    pub fn wait_for(&self, what: &str, timeout: Duration, mut check: impl FnMut(&Daemon) -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if check(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "timed out waiting for {what}; daemon log:\n{}",
            self.log_text()
        );
    }

    /// Waits for the daemon to end on its own; panics with `what` and the log if it still runs at `timeout`.
    pub fn wait_for_exit(&mut self, what: &str, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{what}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, name: &str) {
        Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn service_config(
    work: &Path,
    repo: &SpecRepo,
    flink: &str,
    extra_server: &str,
    poll: &str,
) -> PathBuf {
    let path = write_config(work, repo, flink);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text = text.replace("poll_interval: 5s", &format!("poll_interval: {poll}"));
    text.push_str(&format!(
        "server:\n  listen: 127.0.0.1:{}\n  ready_window: 1m\n{extra_server}reconcile:\n  interval: 2s\n  poll_interval: 300ms\n  savepoint_timeout: 60s\n",
        free_port()
    ));
    std::fs::write(&path, text).unwrap();
    path
}
