//! Will the new version of a job restore the running version's savepoint? The pure comparison of the
//! new job graph with the savepoint's operator states (and with the running version's graph), as
//! Flink's own restore does it (`Checkpoints.loadAndValidateCheckpoint` in Flink 2.3).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// What the runner JAR's `StateCompat` prints: the job graph of a program, the operator states of
/// a savepoint, or both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Facts {
    /// The job graph, when a program was given.
    #[serde(default)]
    pub graph: Option<JobGraph>,
    /// The savepoint, when one was given.
    #[serde(default)]
    pub savepoint: Option<SavepointFacts>,
}

/// A job graph as Flink would schedule it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct JobGraph {
    /// Its vertices (chains of operators).
    pub vertices: Vec<Vertex>,
}

/// One vertex of a job graph.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Vertex {
    /// The chain's name (`count per key -> Sink: Print to Std. Out`).
    pub name: String,
    /// Its parallelism.
    pub parallelism: i64,
    /// Its max parallelism, or -1 when the program did not set one (Flink then adopts the
    /// savepoint's).
    pub max_parallelism: i64,
    /// The operators chained in it.
    pub operators: Vec<Operator>,
}

/// One operator of a vertex.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Operator {
    /// The id Flink generates (from the uid when set, else from the graph's shape), hex.
    pub id: String,
    /// The id set with `setUidHash`, hex.
    #[serde(default)]
    pub user_defined_id: Option<String>,
    /// `.uid(...)`.
    #[serde(default)]
    pub uid: Option<String>,
    /// `.name(...)` (SQL: `GroupAggregate[4]`).
    #[serde(default)]
    pub name: Option<String>,
    /// What it does (SQL: `[4]:GroupAggregate(groupBy=[user_id], ...)`); tells two versions of an
    /// operator with the same generated id apart.
    #[serde(default)]
    pub description: Option<String>,
}

/// A savepoint's `_metadata`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SavepointFacts {
    /// The savepoint's path as Flink resolved it.
    pub path: String,
    /// One entry per operator that was part of the job when it was taken.
    pub operators: Vec<OperatorState>,
}

/// The state of one operator in a savepoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OperatorState {
    /// The operator id, hex.
    pub id: String,
    /// The uid Flink recorded with it.
    #[serde(default)]
    pub uid: Option<String>,
    /// The name Flink recorded with it.
    #[serde(default)]
    pub name: Option<String>,
    /// The max parallelism the state is split for (its key groups).
    pub max_parallelism: i64,
    /// Whether any subtask (or the coordinator) holds state; empty state is skipped by Flink.
    pub has_state: bool,
    /// Bytes of state.
    pub state_size: u64,
}

/// The verdict for one job, as `plan` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum StateCompatibility {
    /// Every operator state of the savepoint has an operator of the new version to go to.
    Compatible {
        /// The savepoint compared.
        savepoint: String,
        /// How many operator states hold state (all of them restored).
        restored: usize,
    },
    /// Some state will not be restored, or goes to an operator that changed.
    Incompatible {
        /// The savepoint compared.
        savepoint: String,
        /// State the new version cannot take.
        lost: Vec<LostState>,
        /// State that goes to an operator with the same generated id whose definition changed.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        changed: Vec<ChangedOperator>,
        /// The new spec's `allow_non_restored_state`: lost state is then dropped instead of failing
        /// the deploy.
        allow_non_restored_state: bool,
    },
    /// The comparison could not be made.
    NotChecked {
        /// Why (no JDK, no savepoint recorded yet, savepoint not readable from here, ...).
        reason: String,
    },
}

/// State of one operator that the new version will not restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LostState {
    /// Operator id (hex).
    pub operator_id: String,
    /// Its uid, from the savepoint or the running version's graph.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Its name, from the savepoint or the running version's graph.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Bytes of state.
    pub state_size: u64,
    /// Why it is lost.
    pub reason: LossReason,
}

/// Why an operator's state is not restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LossReason {
    /// No operator of the new version has its id (a changed or removed uid, a changed graph).
    NotInNewVersion,
    /// The new version sets a max parallelism other than the state's key groups.
    MaxParallelism {
        /// The state's.
        savepoint: i64,
        /// The new vertex's.
        new: i64,
    },
}

/// An operator without a uid whose generated id stayed while what it does changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangedOperator {
    /// Operator id (hex).
    pub operator_id: String,
    /// Its name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Bytes of state that go to it.
    pub state_size: u64,
    /// What the running version's operator does.
    pub before: String,
    /// What the new version's does.
    pub after: String,
}

impl StateCompatibility {
    /// A check that could not run, and why.
    pub fn not_checked(reason: impl Into<String>) -> StateCompatibility {
        StateCompatibility::NotChecked {
            reason: reason.into(),
        }
    }

    /// The line `plan` prints (and keeps among the job's warnings when it is not `compatible`).
    pub fn summary(&self) -> String {
        match self {
            StateCompatibility::Compatible {
                savepoint,
                restored,
            } => format!(
                "state compatible: the new version restores all {restored} operator state(s) of {savepoint}"
            ),
            StateCompatibility::NotChecked { reason } => {
                format!("state compatibility not checked: {reason}")
            }
            StateCompatibility::Incompatible {
                savepoint,
                lost,
                changed,
                allow_non_restored_state,
            } => {
                let mut parts: Vec<String> = lost.iter().map(LostState::describe).collect();
                parts.extend(changed.iter().map(ChangedOperator::describe));
                let outcome = match (lost.is_empty(), allow_non_restored_state) {
                    (true, _) => String::new(),
                    (false, false) => "; the deploy will fail and be rolled back (allow_non_restored_state is off)".to_string(),
                    (false, true) => {
                        "; allow_non_restored_state is on: that state is dropped".to_string()
                    }
                };
                format!(
                    "state NOT compatible with {savepoint}: {}{outcome}",
                    parts.join("; ")
                )
            }
        }
    }
}

impl LostState {
    fn describe(&self) -> String {
        let why = match &self.reason {
            LossReason::NotInNewVersion => "no operator of the new version has its id".to_string(),
            LossReason::MaxParallelism { savepoint, new } => format!(
                "the new version's max parallelism {new} differs from the state's {savepoint}"
            ),
        };
        format!(
            "state of operator {} ({}) will not be restored: {why}",
            operator_label(self.name.as_deref(), self.uid.as_deref(), &self.operator_id),
            human_bytes(self.state_size)
        )
    }
}

impl ChangedOperator {
    fn describe(&self) -> String {
        format!(
            "operator {} keeps its generated id but changed (`{}` -> `{}`): its state ({}) is restored into the new operator only if the state's types still match, and then keeps the old meaning",
            operator_label(self.name.as_deref(), None, &self.operator_id),
            self.before,
            self.after,
            human_bytes(self.state_size)
        )
    }
}

/// `"count per key" (uid click-count)`, or the id when nothing else is known.
fn operator_label(name: Option<&str>, uid: Option<&str>, id: &str) -> String {
    match (name, uid) {
        (Some(name), Some(uid)) => format!("\"{name}\" (uid {uid}, id {id})"),
        (Some(name), None) => format!("\"{name}\" (id {id})"),
        (None, Some(uid)) => format!("uid {uid} (id {id})"),
        (None, None) => format!("id {id}"),
    }
}

fn human_bytes(bytes: u64) -> String {
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1_048_576 => format!("{:.1} KiB", bytes as f64 / 1024.0),
        _ => format!("{:.1} MiB", bytes as f64 / 1_048_576.0),
    }
}

/// Compares the new version's graph with the savepoint as Flink's restore does: each operator
/// state goes to the vertex with its id (generated or user-defined); state no vertex takes fails
/// the restore unless it is empty or `allow_non_restored_state` is set; a vertex whose max
/// parallelism is set must match the state's. With the running version's graph (`old`), an
/// operator without a uid whose generated id stayed but whose description changed is reported too:
/// Flink generates ids of such operators (all of SQL's) from the graph's shape, so a changed query
/// of the same shape hands the old state to a different computation.
pub fn compare(
    new: &JobGraph,
    old: Option<&JobGraph>,
    savepoint: &SavepointFacts,
    allow_non_restored_state: bool,
) -> StateCompatibility {
    let mut vertex_of: HashMap<&str, (&Vertex, &Operator)> = HashMap::new();
    for vertex in &new.vertices {
        for operator in &vertex.operators {
            vertex_of.insert(operator.id.as_str(), (vertex, operator));
            if let Some(id) = &operator.user_defined_id {
                vertex_of.insert(id.as_str(), (vertex, operator));
            }
        }
    }
    let old_operators: BTreeMap<&str, &Operator> = old
        .into_iter()
        .flat_map(|graph| &graph.vertices)
        .flat_map(|vertex| &vertex.operators)
        .map(|operator| (operator.id.as_str(), operator))
        .collect();
    let mut lost = Vec::new();
    let mut changed = Vec::new();
    let mut restored = 0;
    for state in &savepoint.operators {
        // Flink records uid and name in the savepoint; an older savepoint may lack them.
        let known = old_operators.get(state.id.as_str());
        let name = state
            .name
            .clone()
            .or_else(|| known.and_then(|o| o.name.clone()));
        let uid = state
            .uid
            .clone()
            .or_else(|| known.and_then(|o| o.uid.clone()));
        match vertex_of.get(state.id.as_str()) {
            None if state.has_state => lost.push(LostState {
                operator_id: state.id.clone(),
                uid,
                name,
                state_size: state.state_size,
                reason: LossReason::NotInNewVersion,
            }),
            None => {}
            Some((vertex, operator)) => {
                if vertex.max_parallelism > 0 && vertex.max_parallelism != state.max_parallelism {
                    lost.push(LostState {
                        operator_id: state.id.clone(),
                        uid,
                        name,
                        state_size: state.state_size,
                        reason: LossReason::MaxParallelism {
                            savepoint: state.max_parallelism,
                            new: vertex.max_parallelism,
                        },
                    });
                    continue;
                }
                if !state.has_state {
                    continue;
                }
                restored += 1;
                let before = known.and_then(|o| o.description.as_deref());
                if let (None, Some(before), Some(after)) =
                    (&operator.uid, before, operator.description.as_deref())
                    && before != after
                {
                    changed.push(ChangedOperator {
                        operator_id: state.id.clone(),
                        name: name.or_else(|| operator.name.clone()),
                        state_size: state.state_size,
                        before: before.to_string(),
                        after: after.to_string(),
                    });
                }
            }
        }
    }
    if lost.is_empty() && changed.is_empty() {
        StateCompatibility::Compatible {
            savepoint: savepoint.path.clone(),
            restored,
        }
    } else {
        StateCompatibility::Incompatible {
            savepoint: savepoint.path.clone(),
            lost,
            changed,
            allow_non_restored_state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operator(id: &str, uid: Option<&str>, name: &str, description: &str) -> Operator {
        Operator {
            id: id.into(),
            user_defined_id: None,
            uid: uid.map(Into::into),
            name: Some(name.into()),
            description: Some(description.into()),
        }
    }

    fn graph(operators: Vec<Operator>, max_parallelism: i64) -> JobGraph {
        JobGraph {
            vertices: operators
                .into_iter()
                .map(|o| Vertex {
                    name: o.name.clone().unwrap_or_default(),
                    parallelism: 2,
                    max_parallelism,
                    operators: vec![o],
                })
                .collect(),
        }
    }

    fn state(id: &str, uid: Option<&str>, name: &str, size: u64) -> OperatorState {
        OperatorState {
            id: id.into(),
            uid: uid.map(Into::into),
            name: Some(name.into()),
            max_parallelism: 128,
            has_state: size > 0,
            state_size: size,
        }
    }

    fn savepoint(operators: Vec<OperatorState>) -> SavepointFacts {
        SavepointFacts {
            path: "file:/sp/savepoint-1".into(),
            operators,
        }
    }

    fn counter(count_id: &str, count_uid: &str) -> JobGraph {
        graph(
            vec![
                operator(
                    "aa",
                    Some("clicks-source"),
                    "Source: clicks",
                    "Source: clicks",
                ),
                operator(count_id, Some(count_uid), "count per key", "count per key"),
                operator("cc", Some("print-sink"), "Sink: Print", "Sink: Print"),
            ],
            -1,
        )
    }

    fn counter_savepoint() -> SavepointFacts {
        savepoint(vec![
            state("aa", Some("clicks-source"), "Source: clicks", 546),
            state("bb", Some("click-count"), "count per key", 2200),
            state("cc", Some("print-sink"), "Sink: Print", 0),
        ])
    }

    #[test]
    fn the_same_ids_restore_everything_that_has_state() {
        let verdict = compare(
            &counter("bb", "click-count"),
            None,
            &counter_savepoint(),
            false,
        );
        assert_eq!(
            verdict,
            StateCompatibility::Compatible {
                savepoint: "file:/sp/savepoint-1".into(),
                restored: 2
            }
        );
        assert!(verdict.summary().starts_with("state compatible"));
    }

    #[test]
    fn state_whose_operator_id_is_gone_is_lost_and_named_by_uid_and_name() {
        let verdict = compare(
            &counter("dd", "click-count-v3"),
            None,
            &counter_savepoint(),
            false,
        );
        let StateCompatibility::Incompatible {
            lost,
            changed,
            allow_non_restored_state,
            ..
        } = &verdict
        else {
            panic!("{verdict:?}")
        };
        assert_eq!(
            lost,
            &vec![LostState {
                operator_id: "bb".into(),
                uid: Some("click-count".into()),
                name: Some("count per key".into()),
                state_size: 2200,
                reason: LossReason::NotInNewVersion,
            }]
        );
        assert!(changed.is_empty() && !allow_non_restored_state);
        let summary = verdict.summary();
        assert!(
            summary.contains("state of operator \"count per key\" (uid click-count, id bb) (2.1 KiB) will not be restored"),
            "{summary}"
        );
        assert!(summary.contains("the deploy will fail"), "{summary}");
        let allowed = compare(&counter("dd", "x"), None, &counter_savepoint(), true);
        assert!(allowed.summary().contains("that state is dropped"));
    }

    #[test]
    fn empty_state_without_an_operator_is_skipped_as_flink_does() {
        let mut new = counter("bb", "click-count");
        new.vertices.pop(); // the print sink (no state) is removed
        assert!(matches!(
            compare(&new, None, &counter_savepoint(), false),
            StateCompatibility::Compatible { restored: 2, .. }
        ));
    }

    #[test]
    fn a_user_defined_id_claims_state_too() {
        let mut new = counter("dd", "renamed");
        new.vertices[1].operators[0].user_defined_id = Some("bb".into());
        assert!(matches!(
            compare(&new, None, &counter_savepoint(), false),
            StateCompatibility::Compatible { .. }
        ));
    }

    #[test]
    fn a_set_max_parallelism_must_match_the_state() {
        let mut new = counter("bb", "click-count");
        new.vertices[1].max_parallelism = 64;
        let StateCompatibility::Incompatible { lost, .. } =
            compare(&new, None, &counter_savepoint(), true)
        else {
            panic!()
        };
        assert_eq!(
            lost[0].reason,
            LossReason::MaxParallelism {
                savepoint: 128,
                new: 64
            }
        );
        new.vertices[1].max_parallelism = 128;
        assert!(matches!(
            compare(&new, None, &counter_savepoint(), false),
            StateCompatibility::Compatible { .. }
        ));
    }

    #[test]
    fn a_changed_operator_without_uid_keeping_its_id_is_reported_with_the_old_graph() {
        let sql = |group_by: &str| {
            graph(
                vec![
                    operator("s1", None, "Source: clicks[1]", "[1]:TableSourceScan"),
                    operator(
                        "g4",
                        None,
                        "GroupAggregate[4]",
                        &format!("[4]:GroupAggregate(groupBy=[{group_by}])"),
                    ),
                ],
                -1,
            )
        };
        let taken = savepoint(vec![
            state("s1", None, "Source: clicks[1]", 300),
            state("g4", None, "GroupAggregate[4]", 900),
        ]);
        // Without the running version's graph the ids match: compatible as far as Flink's ids go.
        assert!(matches!(
            compare(&sql("url"), None, &taken, false),
            StateCompatibility::Compatible { .. }
        ));
        let verdict = compare(&sql("url"), Some(&sql("user_id")), &taken, false);
        let StateCompatibility::Incompatible { lost, changed, .. } = &verdict else {
            panic!("{verdict:?}")
        };
        assert!(lost.is_empty());
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].before, "[4]:GroupAggregate(groupBy=[user_id])");
        assert_eq!(changed[0].after, "[4]:GroupAggregate(groupBy=[url])");
        assert!(
            verdict.summary().contains(
                "operator \"GroupAggregate[4]\" (id g4) keeps its generated id but changed"
            )
        );
        // The same query again: nothing changed.
        assert!(matches!(
            compare(&sql("user_id"), Some(&sql("user_id")), &taken, false),
            StateCompatibility::Compatible { .. }
        ));
        // An operator with a uid keeps its identity on purpose, whatever its name says.
        let renamed = graph(
            vec![operator(
                "bb",
                Some("click-count"),
                "count",
                "count (renamed)",
            )],
            -1,
        );
        let running = graph(
            vec![operator(
                "bb",
                Some("click-count"),
                "count",
                "count per key",
            )],
            -1,
        );
        assert!(matches!(
            compare(
                &renamed,
                Some(&running),
                &savepoint(vec![state("bb", Some("click-count"), "count", 10)]),
                false
            ),
            StateCompatibility::Compatible { .. }
        ));
    }

    #[test]
    fn the_helpers_json_parses() {
        let facts: Facts = serde_json::from_str(
            r#"{"graph":{"vertices":[{"id":"v","name":"Source: clicks","parallelism":2,"max_parallelism":-1,
                "operators":[{"id":"d41b","user_defined_id":null,"uid":"clicks-source","name":"Source: clicks","description":"Source: clicks"}]}]},
              "savepoint":{"path":"file:/sp","checkpoint_id":1,"operators":[{"id":"d41b","uid":"clicks-source","name":"Source: clicks",
                "parallelism":2,"max_parallelism":128,"has_state":true,"coordinator_state":true,"state_size":546,"claimed_by":"Source: clicks"}]}}"#,
        )
        .unwrap();
        let graph = facts.graph.unwrap();
        assert_eq!(
            graph.vertices[0].operators[0].uid.as_deref(),
            Some("clicks-source")
        );
        assert_eq!(facts.savepoint.unwrap().operators[0].state_size, 546);
    }
}
