//! What an operator's request to the agent needs: the agent's record of the job, and who asked.

use std::path::Path;

use super::{Failure, load_config, usage};
use crate::config::Config;
use crate::state::{JobRecord, StateStore};

/// The config, the state database opened for requests, and its record of `job_id`; `no_state`
/// says, in the command's words, what a missing database means.
pub(super) fn recorded_job(
    config_path: &Path,
    job_id: &str,
    no_state: &str,
) -> Result<(Config, StateStore, JobRecord), Failure> {
    let config = load_config(config_path)?;
    let store = StateStore::open_for_requests(&config.state.dir)?.ok_or_else(|| {
        usage(anyhow::anyhow!(
            "no state in {}: {no_state}",
            config.state.dir.display()
        ))
    })?;
    let Some(record) = store.job(job_id)? else {
        return Err(usage(anyhow::anyhow!(
            "the agent has no record of job `{job_id}` (see `flink-gitops status`)"
        )));
    };
    Ok((config, store, record))
}

/// Who asked, for the audit log: the user behind `sudo`, else the login, else the uid's name.
pub(super) fn requested_by() -> String {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| user_name(&current_uid()))
}

/// The name `/etc/passwd` gives a user id, else `uid N`.
fn user_name(uid: &str) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                (fields.nth(1)? == uid).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// The user id, from `/proc`.
fn current_uid() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next().map(str::to_string))
        })
        .unwrap_or_else(|| "?".into())
}
