//! Keeps the mirror's packs few.
//!
//! Every fetch that brings commits leaves one more pack in the mirror, and nothing of libgit2's
//! repacks them. Each reader opens every pack index, and a lookup may look in all of them: on a
//! mirror of 1,000 specs `plan` took 21–23 ms with up to 14 packs and 32–34 ms with 73, so a
//! service that fetched for months would slow every pass and every command beside it.
//!
//! Folding every object took about 90 ms on that mirror, in whichever command's fetch crossed the
//! limit. The packs fetches leave are small beside the first one, so a fold leaves the largest
//! pack alone while the others together stay under half its size, and folds only them: a few
//! hundred objects at most. Only when they outgrow that is everything folded into one pack again,
//! which keeps the number of folds of any one object small, as git's geometric repacking does.

use std::path::{Path, PathBuf};

use git2::{Oid, Repository};

/// More packs than this, and a fetch folds them.
pub(super) const PACKS_BEFORE_REPACK: usize = 16;

/// Once `repo` has more than `limit` packs, folds the objects of every pack but the largest into
/// one pack (or of every pack, once the others together are half its size or more) and removes
/// the packs they were in. Nothing is dropped, not even objects no ref reaches: a watermark that a
/// force-push left behind must still be found in the mirror. Returns how many packs were removed.
///
/// Runs in the fetch's turn, so no fetch of this process adds a pack meanwhile. A pack another
/// process is still writing is left alone: only packs with both their index and their data are
/// folded. A reader that has a removed pack open keeps reading it (the file lives until it is
/// closed), and one that has not looked in it yet finds its objects in the new pack when libgit2
/// rescans the folder; a command beside the service that was between the two may fail its read
/// once, and succeeds when run again.
pub(super) fn fold_packs(repo: &Repository, limit: usize) -> Result<usize, RepackError> {
    let pack_dir = repo.path().join("objects").join("pack");
    let mut before = packs_in(&pack_dir)?;
    if before.len() <= limit {
        return Ok(0);
    }
    let git = |action: &'static str| move |source: git2::Error| RepackError::Git { action, source };
    let size = |stem: &String| {
        let file = pack_dir.join(format!("{stem}.pack"));
        std::fs::metadata(&file)
            .map(|metadata| metadata.len())
            .map_err(|source| RepackError::File { file, source })
    };
    let mut sizes = Vec::with_capacity(before.len());
    for stem in &before {
        sizes.push((size(stem)?, stem.clone()));
    }
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    let others: u64 = sizes[1..].iter().map(|(size, _)| size).sum();
    let mut builder = repo.packbuilder().map_err(git("start a pack"))?;
    if others.saturating_mul(2) < sizes[0].0 {
        before = sizes
            .split_off(1)
            .into_iter()
            .map(|(_, stem)| stem)
            .collect();
        for stem in &before {
            for oid in index_oids(&pack_dir.join(format!("{stem}.idx")))? {
                builder
                    .insert_object(oid, None)
                    .map_err(git("add an object"))?;
            }
        }
    } else {
        // Commits and trees from every ref first: the walk names each blob by its path, which
        // puts versions of the same file side by side for delta compression.
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
                Err(source) => return Err(RepackError::File { file, source }),
            }
        }
        removed += 1;
    }
    repo.odb()
        .and_then(|odb| odb.refresh())
        .map_err(git("rescan the packs"))?;
    Ok(removed)
}

/// The objects a version-2 pack index lists.
pub(super) fn index_oids(file: &Path) -> Result<Vec<Oid>, RepackError> {
    let bad = |reason: &str| RepackError::BadIndex {
        file: file.to_path_buf(),
        reason: reason.to_string(),
    };
    let index = std::fs::read(file).map_err(|source| RepackError::File {
        file: file.to_path_buf(),
        source,
    })?;
    // Magic, version, 256 cumulative counts (the last is the total), then the sorted ids.
    const OIDS_AT: usize = 8 + 256 * 4;
    if index.len() < OIDS_AT || index[..8] != [0xff, b't', b'O', b'c', 0, 0, 0, 2] {
        return Err(bad("not a version-2 pack index"));
    }
    let count = u32::from_be_bytes([
        index[OIDS_AT - 4],
        index[OIDS_AT - 3],
        index[OIDS_AT - 2],
        index[OIDS_AT - 1],
    ]) as usize;
    let ids = index
        .get(OIDS_AT..OIDS_AT + count * 20)
        .ok_or_else(|| bad("shorter than its object count"))?;
    ids.chunks_exact(20)
        .map(|id| Oid::from_bytes(id).map_err(|_| bad("an object id cannot be read")))
        .collect()
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
    /// A pack could not be read or removed.
    #[error("{}: {source}", .file.display())]
    File {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A pack index is not one this code reads.
    #[error("pack index {}: {reason}", .file.display())]
    BadIndex {
        /// The index.
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// libgit2 wrote the pack but did not name it.
    #[error("the folded pack has no name")]
    Unnamed,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::{GitSource, all_objects};
    use git2::Oid;

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

    /// Packs one commit's objects that `mirror` does not have packed yet into a pack of its own.
    fn pack_commit(mirror: &Repository, commit: Oid, hide: Option<Oid>) {
        let mut builder = mirror.packbuilder().unwrap();
        let mut walk = mirror.revwalk().unwrap();
        walk.push(commit).unwrap();
        if let Some(hidden) = hide {
            walk.hide(hidden).unwrap();
        }
        builder.insert_walk(&mut walk).unwrap();
        builder
            .write(&mirror.path().join("objects").join("pack"), 0)
            .unwrap();
    }

    #[test]
    fn small_packs_fold_beside_the_largest_until_they_outgrow_half_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = Repository::init_bare(dir.path().join("mirror.git")).unwrap();
        let mut head = None;
        for n in 0..200 {
            let text: String = (0..40)
                .map(|line| format!("{n}-{line}-{}\n", n * line))
                .collect();
            head = Some(commit_file(&mirror, &format!("spec-{n}.yaml"), &text));
        }
        let head = head.unwrap();
        pack_commit(&mirror, head, None);
        let base = packs_in(&mirror.path().join("objects/pack")).unwrap();
        let mut parent = head;
        for n in 0..4 {
            let next = commit_file(&mirror, &format!("small-{n}.yaml"), &format!("n: {n}\n"));
            pack_commit(&mirror, next, Some(parent));
            parent = next;
        }
        // A commit a force-push left behind, in a small pack: kept by the fold.
        let left_behind = commit_file(&mirror, "gone.yaml", "gone: 1\n");
        pack_commit(&mirror, left_behind, Some(parent));
        mirror
            .reference("refs/heads/main", parent, true, "force-push")
            .unwrap();
        let objects = all_objects(&mirror);

        assert_eq!(fold_packs(&mirror, 3).unwrap(), 5, "the five small packs");
        let after = packs_in(&mirror.path().join("objects/pack")).unwrap();
        assert_eq!(after.len(), 2);
        assert!(after.contains(&base[0]), "the largest pack is left alone");
        let reopened = Repository::open_bare(mirror.path()).unwrap();
        assert_eq!(all_objects(&reopened), objects);
        assert!(reopened.find_commit(left_behind).is_ok());

        // Small packs as large as the first together: everything is folded into one.
        for n in 0..3 {
            let text: String = (0..4000)
                .map(|line| format!("{n}:{line}:{}\n", n ^ line))
                .collect();
            let next = commit_file(&mirror, &format!("large-{n}.yaml"), &text);
            pack_commit(&mirror, next, Some(parent));
            parent = next;
        }
        let objects = all_objects(&mirror);
        assert_eq!(fold_packs(&mirror, 3).unwrap(), 5);
        assert_eq!(pack_count(&mirror), 1);
        assert_eq!(
            all_objects(&Repository::open_bare(mirror.path()).unwrap()),
            objects
        );
    }

    #[test]
    fn an_object_no_ref_reaches_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = Repository::init_bare(dir.path().join("mirror.git")).unwrap();
        let first = commit_file(&mirror, "a.yaml", "a: 1\n");
        let second = commit_file(&mirror, "b.yaml", "b: 1\n");
        // Packs of their own (of about the same size: both are folded), then the branch moves
        // back, as after a force-push.
        pack_commit(&mirror, first, None);
        pack_commit(&mirror, second, Some(first));
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
