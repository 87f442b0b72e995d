//! `depends_on:` checks within one spec file (the graph across files is checked by `spec::dependencies`).

use std::collections::BTreeSet;

use super::Checker;
use crate::spec::Dependency;
use crate::spec::paths::valid_job_id;
use crate::spec::raw::S;

pub(super) fn validate_depends_on(
    raw: Option<&S<Vec<S<String>>>>,
    job_id: Option<&str>,
    check: &mut Checker<'_>,
) -> Vec<Dependency> {
    let Some(list) = raw else {
        return Vec::new();
    };
    let mut seen = BTreeSet::new();
    let mut dependencies = Vec::new();
    for entry in &list.value {
        let target = entry.value.as_str();
        if !valid_job_id(target) {
            check.at(
                entry,
                "depends_on",
                format!("`{target}` is not a job id ([a-z0-9][a-z0-9-]{{0,62}})"),
            );
        } else if Some(target) == job_id {
            check.at(
                entry,
                "depends_on",
                format!("`{target}` is this job itself; a job cannot depend on itself"),
            );
        } else if !seen.insert(target) {
            check.at(entry, "depends_on", format!("`{target}` is listed twice"));
        } else {
            dependencies.push(Dependency {
                job_id: target.to_string(),
                line: entry.referenced.line(),
                column: entry.referenced.column(),
            });
        }
    }
    dependencies
}
