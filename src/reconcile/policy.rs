//! One error policy for every step of every job: a failed step is classified once, here, and the
//! class alone decides what follows (see [`ErrorClass`]): requeue with backoff, count toward the
//! job's limit, or treat the submission as failed.
//!
//! The Flink client itself retries idempotent reads a few times within a second; anything that
//! lasts longer reaches this policy as one failed step of one job.

use crate::flink::FlinkError;
use crate::state::StateError;

pub use super::lifecycle::ErrorClass;

/// A step failed; the message names what and why.
#[derive(Debug, Clone)]
pub struct StepError {
    /// What kind of failure, which decides what happens next.
    pub class: ErrorClass,
    /// For people.
    pub message: String,
    /// Flink's root cause, when it gave one.
    pub root_cause: Option<String>,
    /// The agent is shutting down: nothing failed, the phase continues at the next start.
    pub interrupted: bool,
}

impl StepError {
    /// A failure that may pass by itself.
    pub fn transient(message: impl Into<String>) -> StepError {
        StepError::of(ErrorClass::Transient, message)
    }

    /// A failure that will happen again the same way.
    pub fn permanent(message: impl Into<String>) -> StepError {
        StepError::of(ErrorClass::Permanent, message)
    }

    fn of(class: ErrorClass, message: impl Into<String>) -> StepError {
        StepError {
            class,
            message: message.into(),
            root_cause: None,
            interrupted: false,
        }
    }

    /// Shutdown interrupted the step.
    pub fn interrupted(message: impl Into<String>) -> StepError {
        StepError {
            interrupted: true,
            ..StepError::transient(message)
        }
    }

    /// Message and root cause on one line.
    pub fn full(&self) -> String {
        match &self.root_cause {
            Some(cause) if !self.message.contains(cause.as_str()) => {
                format!("{}: {cause}", self.message)
            }
            _ => self.message.clone(),
        }
    }

    /// The same failure with every secret value replaced by its reference: Flink's answers may
    /// quote a statement back, and they are recorded.
    pub fn redact_secrets(
        mut self,
        values: &std::collections::BTreeMap<String, String>,
    ) -> StepError {
        if values.is_empty() {
            return self;
        }
        self.message = crate::secrets::redact(&self.message, values);
        self.root_cause = self
            .root_cause
            .map(|cause| crate::secrets::redact(&cause, values));
        self
    }

    /// The same failure with `context` in front of its message.
    pub fn context(mut self, context: impl std::fmt::Display) -> StepError {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

/// The class of a Flink failure: connection problems, timeouts and 5xx pass; 4xx is Flink refusing.
pub fn classify(error: &FlinkError) -> ErrorClass {
    match error {
        FlinkError::Unreachable { .. } | FlinkError::Timeout { .. } => ErrorClass::Transient,
        FlinkError::Status { status, .. } if *status >= 500 => ErrorClass::Transient,
        FlinkError::Status { .. } => ErrorClass::Refused,
        FlinkError::Decode { .. } | FlinkError::Local { .. } => ErrorClass::Permanent,
    }
}

/// True when Flink refused a submission because it already has a job with that id (in any
/// state: Flink 2.3 never accepts a job id twice while its JobManager lives).
pub fn is_duplicate_submission(error: &FlinkError) -> bool {
    matches!(error, FlinkError::Status { root_cause, .. }
        if root_cause.contains("DuplicateApplicationSubmissionException")
            || root_cause.contains("DuplicateJobSubmissionException"))
}

impl From<FlinkError> for StepError {
    fn from(error: FlinkError) -> StepError {
        let root_cause = match &error {
            FlinkError::Status { root_cause, .. } => Some(root_cause.clone()),
            _ => None,
        };
        StepError {
            class: classify(&error),
            message: error.to_string(),
            root_cause,
            interrupted: false,
        }
    }
}

impl From<StateError> for StepError {
    fn from(error: StateError) -> StepError {
        StepError::transient(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, cause: &str) -> FlinkError {
        FlinkError::Status {
            method: "POST".into(),
            endpoint: "/jars/x/run".into(),
            status: code,
            root_cause: cause.into(),
        }
    }

    #[test]
    fn flink_failures_fall_into_one_class_each() {
        assert_eq!(
            classify(&FlinkError::Unreachable {
                url: "u".into(),
                reason: "refused".into()
            }),
            ErrorClass::Transient
        );
        assert_eq!(
            classify(&status(503, "injected failure")),
            ErrorClass::Transient
        );
        assert_eq!(classify(&status(400, "bad request")), ErrorClass::Refused);
        // Flink 2.3 answers a main() that throws with 400.
        assert_eq!(
            classify(&status(400, "java.lang.IllegalStateException: main fails")),
            ErrorClass::Refused
        );
        assert!(is_duplicate_submission(&status(
            400,
            "org.apache.flink.runtime.client.DuplicateApplicationSubmissionException: Application has already been submitted."
        )));
        assert!(!is_duplicate_submission(&status(400, "other")));
    }
}
