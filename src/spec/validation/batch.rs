//! `batch_config:` checks, and the cron expressions batch schedules are written in.

use super::Checker;
use crate::spec::raw::RawBatch;
use crate::spec::{BatchSpec, Concurrency};

/// Normalizes a cron expression to the 6- or 7-field form the `cron` crate reads.
pub fn normalize_cron(expression: &str) -> Result<String, String> {
    let fields = expression.split_whitespace().count();
    let normalized = match fields {
        5 => format!("0 {}", expression.trim()),
        6 => expression.trim().to_string(),
        _ => {
            return Err(format!(
                "`{expression}` has {fields} fields; use 5 (`min hour day month weekday`) or 6 with seconds first"
            ));
        }
    };
    normalized
        .parse::<cron::Schedule>()
        .map_err(|e| format!("`{expression}` is not a valid cron expression: {e}"))?;
    Ok(normalized)
}

/// The longest a batch run may be given before it is cancelled (30 days).
const MAX_TTL_SECONDS: u64 = 30 * 24 * 3600;

pub(super) fn validate_batch(raw: Option<&RawBatch>, check: &mut Checker<'_>) -> BatchSpec {
    let mut spec = BatchSpec {
        cron: None,
        timezone: "UTC".into(),
        max_runs: None,
        ttl_seconds: None,
        cleanup_on_completion: false,
        concurrency: Concurrency::Forbid,
    };
    let Some(raw) = raw else { return spec };
    if let Some(cron) = &raw.cron {
        match normalize_cron(&cron.value) {
            Ok(_) => spec.cron = Some(cron.value.trim().to_string()),
            Err(reason) => check.at(cron, "batch_config.cron", reason),
        }
    }
    if let Some(tz) = &raw.timezone {
        match crate::batch::zone::Zone::named(&tz.value) {
            Some(_) => spec.timezone = tz.value.clone(),
            None => check.at(
                tz,
                "batch_config.timezone",
                format!(
                    "`{}` is not an IANA time zone name such as `Europe/Berlin` or `UTC`",
                    tz.value
                ),
            ),
        }
    }
    if let Some(max) = &raw.max_runs {
        if max.value == 0 {
            check.at(
                max,
                "batch_config.max_runs",
                "must be at least 1; use `state: suspended` to stop scheduling",
            );
        }
        spec.max_runs = Some(max.value);
    }
    if let Some(ttl) = &raw.ttl_seconds {
        if ttl.value == 0 || ttl.value > MAX_TTL_SECONDS {
            check.at(
                ttl,
                "batch_config.ttl_seconds",
                format!("must be between 1 and {MAX_TTL_SECONDS} (30 days)"),
            );
        }
        spec.ttl_seconds = Some(ttl.value);
    }
    spec.cleanup_on_completion = raw.cleanup_on_completion.unwrap_or(false);
    spec.concurrency = raw.concurrency.unwrap_or(Concurrency::Forbid);
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_accepts_five_and_six_fields() {
        assert_eq!(normalize_cron("0 2 * * *").unwrap(), "0 0 2 * * *");
        assert_eq!(normalize_cron("*/10 * * * * *").unwrap(), "*/10 * * * * *");
        assert!(normalize_cron("* * *").is_err());
        assert!(normalize_cron("99 * * * *").is_err());
    }
}
