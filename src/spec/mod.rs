//! Job specs: the v1 YAML contract parsed into typed, validated desired state.

mod dependencies;
mod error;
mod load;
mod memo;
mod model;
mod paths;
pub mod program;
mod raw;
pub mod source;
pub mod sql;
mod validation;
pub mod yaml;

pub use error::SpecError;
pub use load::{Loaded, load_desired, load_desired_with};
pub use memo::{MemoEntry, PreparedMemo, SpecMemo};
pub use model::{
    Artifact, BatchSpec, Concurrency, Dependency, DesiredJob, DesiredRunState, DesiredState,
    HealthPolicy, JobKind, JobSpec, JobType, Ratio, RestartStrategy, Retention, RollbackScope,
    UpgradeMode, Watch,
};
pub use paths::RepoPath;
pub use source::{DirTree, EntryKind, GitTree, SpecTree, TreeError};
pub(crate) use validation::AGENT_OWNED_OPTIONS;
pub use validation::{normalize_cron, parse_spec};
