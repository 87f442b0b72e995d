//! Every attack of `shared/reference/signatures.md`, made with real `ssh-keygen` and `git`, is refused
//! with a message naming the commit or file; every valid case agrees with `git verify-commit` /
//! `ssh-keygen -Y verify`, except where we are deliberately stricter (each such test says why).

mod support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::Utc;
use flink_gitops::config::CommitPolicy;
use flink_gitops::trust::artifacts::{ArtifactError, ArtifactPolicy, hash_jar, verify_jar};
use flink_gitops::trust::commits::{
    Acceptance, CommitError, Owners, Policy, RangeError, Start, verify_commit, verify_range,
};
use flink_gitops::trust::{AllowedSigners, SignatureError, SignerError, SshSigError};
use git2::{Oid, Repository};
use support::*;

const BOTH: &str = "namespaces=\"git,flink-gitops-artifact\"";

struct Fixture {
    repo: SpecRepo,
    signers_file: tempfile::NamedTempFile,
}

impl Fixture {
    fn new(allowed: &str) -> Fixture {
        let repo = SpecRepo::new();
        let text = allowed.replace("{author}", &repo.signer.line(BOTH));
        Fixture {
            signers_file: signers_file(&text),
            repo,
        }
    }

    fn signers(&self) -> AllowedSigners {
        AllowedSigners::load(self.signers_file.path()).unwrap()
    }

    fn git2(&self) -> Repository {
        Repository::open(self.repo.path()).unwrap()
    }

    /// `git verify-commit`, with our allowed_signers file.
    fn git_verifies(&self, commit: &str) -> bool {
        Command::new("git")
            .arg("-C")
            .arg(self.repo.path())
            .arg("-c")
            .arg(format!(
                "gpg.ssh.allowedSignersFile={}",
                self.signers_file.path().display()
            ))
            .args(["verify-commit", commit])
            .output()
            .unwrap()
            .status
            .success()
    }

    fn judge(
        &self,
        commit: &str,
        clean_merges: bool,
        owners: &Owners,
    ) -> Result<Acceptance, CommitError> {
        let signers = self.signers();
        let policy = Policy {
            signers: &signers,
            mode: CommitPolicy::Every,
            clean_merges,
            owners,
        };
        let repo = self.git2();
        let oid = Oid::from_str(commit).unwrap();
        let parents: HashSet<Oid> = repo.find_commit(oid).unwrap().parent_ids().collect();
        verify_commit(&repo, oid, &policy, Utc::now(), &parents, None)
    }

    fn judge_plain(&self, commit: &str) -> Result<Acceptance, CommitError> {
        self.judge(commit, false, &Owners::none())
    }
}

fn signers_file(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    file
}

fn signed_by(result: Result<Acceptance, CommitError>) -> String {
    match result {
        Ok(Acceptance::Signed(v)) => v.principal,
        other => panic!("expected a signed acceptance, got {other:?}"),
    }
}

fn raw_commit(repo: &SpecRepo, commit: &str) -> String {
    repo.git(&["cat-file", "commit", commit])
}

/// The payload of a commit: its raw object without the gpgsig header.
fn payload_of(raw: &str) -> String {
    let mut out = String::new();
    let mut in_signature = false;
    let mut in_headers = true;
    for line in raw.split_inclusive('\n') {
        if in_headers && line == "\n" {
            in_headers = false;
        }
        if in_headers && line.starts_with("gpgsig") {
            in_signature = true;
            continue;
        }
        if in_signature && line.starts_with(' ') {
            continue;
        }
        in_signature = false;
        out.push_str(line);
    }
    out
}

/// A commit object made by hand: the payload with one or more gpgsig headers inserted.
fn write_commit(repo: &SpecRepo, payload: &str, signatures: &[&str]) -> String {
    let (headers, body) = payload.split_once("\n\n").unwrap();
    let mut text = headers.to_string();
    for armored in signatures {
        text.push_str("\ngpgsig ");
        text.push_str(&armored.trim_end().lines().collect::<Vec<_>>().join("\n "));
    }
    text.push_str("\n\n");
    text.push_str(body);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &text).unwrap();
    repo.git(&[
        "hash-object",
        "-t",
        "commit",
        "-w",
        file.path().to_str().unwrap(),
    ])
    .trim()
    .to_string()
}

fn sign_text(signer: &Signer, text: &str, namespace: &str, extra: &[&str]) -> String {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    String::from_utf8(signer.sign(file.path(), namespace, extra)).unwrap()
}

fn ssh_keygen_verifies(
    signers: &Path,
    principal: &str,
    namespace: &str,
    signature: &[u8],
    message: &Path,
) -> bool {
    let sig = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(sig.path(), signature).unwrap();
    Command::new("ssh-keygen")
        .args(["-Y", "verify", "-f"])
        .arg(signers)
        .args(["-I", principal, "-n", namespace, "-s"])
        .arg(sig.path())
        .stdin(std::fs::File::open(message).unwrap())
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn signed_commits_verify_like_git_with_sha512_and_sha256() {
    let f = Fixture::new("{author}");
    f.repo.write("jobs/a.yaml", "a");
    let first = f.repo.commit("first");
    assert!(f.git_verifies(&first));
    assert_eq!(signed_by(f.judge_plain(&first)), "author@example.com");

    // git signs with sha512; a sha256 SSHSIG (ssh-keygen -O hashalg=sha256) must verify too.
    f.repo.write("jobs/b.yaml", "b");
    let second = f.repo.commit("second");
    let payload = payload_of(&raw_commit(&f.repo, &second));
    let sha256 = sign_text(&f.repo.signer, &payload, "git", &["-O", "hashalg=sha256"]);
    assert!(sha256.contains("BEGIN SSH SIGNATURE"));
    let resigned = write_commit(&f.repo, &payload, &[&sha256]);
    assert!(
        f.git_verifies(&resigned),
        "git accepts the sha256 signature"
    );
    assert_eq!(signed_by(f.judge_plain(&resigned)), "author@example.com");
}

#[test]
fn unsigned_commit_is_refused() {
    let f = Fixture::new("{author}");
    f.repo.write("jobs/a.yaml", "a");
    f.repo.git(&["add", "-A"]);
    f.repo
        .git(&["commit", "-q", "--no-gpg-sign", "-m", "unsigned"]);
    let commit = f.repo.git(&["rev-parse", "HEAD"]).trim().to_string();
    assert!(!f.git_verifies(&commit));
    assert_eq!(f.judge_plain(&commit), Err(CommitError::Unsigned));
}

#[test]
fn untrusted_key_is_refused() {
    let stranger = Signer::new("mallory@example.com");
    let f = Fixture::new(&stranger.line(BOTH).replace("mallory", "someone-else"));
    let _ = &stranger;
    f.repo.write("jobs/a.yaml", "a");
    let commit = f.repo.commit("signed by a key nobody trusts");
    assert!(!f.git_verifies(&commit));
    let error = f.judge_plain(&commit).unwrap_err();
    assert!(
        matches!(
            error,
            CommitError::Signature(SignatureError::Signer(SignerError::UnknownKey { .. }))
        ),
        "{error}"
    );
    assert!(error.to_string().contains("is not in the allowed signers"));
}

#[test]
fn expired_key_is_refused() {
    let f = Fixture::new("{author}");
    let line = f
        .repo
        .signer
        .line(&format!("{BOTH},valid-before=\"20240101Z\""));
    std::fs::write(f.signers_file.path(), line).unwrap();
    f.repo.write("jobs/a.yaml", "a");
    let commit = f.repo.commit("signed after the key was retired");
    assert!(!f.git_verifies(&commit));
    let error = f.judge_plain(&commit).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("expired: valid-before 2024-01-01"),
        "{error}"
    );
}

#[test]
fn backdated_commit_by_a_retired_key_is_refused_although_git_accepts_it() {
    // git judges key validity at the committer date, which the signer controls. We judge at the
    // agent's first sight of the commit, so backdating cannot revive a retired key.
    let f = Fixture::new("{author}");
    std::fs::write(
        f.signers_file.path(),
        f.repo
            .signer
            .line(&format!("{BOTH},valid-before=\"20240101Z\"")),
    )
    .unwrap();
    f.repo.write("jobs/a.yaml", "a");
    f.repo.git(&["add", "-A"]);
    let output = Command::new("git")
        .arg("-C")
        .arg(f.repo.path())
        .args(["commit", "-q", "-m", "backdated"])
        .env("GIT_COMMITTER_DATE", "2023-06-01T12:00:00Z")
        .env("GIT_AUTHOR_DATE", "2023-06-01T12:00:00Z")
        .output()
        .unwrap();
    assert!(output.status.success());
    let commit = f.repo.git(&["rev-parse", "HEAD"]).trim().to_string();
    assert!(
        f.git_verifies(&commit),
        "git verify-commit accepts the backdated commit"
    );
    let error = f.judge_plain(&commit).unwrap_err();
    assert!(
        matches!(
            error,
            CommitError::Signature(SignatureError::Signer(SignerError::Expired { .. }))
        ),
        "{error}"
    );
}

#[test]
fn tampered_commit_is_refused() {
    let f = Fixture::new("{author}");
    f.repo.write("jobs/a.yaml", "a");
    let commit = f.repo.commit("deploy v1");
    let tampered_raw = raw_commit(&f.repo, &commit).replace("deploy v1", "deploy v9");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), tampered_raw).unwrap();
    let tampered = f
        .repo
        .git(&[
            "hash-object",
            "-t",
            "commit",
            "-w",
            file.path().to_str().unwrap(),
        ])
        .trim()
        .to_string();
    assert!(!f.git_verifies(&tampered));
    assert_eq!(
        f.judge_plain(&tampered),
        Err(CommitError::Signature(SignatureError::Format(
            SshSigError::BadSignature
        )))
    );
}

#[test]
fn two_signature_headers_are_refused() {
    // libgit2 strips only the first gpgsig header from the payload: a second would be data no one signed.
    let f = Fixture::new("{author}");
    f.repo.write("jobs/a.yaml", "a");
    let commit = f.repo.commit("once");
    let payload = payload_of(&raw_commit(&f.repo, &commit));
    let signature = sign_text(&f.repo.signer, &payload, "git", &[]);
    let doubled = write_commit(&f.repo, &payload, &[&signature, &signature]);
    assert_eq!(
        f.judge_plain(&doubled),
        Err(CommitError::MultipleSignatures(2))
    );
}

#[test]
fn signature_for_another_namespace_is_refused() {
    let f = Fixture::new("{author}");
    f.repo.write("jobs/a.yaml", "a");
    let commit = f.repo.commit("x");
    let payload = payload_of(&raw_commit(&f.repo, &commit));
    let file_signature = sign_text(&f.repo.signer, &payload, "file", &[]);
    let forged = write_commit(&f.repo, &payload, &[&file_signature]);
    assert!(!f.git_verifies(&forged));
    let error = f.judge_plain(&forged).unwrap_err();
    assert_eq!(
        error.to_string(),
        "signature namespace is `file`, expected `git`"
    );
}

fn merge_fixture(f: &Fixture) -> (String, String) {
    f.repo.write("jobs/base.yaml", "base\n");
    f.repo.commit("base");
    f.repo.git(&["checkout", "-q", "-b", "feature"]);
    f.repo.write("jobs/feature.yaml", "feature\n");
    let feature = f.repo.commit("feature work");
    f.repo.git(&["checkout", "-q", "main"]);
    f.repo.write("jobs/main.yaml", "main\n");
    let main = f.repo.commit("main work");
    (main, feature)
}

#[test]
fn unsigned_clean_merge_is_accepted_only_with_clean_merges() {
    let f = Fixture::new("{author}");
    merge_fixture(&f);
    f.repo.git(&[
        "merge",
        "-q",
        "--no-ff",
        "--no-gpg-sign",
        "-m",
        "Merge PR #1 (web UI)",
        "feature",
    ]);
    let merge = f.repo.git(&["rev-parse", "HEAD"]).trim().to_string();
    assert_eq!(f.judge_plain(&merge), Err(CommitError::UnsignedMerge));
    assert_eq!(
        f.judge(&merge, true, &Owners::none()),
        Ok(Acceptance::CleanMerge)
    );
}

#[test]
fn evil_merge_is_refused_even_with_clean_merges() {
    let f = Fixture::new("{author}");
    merge_fixture(&f);
    f.repo
        .git(&["merge", "-q", "--no-ff", "--no-commit", "feature"]);
    f.repo.write("jobs/smuggled.yaml", "nobody signed this\n");
    f.repo.git(&["add", "-A"]);
    f.repo
        .git(&["commit", "-q", "--no-gpg-sign", "-m", "Merge PR #2"]);
    let merge = f.repo.git(&["rev-parse", "HEAD"]).trim().to_string();
    let error = f.judge(&merge, true, &Owners::none()).unwrap_err();
    assert!(
        matches!(error, CommitError::NotCleanMerge { .. }),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains("adds content no trusted signer wrote")
    );
}

#[test]
fn unsigned_merge_of_an_unverified_parent_is_refused() {
    let f = Fixture::new("{author}");
    merge_fixture(&f);
    f.repo.git(&["checkout", "-q", "feature"]);
    f.repo.write("jobs/feature2.yaml", "x\n");
    f.repo.git(&["add", "-A"]);
    f.repo.git(&[
        "commit",
        "-q",
        "--no-gpg-sign",
        "-m",
        "unsigned feature commit",
    ]);
    f.repo.git(&["checkout", "-q", "main"]);
    f.repo.git(&[
        "merge",
        "-q",
        "--no-ff",
        "--no-gpg-sign",
        "-m",
        "merge",
        "feature",
    ]);
    let head = Oid::from_str(f.repo.git(&["rev-parse", "HEAD"]).trim()).unwrap();
    let root = Oid::from_str(f.repo.git(&["rev-list", "--max-parents=0", "HEAD"]).trim()).unwrap();
    let signers = f.signers();
    let owners = Owners::none();
    let policy = Policy {
        signers: &signers,
        mode: CommitPolicy::Every,
        clean_merges: true,
        owners: &owners,
    };
    let report = verify_range(&f.git2(), Start::Watermark(root), head, &policy, |_| {
        Utc::now()
    })
    .unwrap();
    let refused: Vec<String> = report
        .verdicts
        .iter()
        .filter_map(|v| {
            v.result
                .as_ref()
                .err()
                .map(|e| format!("{}: {e}", v.summary))
        })
        .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused[0].starts_with("unsigned feature commit: not signed"));
    assert!(refused[1].contains("is not verified"), "{refused:?}");
}

#[test]
fn force_push_to_an_older_commit_and_teleport_are_refused() {
    let f = Fixture::new("{author}");
    f.repo.write("jobs/a.yaml", "1");
    let one = f.repo.commit("one");
    f.repo.write("jobs/a.yaml", "2");
    let two = f.repo.commit("two");
    f.repo.git(&["checkout", "-q", "--orphan", "other"]);
    f.repo.write("jobs/a.yaml", "elsewhere");
    let elsewhere = f.repo.commit("another line of history");
    let signers = f.signers();
    let owners = Owners::none();
    let policy = Policy {
        signers: &signers,
        mode: CommitPolicy::Every,
        clean_merges: false,
        owners: &owners,
    };
    let repo = f.git2();
    let oid = |s: &str| Oid::from_str(s).unwrap();
    let rollback = verify_range(
        &repo,
        Start::Watermark(oid(&two)),
        oid(&one),
        &policy,
        |_| Utc::now(),
    )
    .unwrap_err();
    assert!(
        matches!(rollback, RangeError::Rollback { .. }),
        "{rollback}"
    );
    assert!(rollback.to_string().contains(&one) && rollback.to_string().contains(&two));
    let teleport = verify_range(
        &repo,
        Start::Watermark(oid(&two)),
        oid(&elsewhere),
        &policy,
        |_| Utc::now(),
    )
    .unwrap_err();
    assert!(
        matches!(teleport, RangeError::Teleport { .. }),
        "{teleport}"
    );
    let unchanged = verify_range(
        &repo,
        Start::Watermark(oid(&two)),
        oid(&two),
        &policy,
        |_| Utc::now(),
    )
    .unwrap();
    assert!(unchanged.verdicts.is_empty());
}

#[test]
fn owners_are_enforced_per_file() {
    let alice = Signer::new("alice@example.com");
    let bob = Signer::new("bob@example.com");
    let allowed = format!("{}{}", alice.line(BOTH), bob.line(BOTH));
    let f = Fixture::new(&allowed);
    let owners =
        Owners::new(&[("jobs/payments/**".into(), vec!["alice@example.com".into()])]).unwrap();
    let sign_as = |who: &Signer| {
        f.repo
            .git(&["config", "user.signingkey", who.key.to_str().unwrap()])
    };

    sign_as(&alice);
    f.repo.write("jobs/payments/ledger.yaml", "v1");
    let by_alice = f.repo.commit("alice changes payments");
    assert_eq!(
        signed_by(f.judge(&by_alice, false, &owners)),
        "alice@example.com"
    );

    sign_as(&bob);
    f.repo.write("jobs/analytics/clicks.yaml", "v1");
    let bob_elsewhere = f.repo.commit("bob changes analytics");
    assert_eq!(
        signed_by(f.judge(&bob_elsewhere, false, &owners)),
        "bob@example.com"
    );

    f.repo.write("jobs/payments/ledger.yaml", "v2");
    let bob_payments = f.repo.commit("bob changes payments");
    assert!(
        f.git_verifies(&bob_payments),
        "the signature itself is fine"
    );
    let error = f.judge(&bob_payments, false, &owners).unwrap_err();
    assert_eq!(
        error.to_string(),
        "changes jobs/payments/ledger.yaml, owned by alice@example.com (rule `jobs/payments/**`), but is signed by bob@example.com"
    );
}

fn jar_file(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let path = dir.join(name);
    let mut bytes = b"PK\x03\x04".to_vec();
    bytes.extend_from_slice(content);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn check_jar(
    path: &Path,
    signature: Option<&[u8]>,
    signers: &AllowedSigners,
    pin: Option<&str>,
) -> Result<Option<String>, ArtifactError> {
    let digest = hash_jar(
        std::fs::File::open(path).unwrap(),
        "artifacts/job.jar",
        1 << 20,
    )
    .unwrap();
    let policy = ArtifactPolicy {
        signers,
        namespace: "flink-gitops-artifact",
        signature_required: Some("trust.artifacts is `required`"),
    };
    verify_jar(
        "artifacts/job.jar",
        &digest,
        pin,
        signature,
        &policy,
        Utc::now(),
    )
    .map(|v| v.map(|v| v.principal))
}

#[test]
fn jar_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let releaser = Signer::new("release@example.com");
    let git_only = Signer::new("dev@example.com");
    let stranger = Signer::new("mallory@example.com");
    let allowed_text = format!(
        "{}{}",
        releaser.line(BOTH),
        git_only.line("namespaces=\"git\"")
    );
    let allowed = signers_file(&allowed_text);
    let signers = AllowedSigners::load(allowed.path()).unwrap();
    let jar = jar_file(dir.path(), "job.jar", b"classes");

    let good = releaser.sign(&jar, "flink-gitops-artifact", &[]);
    assert!(ssh_keygen_verifies(
        allowed.path(),
        "release@example.com",
        "flink-gitops-artifact",
        &good,
        &jar
    ));
    assert_eq!(
        check_jar(&jar, Some(&good), &signers, None)
            .unwrap()
            .as_deref(),
        Some("release@example.com")
    );
    let sha256 = releaser.sign(&jar, "flink-gitops-artifact", &["-O", "hashalg=sha256"]);
    assert_eq!(
        check_jar(&jar, Some(&sha256), &signers, None)
            .unwrap()
            .as_deref(),
        Some("release@example.com")
    );

    let digest = hash_jar(std::fs::File::open(&jar).unwrap(), "j", 1 << 20)
        .unwrap()
        .sha256;
    assert!(check_jar(&jar, Some(&good), &signers, Some(&digest)).is_ok());
    let pinned_wrong = check_jar(&jar, Some(&good), &signers, Some(&"0".repeat(64))).unwrap_err();
    assert!(
        pinned_wrong.to_string().contains("but the spec pins 0000"),
        "{pinned_wrong}"
    );

    let missing = check_jar(&jar, None, &signers, None).unwrap_err();
    assert!(
        missing
            .to_string()
            .contains("no detached signature artifacts/job.jar.sig"),
        "{missing}"
    );

    let untrusted = stranger.sign(&jar, "flink-gitops-artifact", &[]);
    assert!(
        check_jar(&jar, Some(&untrusted), &signers, None)
            .unwrap_err()
            .to_string()
            .contains("is not in the allowed signers")
    );

    let commit_signature = releaser.sign(&jar, "git", &[]);
    let error = check_jar(&jar, Some(&commit_signature), &signers, None).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("signature namespace is `git`, expected `flink-gitops-artifact`"),
        "{error}"
    );

    let limited = git_only.sign(&jar, "flink-gitops-artifact", &[]);
    assert!(!ssh_keygen_verifies(
        allowed.path(),
        "dev@example.com",
        "flink-gitops-artifact",
        &limited,
        &jar
    ));
    let error = check_jar(&jar, Some(&limited), &signers, None).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("is not allowed to sign for namespace `flink-gitops-artifact` (only git)"),
        "{error}"
    );

    let tampered = jar_file(dir.path(), "job.jar", b"classes with a backdoor");
    assert!(!ssh_keygen_verifies(
        allowed.path(),
        "release@example.com",
        "flink-gitops-artifact",
        &good,
        &tampered
    ));
    let error = check_jar(&tampered, Some(&good), &signers, None).unwrap_err();
    assert!(
        error.to_string().contains("does not match the signed data"),
        "{error}"
    );

    let not_a_jar = dir.path().join("notes.txt");
    std::fs::write(&not_a_jar, "hello").unwrap();
    let error = hash_jar(
        std::fs::File::open(&not_a_jar).unwrap(),
        "notes.txt",
        1 << 20,
    )
    .unwrap_err();
    assert!(error.to_string().contains("not a JAR"));
    let error = hash_jar(std::fs::File::open(&jar).unwrap(), "job.jar", 4).unwrap_err();
    assert!(error.to_string().contains("larger than the limit"));
}

#[test]
fn verify_command_reports_each_commit() {
    let f = Fixture::new("{author}");
    f.repo.write("jobs/a.yaml", "a");
    let first = f.repo.commit("good one");
    f.repo.write("jobs/b.yaml", "b");
    f.repo.git(&["add", "-A"]);
    f.repo
        .git(&["commit", "-q", "--no-gpg-sign", "-m", "sneaky"]);
    f.repo.write("jobs/c.yaml", "c");
    f.repo.commit("good again");
    let repo = f.repo.path().to_str().unwrap();
    let signers = f.signers_file.path().to_str().unwrap();

    let output = flink_gitops(&["verify", "--repo", repo, "--allowed-signers", signers]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("ok ")
            && lines[0].contains("author@example.com")
            && lines[0].contains("good one"),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("FAILED")
            && lines[1].contains("not signed")
            && lines[1].contains("sneaky"),
        "{stdout}"
    );
    assert!(lines[2].starts_with("ok "), "{stdout}");
    assert_eq!(lines[3], "2 commit(s) verified, 1 failed");

    let json = flink_gitops_json(
        &[
            "verify",
            "--repo",
            repo,
            "--allowed-signers",
            signers,
            "--from",
            "HEAD~1",
            "--output",
            "json",
        ],
        0,
    );
    assert_eq!(json["commits"].as_array().unwrap().len(), 1);
    let json = flink_gitops_json(
        &[
            "verify",
            "--repo",
            repo,
            "--allowed-signers",
            signers,
            "--from",
            "HEAD",
            "--to",
            &first,
            "--output",
            "json",
        ],
        1,
    );
    assert!(
        json["refused"]
            .as_str()
            .unwrap()
            .starts_with("rollback refused"),
        "{json}"
    );
    let usage = flink_gitops(&["verify", "--repo", repo]);
    assert_eq!(usage.status.code(), Some(2));
}

/// A job repository with a signed commit, an unsigned one (`unsigned`) after it and a signed one
/// on top, a config against no cluster, and the state database a first `plan` made, whose
/// watermark is then set to `watermark_at` of the three commits.
struct SignedAroundUnsigned {
    f: Fixture,
    _work: tempfile::TempDir,
    state: PathBuf,
    config: PathBuf,
    commits: [String; 3],
}

impl SignedAroundUnsigned {
    fn new(unsigned: &str, watermark_at: usize) -> SignedAroundUnsigned {
        let f = Fixture::new("{author}");
        f.repo
            .write("artifacts/job.jar", b"PK\x03\x04 job")
            .write("jobs/a.yaml", stream_spec("a", "artifacts/job.jar", 1));
        let first = f.repo.commit("applied");
        f.repo
            .write("jobs/a.yaml", stream_spec("a", "artifacts/job.jar", 4));
        f.repo.git(&["add", "-A"]);
        f.repo
            .git(&["commit", "-q", "--no-gpg-sign", "-m", unsigned]);
        let between = f.repo.git(&["rev-parse", "HEAD"]).trim().to_string();
        f.repo
            .write("jobs/a.yaml", stream_spec("a", "artifacts/job.jar", 2));
        let head = f.repo.commit("signed on top");
        let work = tempfile::tempdir().unwrap();
        let config = write_config(work.path(), &f.repo, "http://127.0.0.1:9");
        flink_gitops(&["plan", "-c", config.to_str().unwrap()]);
        let state = work.path().join("state");
        let commits = [first, between, head];
        flink_gitops::state::StateStore::open_exclusive(&state)
            .unwrap()
            .set_meta("watermark", &commits[watermark_at])
            .unwrap();
        SignedAroundUnsigned {
            f,
            _work: work,
            state,
            config,
            commits,
        }
    }
}

#[test]
fn plan_refuses_an_unsigned_commit_after_the_watermark_and_a_force_push() {
    let around = SignedAroundUnsigned::new("unreviewed scale-up", 0);
    let (f, config_arg) = (&around.f, around.config.to_str().unwrap());
    let [watermark, _, head] = &around.commits;
    let plan = flink_gitops_json(&["plan", "-c", config_arg, "--output", "json"], 1);
    assert_eq!(plan["revision"], head.as_str());
    assert_eq!(plan["refused"]["kind"], "signature");
    assert!(
        plan["refused"]["message"]
            .as_str()
            .unwrap()
            .contains("(unreviewed scale-up): not signed"),
        "{plan}"
    );
    assert!(plan.get("plan").is_none());

    f.repo.git(&["reset", "-q", "--hard", watermark]);
    f.repo.git(&["commit", "-q", "--amend", "-m", "rewritten"]);
    let plan = flink_gitops_json(&["plan", "-c", config_arg, "--output", "json"], 1);
    assert_eq!(plan["refused"]["kind"], "teleport", "{plan}");
    let text = flink_gitops(&["plan", "-c", config_arg]);
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout.contains("REFUSED (teleport): history rewrite refused"),
        "{stdout}"
    );
    assert!(
        stdout.contains("the cluster keeps the last verified state"),
        "{stdout}"
    );
}

#[test]
fn plan_verifies_from_the_newer_watermark_when_the_kept_copy_is_older_than_the_database() {
    // `plan` starts verifying from the kept copy of the watermark before the database answers;
    // when the database's is newer, the commits between the two must not be judged again.
    let around = SignedAroundUnsigned::new("accepted by the operator", 1);
    let (state, config_arg) = (&around.state, around.config.to_str().unwrap());
    let [older, recorded, head] = &around.commits;
    std::fs::write(
        state.join(flink_gitops::state::WATERMARK_FILE),
        format!("{older}\n"),
    )
    .unwrap();

    let plan = flink_gitops_json(&["plan", "-c", config_arg, "--output", "json"], 1);
    assert_eq!(plan["revision"], head.as_str());
    assert!(plan.get("refused").is_none(), "{plan}");
    assert_eq!(plan["trust"]["verified_from"], recorded.as_str(), "{plan}");
    let commits = plan["trust"]["commits"].as_array().unwrap();
    assert_eq!(commits.len(), 1, "{plan}");
    assert_eq!(commits[0]["commit"], head.as_str());

    // The other way round the kept copy is the newer one, and wins.
    std::fs::write(
        state.join(flink_gitops::state::WATERMARK_FILE),
        format!("{head}\n"),
    )
    .unwrap();
    let plan = flink_gitops_json(&["plan", "-c", config_arg, "--output", "json"], 1);
    assert!(plan.get("refused").is_none(), "{plan}");
    assert_eq!(plan["trust"]["verified_from"], head.as_str(), "{plan}");
    assert_eq!(plan["trust"]["commits"].as_array().unwrap().len(), 0);
}

#[test]
fn plan_requires_signed_jars_when_the_policy_says_so() {
    let f = Fixture::new("{author}");
    f.repo
        .write("artifacts/job.jar", b"PK\x03\x04 job")
        .write("jobs/a.yaml", stream_spec("a", "artifacts/job.jar", 1));
    f.repo.commit("unsigned jar");
    let work = tempfile::tempdir().unwrap();
    let config = write_config_with(
        work.path(),
        f.repo.path(),
        "http://127.0.0.1:9",
        &f.repo.signer.line(BOTH),
        "artifacts: required",
    );
    let config_arg = config.to_str().unwrap();
    let plan = flink_gitops_json(&["plan", "-c", config_arg, "--output", "json"], 1);
    assert_eq!(plan["refused"]["kind"], "artifact");
    assert!(
        plan["refused"]["message"]
            .as_str()
            .unwrap()
            .contains("job a: artifacts/job.jar: no detached signature"),
        "{plan}"
    );

    f.repo.sign_artifact("artifacts/job.jar");
    f.repo.commit("sign the jar");
    let plan = flink_gitops_json(&["plan", "-c", config_arg, "--output", "json"], 1);
    assert!(plan.get("refused").is_none(), "{plan}");
    assert_eq!(
        plan["trust"]["artifacts"]["a"]["signer"],
        "author@example.com"
    );
    assert_eq!(
        plan["trust"]["commits"].as_array().unwrap().len(),
        1,
        "only the new head is judged on a fresh install"
    );
}

#[test]
fn verified_commits_are_recorded_with_their_signer_and_first_sight() {
    use flink_gitops::config::Config;
    use flink_gitops::revision::{
        TrustMaterial, record_verified, recording_first_seen, verify_revision,
    };
    use flink_gitops::state::StateStore;

    let f = Fixture::new("{author}");
    f.repo
        .write("artifacts/job.jar", b"PK\x03\x04 job")
        .write("jobs/a.yaml", stream_spec("a", "artifacts/job.jar", 1));
    let base = f.repo.commit("base");
    f.repo.git(&["checkout", "-q", "-b", "feature"]);
    f.repo
        .write("jobs/a.yaml", stream_spec("a", "artifacts/job.jar", 2));
    f.repo.commit("scale up");
    f.repo.git(&["checkout", "-q", "main"]);
    f.repo
        .write("jobs/b.yaml", stream_spec("b", "artifacts/job.jar", 1));
    f.repo.commit("add b");
    f.repo.git(&[
        "merge",
        "-q",
        "--no-ff",
        "--no-gpg-sign",
        "-m",
        "Merge PR #7",
        "feature",
    ]);
    let head = Oid::from_str(f.repo.git(&["rev-parse", "HEAD"]).trim()).unwrap();

    let work = tempfile::tempdir().unwrap();
    let config_path = write_config_with(
        work.path(),
        f.repo.path(),
        "http://127.0.0.1:9",
        &f.repo.signer.line(BOTH),
        &format!("artifacts: optional\nclean_merges: true\nstart_commit: {base}"),
    );
    let config = Config::load(&config_path).unwrap();
    let trust = TrustMaterial::load(&config).unwrap();
    let store = StateStore::open_exclusive(&config.state.dir).unwrap();
    let repo = f.git2();
    let start = Start::Configured(Oid::from_str(&base).unwrap());
    let revision = verify_revision(
        &repo,
        &config,
        &trust,
        start,
        head,
        recording_first_seen(&store),
        &flink_gitops::spec::SpecMemo::none(),
    )
    .unwrap();
    record_verified(&store, &revision).unwrap();
    assert_eq!(
        revision.commits().len(),
        3,
        "base is trusted by config; the three after it are judged"
    );
    assert_eq!(
        revision.desired().jobs["a"]
            .spec
            .parallelism
            .map(|p| p.get()),
        Some(2)
    );
    let merge = store.revision(&head.to_string()).unwrap().unwrap();
    assert_eq!(
        merge.signer.as_deref(),
        Some("(clean merge of verified parents)")
    );
    assert!(merge.verified_at.is_some());
    let first_time = merge.first_seen_at.clone();
    // Deliberate: times are kept to the millisecond, so a second record made after 20 ms would
    // carry a later first_seen_at and fail the check below.
    std::thread::sleep(std::time::Duration::from_millis(20));
    verify_revision(
        &repo,
        &config,
        &trust,
        start,
        head,
        recording_first_seen(&store),
        &flink_gitops::spec::SpecMemo::none(),
    )
    .unwrap();
    assert_eq!(
        store
            .revision(&head.to_string())
            .unwrap()
            .unwrap()
            .first_seen_at,
        first_time
    );
    let signed = revision
        .commits()
        .iter()
        .filter(|(_, s)| s == "author@example.com")
        .count();
    assert_eq!(signed, 2);

    // The offline check of the same range agrees.
    let output = flink_gitops(&[
        "verify",
        "--repo",
        f.repo.path().to_str().unwrap(),
        "-c",
        config_path.to_str().unwrap(),
        "--from",
        &base,
    ]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn a_lost_state_db_keeps_the_watermark_and_only_the_operator_accepts_a_rollback() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let fake = flink_gitops::testing::FakeFlink::new();
    let address = runtime.block_on(fake.serve()).unwrap();
    let f = Fixture::new("{author}");
    f.repo.write("jobs/placeholder.txt", "one");
    let c1 = f.repo.commit("c1");
    f.repo.write("jobs/placeholder.txt", "two");
    let c2 = f.repo.commit("c2");
    let work = tempfile::tempdir().unwrap();
    // With trust.start_commit at C1, a fresh state alone would accept C1 again: the kept
    // watermark, newer than the start commit, must win.
    let config = write_config_with(
        work.path(),
        f.repo.path(),
        &format!("http://{address}"),
        &f.repo.signer.line(BOTH),
        &format!("artifacts: optional\nstart_commit: {c1}"),
    );
    let config_arg = config.to_str().unwrap();
    let applied = flink_gitops_json(&["apply", "-c", config_arg, "--output", "json"], 0);
    assert_eq!(applied["revision"], c2.as_str(), "{applied}");

    let state = work.path().join("state");
    for name in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(state.join(name));
    }
    f.repo.git(&["reset", "-q", "--hard", &c1]);
    let refused = flink_gitops_json(&["apply", "-c", config_arg, "--output", "json"], 1);
    assert_eq!(refused["refused"][0], "rollback", "{refused}");
    let message = refused["refused"][1].as_str().unwrap();
    assert!(
        message.contains(&c1) && message.contains(&c2),
        "names the head and the kept watermark: {message}"
    );
    assert!(
        message.contains(&format!("--accept-rollback-to {c1}")),
        "{message}"
    );
    let plan = flink_gitops_json(&["plan", "-c", config_arg, "--output", "json"], 1);
    assert_eq!(plan["refused"]["kind"], "rollback", "{plan}");

    // The override names the commit the operator looked at; another one is refused.
    let wrong = flink_gitops(&["apply", "-c", config_arg, "--accept-rollback-to", &c2]);
    assert_eq!(wrong.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("not that commit"), "{stderr}");

    let accepted = flink_gitops_json(
        &[
            "apply",
            "-c",
            config_arg,
            "--output",
            "json",
            "--accept-rollback-to",
            &c1,
        ],
        0,
    );
    assert_eq!(accepted["revision"], c1.as_str(), "{accepted}");
    let store = flink_gitops::state::StateStore::open_read_only(&state)
        .unwrap()
        .unwrap();
    let audit = store.audit_log().unwrap();
    let intent = audit
        .iter()
        .find(|e| e.action == "accept-rollback" && e.phase == "intent")
        .unwrap_or_else(|| panic!("no accept-rollback intent in {audit:?}"));
    let detail = intent.detail.as_deref().unwrap();
    assert!(
        detail.contains(&c2) && detail.contains("\"by\""),
        "{detail}"
    );
    assert_eq!(intent.commit_id.as_deref(), Some(c1.as_str()));
    assert!(
        audit
            .iter()
            .any(|e| e.intent_id == Some(intent.id) && e.result.as_deref() == Some("ok")),
        "{audit:?}"
    );
    assert_eq!(
        store.meta("watermark").unwrap().as_deref(),
        Some(c1.as_str())
    );
    assert_eq!(
        flink_gitops::state::kept_watermark(&state)
            .unwrap()
            .as_deref(),
        Some(c1.as_str())
    );
    drop(store);
    // One-shot: the next pass needs no flag, and nothing more is accepted.
    flink_gitops_json(&["apply", "-c", config_arg, "--output", "json"], 0);
}
