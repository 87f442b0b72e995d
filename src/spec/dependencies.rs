//! The dependency graph of a revision (`depends_on`): every target is a job of the revision, and
//! no job depends on itself through others.

use std::collections::{BTreeMap, BTreeSet};

use super::{DesiredJob, SpecError};

/// Problems with the revision's `depends_on` graph, each located at the entry that causes it.
/// `complete` says every spec file of the revision loaded: only then is a target that no job has
/// an error (otherwise it may be the job of a file that has problems of its own).
pub fn check_graph(jobs: &BTreeMap<String, DesiredJob>, complete: bool) -> Vec<SpecError> {
    let mut errors = Vec::new();
    if complete {
        for job in jobs.values() {
            for dependency in &job.spec.depends_on {
                if !jobs.contains_key(&dependency.job_id) {
                    errors.push(SpecError {
                        file: job.file.to_string(),
                        line: dependency.line,
                        column: dependency.column,
                        field: Some("depends_on".into()),
                        message: format!(
                            "no spec of this revision has job_id `{}` (a job cannot be deleted while others still depend on it)",
                            dependency.job_id
                        ),
                    });
                }
            }
        }
    }
    let graph: BTreeMap<&str, Vec<&str>> = jobs
        .iter()
        .map(|(id, job)| {
            let targets = job
                .spec
                .depends_on
                .iter()
                .map(|d| d.job_id.as_str())
                .filter(|target| jobs.contains_key(*target))
                .collect();
            (id.as_str(), targets)
        })
        .collect();
    for cycle in find_cycles(&graph) {
        let (first, second) = (&cycle[0], &cycle[1]);
        let job = &jobs[first];
        let entry = job.spec.depends_on.iter().find(|d| &d.job_id == second);
        errors.push(SpecError {
            file: job.file.to_string(),
            line: entry.map_or(0, |d| d.line),
            column: entry.map_or(0, |d| d.column),
            field: Some("depends_on".into()),
            message: format!(
                "dependency cycle: {} → {first}; the jobs of a cycle cannot be started one after the other",
                cycle.join(" → ")
            ),
        });
    }
    errors
}

/// The cycles of `graph` (job → the jobs it depends on), each at least once, as the path from its
/// smallest job id around to the job before it; sorted, for stable reports.
pub fn find_cycles(graph: &BTreeMap<&str, Vec<&str>>) -> Vec<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    let mut marks: BTreeMap<&str, Mark> = BTreeMap::new();
    let mut cycles: BTreeSet<Vec<String>> = BTreeSet::new();
    for &start in graph.keys() {
        if marks.contains_key(start) {
            continue;
        }
        // An explicit stack of (job, index of its next edge), so a long chain cannot overflow.
        let mut path: Vec<(&str, usize)> = vec![(start, 0)];
        marks.insert(start, Mark::Open);
        while let Some((node, next)) = path.last().copied() {
            let edges = graph.get(node).map(Vec::as_slice).unwrap_or(&[]);
            let Some(&target) = edges.get(next) else {
                marks.insert(node, Mark::Done);
                path.pop();
                continue;
            };
            if let Some(top) = path.last_mut() {
                top.1 += 1;
            }
            match marks.get(target) {
                None => {
                    marks.insert(target, Mark::Open);
                    path.push((target, 0));
                }
                Some(Mark::Open) => {
                    let from = path.iter().position(|(n, _)| *n == target).unwrap_or(0);
                    let mut cycle: Vec<String> =
                        path[from..].iter().map(|(n, _)| n.to_string()).collect();
                    let smallest = (0..cycle.len()).min_by_key(|&i| &cycle[i]).unwrap_or(0);
                    cycle.rotate_left(smallest);
                    cycles.insert(cycle);
                }
                Some(Mark::Done) => {}
            }
        }
    }
    cycles.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph<'a>(edges: &[(&'a str, &[&'a str])]) -> BTreeMap<&'a str, Vec<&'a str>> {
        edges.iter().map(|(k, v)| (*k, v.to_vec())).collect()
    }

    #[test]
    fn a_chain_and_a_diamond_have_no_cycle() {
        assert!(find_cycles(&graph(&[("a", &[]), ("b", &["a"]), ("c", &["b"])])).is_empty());
        let diamond = graph(&[("a", &[]), ("b", &["a"]), ("c", &["a"]), ("d", &["b", "c"])]);
        assert!(find_cycles(&diamond).is_empty());
    }

    #[test]
    fn cycles_are_named_from_their_smallest_job_in_dependency_order() {
        // c depends on a, a on b, b on c: a → b → c → a.
        let ring = graph(&[("c", &["a"]), ("a", &["b"]), ("b", &["c"]), ("d", &["a"])]);
        assert_eq!(find_cycles(&ring), vec![vec!["a", "b", "c"]]);
        let two = graph(&[("x", &["y"]), ("y", &["x"]), ("p", &["q"]), ("q", &["p"])]);
        assert_eq!(find_cycles(&two), vec![vec!["p", "q"], vec!["x", "y"]]);
    }
}
