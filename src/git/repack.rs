//! Keeps the mirror's packs few.
//!
//! Every fetch that brings commits leaves one more pack in the mirror, and nothing of libgit2's
//! repacks them. Each reader opens every pack index, and a lookup may look in all of them: on a
//! mirror of 1,000 specs `plan` took 21–23 ms with up to 14 packs and 32–34 ms with 73, so a
//! service that fetched for months would slow every pass and every command beside it.

use std::path::{Path, PathBuf};

use git2::Repository;

/// More packs than this, and a fetch folds them into one.
pub(super) const PACKS_BEFORE_REPACK: usize = 16;

/// Folds every object in `repo` into one pack and removes the packs they were in, once there are
/// more than `limit`. Nothing is dropped, not even objects no ref reaches: a watermark that a
/// force-push left behind must still be found in the mirror. Returns how many packs were folded.
///
/// Runs in the fetch's turn, so no fetch of this process adds a pack meanwhile. A pack another
/// process is still writing is left alone: only packs with both their index and their data are
/// folded. A reader that has a removed pack open keeps reading it (the file lives until it is
/// closed), and one that has not looked in it yet finds its objects in the new pack when libgit2
/// rescans the folder; a command beside the service that was between the two may fail its read
/// once, and succeeds when run again.
pub(super) fn fold_packs(repo: &Repository, limit: usize) -> Result<usize, RepackError> {
    let pack_dir = repo.path().join("objects").join("pack");
    let before = packs_in(&pack_dir)?;
    if before.len() <= limit {
        return Ok(0);
    }
    let git = |action: &'static str| move |source: git2::Error| RepackError::Git { action, source };
    let mut builder = repo.packbuilder().map_err(git("start a pack"))?;
    // Commits and trees from every ref first: the walk names each blob by its path, which puts
    // versions of the same file side by side for delta compression.
    let mut walk = repo.revwalk().map_err(git("walk the refs"))?;
    walk.push_glob("*").map_err(git("walk the refs"))?;
    builder
        .insert_walk(&mut walk)
        .map_err(git("add the reachable objects"))?;
    let mut everything = Vec::new();
    repo.odb()
        .map_err(git("open the object database"))?
        .foreach(|oid| {
            everything.push(*oid);
            true
        })
        .map_err(git("list the objects"))?;
    for oid in everything {
        // Already added by the walk, or not reachable from a ref: both are kept.
        builder
            .insert_object(oid, None)
            .map_err(git("add an object"))?;
    }
    builder
        .write(&pack_dir, 0)
        .map_err(git("write the folded pack"))?;
    let folded = builder
        .name()
        .ok()
        .flatten()
        .map(|name| format!("pack-{name}"))
        .ok_or(RepackError::Unnamed)?;
    let mut removed = 0;
    for stem in before.iter().filter(|stem| **stem != folded) {
        // The index first: a reader that lists the folder never sees an index without its pack.
        for extension in ["idx", "rev", "pack"] {
            let file = pack_dir.join(format!("{stem}.{extension}"));
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(RepackError::Remove { file, source }),
            }
        }
        removed += 1;
    }
    repo.odb()
        .and_then(|odb| odb.refresh())
        .map_err(git("rescan the packs"))?;
    Ok(removed)
}

/// The complete packs in `pack_dir` by stem (`pack-<hash>`), except those a `.keep` file protects.
fn packs_in(pack_dir: &Path) -> Result<Vec<String>, RepackError> {
    let listing = match std::fs::read_dir(pack_dir) {
        Ok(listing) => listing,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(RepackError::List {
                dir: pack_dir.to_path_buf(),
                source,
            });
        }
    };
    let mut stems = Vec::new();
    for entry in listing {
        let entry = entry.map_err(|source| RepackError::List {
            dir: pack_dir.to_path_buf(),
            source,
        })?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".pack")) else {
            continue;
        };
        let has = |extension: &str| pack_dir.join(format!("{stem}.{extension}")).exists();
        if has("idx") && !has("keep") {
            stems.push(stem.to_string());
        }
    }
    Ok(stems)
}

/// Why the mirror's packs could not be folded (the fetch itself succeeded).
#[derive(Debug, thiserror::Error)]
pub enum RepackError {
    /// libgit2 failed.
    #[error("cannot {action}: {}", .source.message())]
    Git {
        /// What was being done.
        action: &'static str,
        /// libgit2's error.
        source: git2::Error,
    },
    /// The pack folder could not be read.
    #[error("cannot list {}: {source}", .dir.display())]
    List {
        /// The folder.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A folded pack could not be removed.
    #[error("cannot remove {}: {source}", .file.display())]
    Remove {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// libgit2 wrote the pack but did not name it.
    #[error("the folded pack has no name")]
    Unnamed,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::GitSource;
    use git2::Oid;

    /// Every object `repo` can read.
    fn all_objects(repo: &Repository) -> std::collections::BTreeSet<Oid> {
        let mut objects = std::collections::BTreeSet::new();
        repo.odb()
            .unwrap()
            .foreach(|oid| {
                objects.insert(*oid);
                true
            })
            .unwrap();
        objects
    }

    fn commit_file(origin: &Repository, name: &str, text: &str) -> Oid {
        let blob = origin.blob(text.as_bytes()).unwrap();
        let parent = origin
            .refname_to_id("refs/heads/main")
            .ok()
            .map(|id| origin.find_commit(id).unwrap());
        let mut tree = origin
            .treebuilder(parent.as_ref().map(|p| p.tree().unwrap()).as_ref())
            .unwrap();
        tree.insert(name, blob, 0o100644).unwrap();
        let tree = origin.find_tree(tree.write().unwrap()).unwrap();
        let signature = git2::Signature::now("t", "t@example.com").unwrap();
        let parents: Vec<_> = parent.iter().collect();
        origin
            .commit(
                Some("refs/heads/main"),
                &signature,
                &signature,
                name,
                &tree,
                &parents,
            )
            .unwrap()
    }

    fn pack_count(mirror: &Repository) -> usize {
        packs_in(&mirror.path().join("objects").join("pack"))
            .unwrap()
            .len()
    }

    #[test]
    fn fetches_keep_the_packs_few_and_every_object() {
        let dir = tempfile::tempdir().unwrap();
        let origin = Repository::init(dir.path().join("origin")).unwrap();
        let config = crate::config::RepoConfig {
            url: dir.path().join("origin").display().to_string(),
            branch: "main".into(),
            jobs_dir: "jobs".into(),
            poll_interval: std::time::Duration::from_secs(30),
            auth: crate::config::RepoAuth::default(),
            watch: false,
            remote: crate::git::Remote::Local,
            fetch_timeout: std::time::Duration::from_secs(5),
            ca_file: None,
        };
        let source = GitSource::open(&dir.path().join("mirror.git"), &config).unwrap();
        let mut most = 0;
        for n in 0..PACKS_BEFORE_REPACK + 4 {
            let head = commit_file(&origin, &format!("spec-{n}.yaml"), &format!("n: {n}\n"));
            assert_eq!(source.fetch().unwrap(), head);
            most = most.max(pack_count(source.repo()));
        }
        assert_eq!(
            most, PACKS_BEFORE_REPACK,
            "a fetch folds the packs past the limit"
        );
        assert!(pack_count(source.repo()) < PACKS_BEFORE_REPACK);
        let mirror = Repository::open_bare(dir.path().join("mirror.git")).unwrap();
        assert_eq!(all_objects(&mirror), all_objects(&origin));
    }

    #[test]
    fn an_object_no_ref_reaches_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = Repository::init_bare(dir.path().join("mirror.git")).unwrap();
        let first = commit_file(&mirror, "a.yaml", "a: 1\n");
        let second = commit_file(&mirror, "b.yaml", "b: 1\n");
        // Packs of their own, then the branch moves back, as after a force-push.
        for commit in [first, second] {
            let mut builder = mirror.packbuilder().unwrap();
            let mut walk = mirror.revwalk().unwrap();
            walk.push(commit).unwrap();
            builder.insert_walk(&mut walk).unwrap();
            builder
                .write(&mirror.path().join("objects").join("pack"), 0)
                .unwrap();
        }
        mirror
            .reference("refs/heads/main", first, true, "force-push")
            .unwrap();
        let objects = all_objects(&mirror);
        // A pack another process is still writing: its data is there, its index not yet.
        let unfinished = mirror
            .path()
            .join("objects/pack/pack-0123456789012345678901234567890123456789.pack");
        std::fs::write(&unfinished, b"PACK").unwrap();
        assert_eq!(fold_packs(&mirror, 2).unwrap(), 0, "within the limit");
        assert_eq!(fold_packs(&mirror, 1).unwrap(), 2);
        assert_eq!(pack_count(&mirror), 1);
        assert!(unfinished.exists(), "an unfinished pack is left alone");
        let reopened = Repository::open_bare(mirror.path()).unwrap();
        assert_eq!(all_objects(&reopened), objects);
        assert!(reopened.find_commit(second).is_ok());
    }
}
