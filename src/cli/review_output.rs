//! Rendering of a range plan (`plan --base --head`): text for people, markdown for a pull request.

use std::fmt::Write as _;

use super::CommitLine;
use super::plan_range::RangeReport;
use crate::plan::Action;
use crate::plan::review::{JobReview, Review};
use crate::plan::slots::{JobSlots, SlotCount};
use crate::spec::source::short_id;

/// Unchanged jobs are named up to this many; beyond it they are only counted.
const UNCHANGED_NAMED: usize = 10;
/// A file's diff is cut after this many lines in a comment (forges limit a comment's size).
const DIFF_LINES: usize = 200;
/// Marks the comment, so a CI job can find and update its own comment.
pub const MARKER: &str = "<!-- flink-gitops-plan -->";

/// The slots column: what the job holds now and after.
pub(super) fn slots_cell(slots: Option<&JobSlots>) -> String {
    let Some(slots) = slots else {
        return "-".into();
    };
    if slots.batch {
        return match slots.per_instance {
            Some(_) if slots.holds == slots.needs && slots.needs != SlotCount::Known(0) => {
                format!("{} (a run goes)", slots.needs)
            }
            Some(per_run) => format!("{per_run} per run"),
            None => "0".into(),
        };
    }
    if slots.holds == slots.needs {
        slots.needs.to_string()
    } else {
        format!("{} → {}", slots.holds, slots.needs)
    }
}

/// What the `how` of an action means, in a sentence.
fn how_sentence(job: &JobReview) -> Option<String> {
    let how = job.how.as_deref()?;
    Some(
        match (job.action, how) {
            (Action::Create, "from restore_from") => {
                "submitted for the first time, starting from the state named by `restore_from`; it must pass its health gate"
            }
            (Action::Create, _) => {
                "submitted for the first time, without state; it must pass its health gate"
            }
            (Action::Upgrade, "savepoint") => {
                "stopped with a savepoint; the new version starts from it and must pass its health gate, else the agent rolls back to the running version"
            }
            (Action::Upgrade, "last-state") => {
                "cancelled; the new version starts from the newest retained checkpoint (a savepoint when there is none) and must pass its health gate, else the agent rolls back"
            }
            (Action::Upgrade, "stateless") => {
                "cancelled; the new version starts without state and must pass its health gate, else the agent rolls back"
            }
            (Action::Upgrade, _) => "the next run uses the new version",
            (Action::Update, _) => {
                "the new spec is recorded; the running Flink job is not touched"
            }
            (Action::Suspend, "savepoint") => {
                "stopped with a savepoint, which is kept for resuming"
            }
            (Action::Delete, "savepoint") => "stopped with a final savepoint, which is kept",
            (Action::Resume, "savepoint") => {
                "started again from the savepoint kept when it was suspended; it must pass its health gate"
            }
            (Action::Restart, _) => "started again from its newest state",
            (Action::Suspend, _) => "no new run starts; a run going on finishes",
            (Action::Delete, _) => "runs going on are cancelled; no new run starts",
            (Action::Resume, _) => "runs start again on schedule",
            _ => return None,
        }
        .to_string(),
    )
}

fn signers_text(signers: &[String], quote: bool) -> String {
    if signers.is_empty() {
        return "-".into();
    }
    signers
        .iter()
        .map(|s| if quote { format!("`{s}`") } else { s.clone() })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `a` or `a and b` or `a, b and c`.
fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// Text that must not break a markdown table cell or open an HTML tag.
fn md_text(text: &str) -> String {
    text.replace('|', "\\|")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A reason as markdown: a leading field name (`parallelism: 2 → 4`) in code.
fn md_reason(reason: &str) -> String {
    match reason.split_once(": ") {
        Some((field, rest))
            if !field.is_empty()
                && field
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c)) =>
        {
            format!("`{field}`: {}", md_text(rest))
        }
        _ => md_text(reason),
    }
}

/// A fence longer than any run of backticks in `text`.
fn fence_for(text: &str) -> String {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    "`".repeat(longest.max(2) + 1)
}

fn short_diff(unified: &str) -> String {
    let lines: Vec<&str> = unified.lines().collect();
    if lines.len() <= DIFF_LINES {
        return unified.trim_end().to_string();
    }
    format!(
        "{}\n… {} more line(s); run `flink-gitops plan --base … --head …` for the whole diff",
        lines[..DIFF_LINES].join("\n"),
        lines.len() - DIFF_LINES
    )
}

fn range_title(report: &RangeReport) -> String {
    format!(
        "{}..{}",
        short_id(report.compared_with()),
        short_id(&report.head)
    )
}

fn commit_count(commits: &[CommitLine]) -> String {
    match commits.len() {
        1 => "1 commit".into(),
        n => format!("{n} commits"),
    }
}

/// Renders a range plan as a pull-request comment.
pub fn print_markdown(report: &RangeReport) {
    out!("{}", markdown(report));
}

/// The markdown of a range plan.
pub fn markdown(report: &RangeReport) -> String {
    let mut md = String::new();
    let w = &mut md;
    let _ = writeln!(w, "{MARKER}");
    let _ = writeln!(
        w,
        "### flink-gitops plan `{}`{}\n",
        range_title(report),
        if report.refused.is_some() {
            " — refused"
        } else {
            ""
        }
    );
    if let Some(merge_base) = &report.merge_base {
        let _ = writeln!(
            w,
            "The head does not descend from the base `{}`: compared with their merge base `{}`, as the pull request shows it.\n",
            short_id(&report.base),
            short_id(merge_base)
        );
    }
    match &report.refused {
        None => {
            let _ = writeln!(
                w,
                "✅ **Signatures verified:** {}, signed by {}.\n",
                commit_count(&report.commits),
                signers_text(&report.signers, true)
            );
        }
        Some(refusal) => {
            let _ = writeln!(
                w,
                "⛔ **Refused ({}):** {}\n\nThe agent would not apply this revision. The plan below is what it would do once the problem is fixed.\n",
                refusal.kind,
                md_text(&refusal.message)
            );
            for error in &refusal.spec_errors {
                let _ = writeln!(w, "- {}", md_text(&error.to_string()));
            }
            if !refusal.spec_errors.is_empty() {
                let _ = writeln!(w);
            }
        }
    }
    if report.refused.is_some() && !report.commits.is_empty() {
        let _ = writeln!(w, "| commit | | signed by |\n|---|---|---|");
        for line in &report.commits {
            let verdict = match (&line.signer, &line.error) {
                (Some(signer), _) => format!("✅ | `{signer}`"),
                (_, Some(error)) => format!("⛔ | {}", md_text(error)),
                _ => "| ".into(),
            };
            let _ = writeln!(
                w,
                "| `{}` {} | {verdict} |",
                short_id(&line.commit),
                md_text(&line.summary)
            );
        }
        let _ = writeln!(w);
    }
    match &report.cluster {
        None => {
            let _ = writeln!(
                w,
                "*Offline plan from git alone: each job of the base is taken to run as the base says; the cluster and the agent's records were not read.*\n"
            );
        }
        Some(cluster) => match (&cluster.flink_version, &cluster.error) {
            (_, Some(error)) => {
                let _ = writeln!(
                    w,
                    "⚠️ **The cluster could not be read** ({}): offline plan from git alone.\n",
                    md_text(error)
                );
            }
            (version, None) => {
                let _ = writeln!(
                    w,
                    "*Live plan: against Flink {} at {} and the agent's records.*\n",
                    version.as_deref().unwrap_or("?"),
                    md_text(&cluster.flink)
                );
            }
        },
    }
    if let Some(refusal) = &report.slots_refusal {
        let _ = writeln!(
            w,
            "{} {}.\n",
            if report.slots_enforced {
                "⛔ **`apply` would refuse this revision now:**"
            } else {
                "⚠️ **`apply` would warn (`reconcile.slot_budget: warn`):**"
            },
            md_text(refusal)
        );
    }
    let Some(review) = &report.review else {
        return md;
    };
    markdown_review(w, review);
    md
}

fn markdown_review(w: &mut String, review: &Review) {
    let changed: Vec<&JobReview> = review.changed().collect();
    if changed.is_empty() {
        let _ = writeln!(w, "No job changes.\n");
    } else {
        let _ = writeln!(
            w,
            "| job | action | how | slots | risks |\n|---|---|---|---|---|"
        );
        for job in &changed {
            let risks: Vec<String> = job.risks.iter().map(|r| md_text(&r.tag)).collect();
            let _ = writeln!(
                w,
                "| `{}` | **{}** | {} | {} | {} |",
                job.job_id,
                job.action_label(),
                job.how.as_deref().unwrap_or("-"),
                slots_cell(review.slots.of(&job.job_id)),
                if risks.is_empty() {
                    "-".into()
                } else {
                    risks.join(", ")
                }
            );
        }
        let _ = writeln!(w);
    }
    let unchanged: Vec<String> = review
        .unchanged()
        .map(|j| format!("`{}`", j.job_id))
        .collect();
    match unchanged.len() {
        0 => {}
        n if n <= UNCHANGED_NAMED => {
            let _ = writeln!(
                w,
                "**Unchanged:** {n} job{} ({}).\n",
                if n == 1 { "" } else { "s" },
                unchanged.join(", ")
            );
        }
        n => {
            let _ = writeln!(w, "**Unchanged:** {n} jobs.\n");
        }
    }
    let _ = writeln!(w, "**Task slots:** {}.\n", md_text(&review.slots.summary()));
    if let Some(warning) = review.slots.rollback_warning() {
        let _ = writeln!(w, "⚠️ {}.\n", md_text(&warning));
    }
    for job in changed {
        let _ = writeln!(
            w,
            "<details>\n<summary><code>{}</code>: {}{}</summary>\n",
            job.job_id,
            job.action_label(),
            job.how
                .as_deref()
                .filter(|h| *h != "-" && job.action != Action::Update)
                .map(|h| format!(" ({h})"))
                .unwrap_or_default()
        );
        let mut facts = Vec::new();
        if let Some(file) = &job.file {
            facts.push(format!("spec `{file}`"));
        }
        if let Some(kind) = job.kind {
            facts.push(format!("{} job", kind.as_str()));
        }
        if let Some(flink) = &job.flink {
            facts.push(format!("Flink job `{}`", md_text(flink)));
        }
        if !facts.is_empty() {
            let _ = writeln!(w, "{}\n", facts.join(" · "));
        }
        if !job.reasons.is_empty() {
            let _ = writeln!(w, "**Why**");
            for reason in &job.reasons {
                let _ = writeln!(w, "- {}", md_reason(reason));
            }
            let _ = writeln!(w);
        }
        if let Some(how) = how_sentence(job) {
            let _ = writeln!(w, "**How:** {how}.\n");
        }
        // An incompatible verdict is among the risks already.
        if let Some(verdict) = job.state_compatibility.as_ref().filter(|v| {
            !matches!(
                v,
                crate::plan::compat::StateCompatibility::Incompatible { .. }
            )
        }) {
            let _ = writeln!(w, "**State:** {}.\n", md_text(&verdict.summary()));
        }
        if !job.risks.is_empty() {
            let _ = writeln!(w, "**Risks**");
            for risk in &job.risks {
                let _ = writeln!(w, "- {}", md_text(&risk.detail));
            }
            let _ = writeln!(w);
        }
        for diff in &job.sources {
            let body = short_diff(&diff.unified);
            let fence = fence_for(&body);
            let _ = writeln!(
                w,
                "`{}`: {}\n",
                diff.path,
                diff.summary().replace(&format!(" in {}", diff.path), "")
            );
            let _ = writeln!(w, "{fence}diff\n{body}\n{fence}\n");
        }
        let _ = writeln!(w, "</details>\n");
    }
}

/// Renders a range plan for a terminal.
pub fn print_text(report: &RangeReport) {
    outln!("plan {}", range_title(report));
    if let Some(merge_base) = &report.merge_base {
        outln!(
            "         the head does not descend from {}: compared with the merge base {}",
            short_id(&report.base),
            short_id(merge_base)
        );
    }
    match &report.refused {
        None => outln!(
            "trust    {} verified; signed by {}",
            commit_count(&report.commits),
            signers_text(&report.signers, false)
        ),
        Some(refusal) => {
            outln!("REFUSED ({}): {}", refusal.kind, refusal.message);
            for error in &refusal.spec_errors {
                outln!("  {error}");
            }
            for line in &report.commits {
                match (&line.signer, &line.error) {
                    (Some(signer), _) => {
                        outln!(
                            "  ok       {}  {signer}  {}",
                            short_id(&line.commit),
                            line.summary
                        )
                    }
                    (_, Some(error)) => outln!(
                        "  FAILED   {}  {error}  ({})",
                        short_id(&line.commit),
                        line.summary
                    ),
                    _ => {}
                }
            }
            if report.review.is_some() {
                outln!("the plan below is what this range would do once the problem is fixed");
            }
        }
    }
    match &report.cluster {
        None => {
            outln!("cluster  offline: git only (the cluster and the agent's records were not read)")
        }
        Some(cluster) => match &cluster.error {
            Some(error) => outln!("cluster  UNREACHABLE: {error}"),
            None => outln!(
                "cluster  Flink {} at {}",
                cluster.flink_version.as_deref().unwrap_or("?"),
                cluster.flink
            ),
        },
    }
    outln!();
    let Some(review) = &report.review else {
        return;
    };
    for job in review.changed() {
        outln!(
            "  {:<20} {:<28} {:<12} slots {:<8} {}",
            job.action_label(),
            job.job_id,
            job.how.as_deref().unwrap_or("-"),
            slots_cell(review.slots.of(&job.job_id)),
            job.reasons.join("; ")
        );
        if let Some(flink) = &job.flink {
            outln!("  {:<20} flink: {flink}", "");
        }
        for risk in &job.risks {
            outln!("  {:<20} risk: {}", "", risk.detail);
        }
        if let Some(verdict) = job.state_compatibility.as_ref().filter(|v| {
            !matches!(
                v,
                crate::plan::compat::StateCompatibility::Incompatible { .. }
            )
        }) {
            outln!("  {:<20} {}", "", verdict.summary());
        }
        for diff in &job.sources {
            for line in diff.unified.lines() {
                outln!("  {:<20} | {line}", "");
            }
        }
    }
    let unchanged: Vec<String> = review.unchanged().map(|j| j.job_id.clone()).collect();
    outln!();
    outln!(
        "{} to change, {} unchanged{}",
        review.changed().count(),
        unchanged.len(),
        match unchanged.len() {
            0 => String::new(),
            n if n <= UNCHANGED_NAMED => format!(": {}", and_list(&unchanged)),
            _ => String::new(),
        }
    );
    outln!("slots    {}", review.slots.summary());
    if let Some(refusal) = &report.slots_refusal {
        outln!(
            "{} {refusal}",
            if report.slots_enforced {
                "apply would REFUSE this revision now:"
            } else {
                "apply would warn (reconcile.slot_budget: warn):"
            }
        );
    }
    if let Some(warning) = review.slots.rollback_warning() {
        outln!("         warning: {warning}");
    }
}
