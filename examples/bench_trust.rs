//! Benchmark of the trust checks: verify 10,000 signed commits; hash a 200 MB JAR (vs `sha256sum`).
//!
//! Run: `cargo run --release --example bench_trust [COMMITS] [JAR_MB]`

mod common;
use common::peak_rss_mib;

use std::io::Write;
use std::process::Command;
use std::time::Instant;

use base64::Engine as _;
use chrono::Utc;
use ed25519_dalek::{Signer as _, SigningKey};
use flink_gitops::config::CommitPolicy;
use flink_gitops::trust::AllowedSigners;
use flink_gitops::trust::artifacts::hash_jar;
use flink_gitops::trust::commits::{Owners, Policy, Start, verify_range};
use sha2::{Digest, Sha512};

fn ssh_string(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(&(field.len() as u32).to_be_bytes());
    out.extend_from_slice(field);
}

fn public_blob(key: &SigningKey) -> Vec<u8> {
    let mut blob = Vec::new();
    ssh_string(&mut blob, b"ssh-ed25519");
    ssh_string(&mut blob, key.verifying_key().as_bytes());
    blob
}

/// An SSHSIG exactly as `ssh-keygen -Y sign -n git` makes it (sha512).
fn sshsig(key: &SigningKey, message: &[u8]) -> String {
    let mut signed = b"SSHSIG".to_vec();
    for field in [b"git".as_slice(), b"", b"sha512", &Sha512::digest(message)] {
        ssh_string(&mut signed, field);
    }
    let mut signature = Vec::new();
    ssh_string(&mut signature, b"ssh-ed25519");
    ssh_string(&mut signature, &key.sign(&signed).to_bytes());
    let mut blob = b"SSHSIG".to_vec();
    blob.extend_from_slice(&1u32.to_be_bytes());
    ssh_string(&mut blob, &public_blob(key));
    ssh_string(&mut blob, b"git");
    ssh_string(&mut blob, b"");
    ssh_string(&mut blob, b"sha512");
    ssh_string(&mut blob, &signature);
    let body = base64::engine::general_purpose::STANDARD.encode(blob);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(70)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN SSH SIGNATURE-----\n{}\n-----END SSH SIGNATURE-----",
        lines.join("\n")
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let commits: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let jar_mb: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let repo = git2::Repository::init(dir.path()).unwrap();
    let key = SigningKey::from_bytes(&[42; 32]);
    let public = base64::engine::general_purpose::STANDARD.encode(public_blob(&key));
    let signers_text = format!("bench@example.com namespaces=\"git\" ssh-ed25519 {public}\n");
    let signers_path = dir.path().join("allowed_signers");
    std::fs::write(&signers_path, &signers_text).unwrap();

    let started = Instant::now();
    let who = git2::Signature::new(
        "Bench",
        "bench@example.com",
        &git2::Time::new(1_700_000_000, 0),
    )
    .unwrap();
    let mut parent: Option<git2::Oid> = None;
    for n in 0..commits {
        let blob = repo
            .blob(format!("job_id: bench\nrevision: {n}\n").as_bytes())
            .unwrap();
        let mut builder = repo.treebuilder(None).unwrap();
        builder.insert("bench.yaml", blob, 0o100644).unwrap();
        let tree = repo.find_tree(builder.write().unwrap()).unwrap();
        let parents: Vec<git2::Commit<'_>> = parent
            .iter()
            .map(|p| repo.find_commit(*p).unwrap())
            .collect();
        let refs: Vec<&git2::Commit<'_>> = parents.iter().collect();
        let payload = repo
            .commit_create_buffer(&who, &who, &format!("change {n}"), &tree, &refs)
            .unwrap();
        let payload = std::str::from_utf8(&payload).unwrap().to_string();
        parent = Some(
            repo.commit_signed(&payload, &sshsig(&key, payload.as_bytes()), None)
                .unwrap(),
        );
    }
    let head = parent.unwrap();
    repo.reference("refs/heads/main", head, true, "bench")
        .unwrap();
    repo.set_head("refs/heads/main").unwrap();
    println!("made {commits} signed commits in {:.2?}", started.elapsed());

    let git_check = Command::new("git")
        .arg("-C")
        .arg(dir.path())
        .arg("-c")
        .arg(format!(
            "gpg.ssh.allowedSignersFile={}",
            signers_path.display()
        ))
        .args(["verify-commit", &head.to_string()])
        .output()
        .unwrap();
    println!(
        "git verify-commit of the head agrees: {}",
        git_check.status.success()
    );

    let signers = AllowedSigners::load(&signers_path).unwrap();
    let owners = Owners::none();
    let policy = Policy {
        signers: &signers,
        mode: CommitPolicy::Every,
        clean_merges: false,
        owners: &owners,
    };
    let now = Utc::now();
    let started = Instant::now();
    let report = verify_range(&repo, Start::Root, head, &policy, |_| now).unwrap();
    let elapsed = started.elapsed();
    assert!(report.all_accepted() && report.verdicts.len() == commits);
    println!(
        "verified {commits} commits in {elapsed:.2?} ({:.0} commits/s, {:.1} µs each)",
        commits as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / commits as f64
    );

    let jar = dir.path().join("big.jar");
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&jar).unwrap());
        file.write_all(b"PK\x03\x04").unwrap();
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut chunk = vec![0u8; 1 << 20];
        for _ in 0..jar_mb {
            for word in chunk.chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                word.copy_from_slice(&state.to_le_bytes());
            }
            file.write_all(&chunk).unwrap();
        }
    }
    let _ = Command::new("cat")
        .arg(&jar)
        .stdout(std::process::Stdio::null())
        .status();
    let started = Instant::now();
    let digest = hash_jar(std::fs::File::open(&jar).unwrap(), "big.jar", u64::MAX).unwrap();
    let ours = started.elapsed();
    let started = Instant::now();
    let output = Command::new("sha256sum").arg(&jar).output().unwrap();
    let theirs = started.elapsed();
    let agrees = String::from_utf8_lossy(&output.stdout).starts_with(&digest.sha256);
    let mb = digest.size as f64 / 1e6;
    println!(
        "hashed a {mb:.0} MB JAR (sha256 + sha512 in one streamed pass) in {ours:.2?} ({:.0} MB/s); sha256sum: {theirs:.2?} ({:.0} MB/s); digests agree: {agrees}",
        mb / ours.as_secs_f64(),
        mb / theirs.as_secs_f64()
    );
    println!("peak RSS of this process: {:.1} MiB", peak_rss_mib());
}
