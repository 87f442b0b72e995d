//! Blobs read as streams, checked against their object id, including whole blobs in pack files.
//!
//! libgit2 streams only loose objects; a packed blob it reads whole, so a 400 MB JAR cost its size
//! in memory (twice, while hashed). Most JARs in a mirror are packed (every fetch writes a pack),
//! and large random-looking files are stored without deltas, so the pack case is read here: find
//! the object's offset in a version-2 pack index, parse the object header, inflate as the caller
//! reads. Deltified objects are read whole by libgit2, as before.
//!
//! Every stream, whatever its source, is checked while it is read: exactly the declared size, and
//! SHA-1 of `blob <size>\0<content>` equal to the object id. A mismatch is an error from the last
//! `read`, so a reader that reads to the end (hashing, copying) never sees a clean end of bad data.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use git2::{ObjectType, Odb, Oid, Repository};
use sha1::{Digest, Sha1};

/// Why a blob could not be opened for reading.
#[derive(Debug, thiserror::Error)]
pub enum BlobStreamError {
    /// The object database refused (not found, unreadable).
    #[error("object {oid}: {source}")]
    Object {
        /// The object.
        oid: Oid,
        /// libgit2's error.
        source: git2::Error,
    },
    /// The object is not a blob.
    #[error("object {oid} is a {kind}, not a blob")]
    NotABlob {
        /// The object.
        oid: Oid,
        /// What it is.
        kind: String,
    },
    /// The object is larger than the caller accepts; nothing was read.
    #[error("object {oid} is {size} bytes, more than the limit of {limit}")]
    TooLarge {
        /// The object.
        oid: Oid,
        /// Its declared size.
        size: u64,
        /// The caller's limit.
        limit: u64,
    },
    /// A pack file or its index could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A pack index is not a well-formed version-2 index.
    #[error("pack index {path}: {reason}")]
    BadIndex {
        /// The index file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A pack file does not hold a well-formed object where its index says.
    #[error("pack {path} at offset {offset}: {reason}")]
    BadPack {
        /// The pack file.
        path: PathBuf,
        /// The object's offset.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

/// Why a stream ended in error although its source read fine: the bytes are not the object's.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BlobCheckError {
    /// More or fewer bytes than the object header declared.
    #[error("object {oid}: {got} bytes instead of the declared {declared}")]
    Size {
        /// The object.
        oid: Oid,
        /// The declared size.
        declared: u64,
        /// How many bytes came (at least).
        got: u64,
    },
    /// The content does not hash to the object id.
    #[error("object {oid}: content hashes to {actual}")]
    Hash {
        /// The object.
        oid: Oid,
        /// SHA-1 of what was read.
        actual: String,
    },
}

/// Opens blobs of one repository as checked streams.
pub struct BlobStreams<'r> {
    repo: &'r Repository,
    odb: Odb<'r>,
    pack_dir: PathBuf,
}

impl<'r> BlobStreams<'r> {
    /// Prepares to read blobs of `repo` (its own object directory; alternates are read whole).
    pub fn new(repo: &'r Repository) -> Result<BlobStreams<'r>, git2::Error> {
        Ok(BlobStreams {
            repo,
            odb: repo.odb()?,
            pack_dir: repo.path().join("objects").join("pack"),
        })
    }

    /// The blob `oid` as a checked stream, streamed when it is loose or a whole object in a pack,
    /// read whole by libgit2 otherwise. Refuses blobs declared larger than `limit`.
    pub fn open(&self, oid: Oid, limit: u64) -> Result<BlobReader<'_>, BlobStreamError> {
        if let Some(stream) = self.open_stream(oid, limit)? {
            return Ok(stream);
        }
        // The size before the read: a delta chain is resolved whole, so it must be small enough.
        let (size, kind) = self
            .odb
            .read_header(oid)
            .map_err(|source| BlobStreamError::Object { oid, source })?;
        if kind != ObjectType::Blob {
            return Err(BlobStreamError::NotABlob {
                oid,
                kind: kind.str().to_string(),
            });
        }
        check_limit(oid, size as u64, limit)?;
        let blob = self
            .repo
            .find_blob(oid)
            .map_err(|source| BlobStreamError::Object { oid, source })?;
        let size = blob.size() as u64;
        Ok(BlobReader {
            source: Source::Whole(WholeBlob { blob, read: 0 }),
            check: Check::new(oid, size),
        })
    }

    /// Like [`open`](Self::open), but `None` when only a whole read would do (a deltified or
    /// foreign object): the caller decides whether that is acceptable.
    pub fn open_stream(
        &self,
        oid: Oid,
        limit: u64,
    ) -> Result<Option<BlobReader<'_>>, BlobStreamError> {
        // libgit2 answers NotFound for anything not loose: its pack backend has no stream.
        if let Ok((reader, size, kind)) = self.odb.reader(oid) {
            if kind != ObjectType::Blob {
                return Err(BlobStreamError::NotABlob {
                    oid,
                    kind: kind.str().to_string(),
                });
            }
            check_limit(oid, size as u64, limit)?;
            return Ok(Some(BlobReader {
                source: Source::Loose(reader),
                check: Check::new(oid, size as u64),
            }));
        }
        match find_in_packs(&self.pack_dir, oid)? {
            Some((pack, offset)) => open_packed(&pack, offset, oid, limit),
            None => Ok(None),
        }
    }
}

fn check_limit(oid: Oid, size: u64, limit: u64) -> Result<(), BlobStreamError> {
    if size > limit {
        return Err(BlobStreamError::TooLarge { oid, size, limit });
    }
    Ok(())
}

/// A blob being read; fails its last `read` unless the content is exactly the object's.
pub struct BlobReader<'o> {
    source: Source<'o>,
    check: Check,
}

enum Source<'o> {
    Loose(git2::OdbReader<'o>),
    Packed(Box<flate2::bufread::ZlibDecoder<BufReader<File>>>),
    Whole(WholeBlob<'o>),
}

struct WholeBlob<'o> {
    blob: git2::Blob<'o>,
    read: usize,
}

impl BlobReader<'_> {
    /// Whether the content arrives in pieces (loose or packed) rather than from one whole read.
    pub fn is_streamed(&self) -> bool {
        !matches!(self.source, Source::Whole(_))
    }
}

impl Read for BlobReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(error) = self.check.failed() {
            return Err(error);
        }
        if self.check.done {
            return Ok(0);
        }
        let read = match &mut self.source {
            Source::Loose(reader) => reader.read(buf)?,
            Source::Packed(reader) => reader.read(buf)?,
            Source::Whole(whole) => {
                let rest = &whole.blob.content()[whole.read..];
                let n = rest.len().min(buf.len());
                buf[..n].copy_from_slice(&rest[..n]);
                whole.read += n;
                n
            }
        };
        self.check.feed(&buf[..read])?;
        Ok(read)
    }
}

/// The running size and SHA-1 of a blob's content.
struct Check {
    oid: Oid,
    declared: u64,
    seen: u64,
    sha1: Sha1,
    done: bool,
    failure: Option<BlobCheckError>,
}

impl Check {
    fn new(oid: Oid, declared: u64) -> Check {
        let mut sha1 = Sha1::new();
        // Git's object id covers this header, so the type and size are checked with the content.
        sha1.update(format!("blob {declared}\0").as_bytes());
        Check {
            oid,
            declared,
            seen: 0,
            sha1,
            done: false,
            failure: None,
        }
    }

    /// Counts and hashes a piece; an empty piece is the end, where size and hash must match.
    fn feed(&mut self, piece: &[u8]) -> io::Result<()> {
        if piece.is_empty() {
            self.done = true;
            if self.seen != self.declared {
                return self.fail(BlobCheckError::Size {
                    oid: self.oid,
                    declared: self.declared,
                    got: self.seen,
                });
            }
            let actual = std::mem::take(&mut self.sha1).finalize();
            if actual.as_slice() != self.oid.as_bytes() {
                return self.fail(BlobCheckError::Hash {
                    oid: self.oid,
                    actual: hex::encode(actual),
                });
            }
            return Ok(());
        }
        self.seen += piece.len() as u64;
        if self.seen > self.declared {
            // Stop here: an inflater that never ends must not be read to its end.
            return self.fail(BlobCheckError::Size {
                oid: self.oid,
                declared: self.declared,
                got: self.seen,
            });
        }
        self.sha1.update(piece);
        Ok(())
    }

    fn fail(&mut self, failure: BlobCheckError) -> io::Result<()> {
        self.failure = Some(failure.clone());
        Err(io::Error::new(io::ErrorKind::InvalidData, failure))
    }

    /// A failed stream keeps failing: a retrying caller must not read a clean end after it.
    fn failed(&self) -> Option<io::Error> {
        self.failure
            .as_ref()
            .map(|f| io::Error::new(io::ErrorKind::InvalidData, f.clone()))
    }
}

// Pack index, version 2 (gitformat-pack(5)).

const INDEX_MAGIC: [u8; 4] = [0xff, b't', b'O', b'c'];
const FANOUT_AT: u64 = 8;
const OIDS_AT: u64 = FANOUT_AT + 256 * 4;
/// The MSB of a 4-byte offset says the rest indexes the 8-byte offset table.
const LARGE_OFFSET: u32 = 0x8000_0000;

/// Random access to an index's bytes: a file in use, a buffer in tests.
trait ReadAt {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let bytes = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

/// Why an index lookup failed: the bytes could not be read, or they are not an index.
enum IndexError {
    Io(io::Error),
    Bad(String),
}

impl From<io::Error> for IndexError {
    fn from(e: io::Error) -> IndexError {
        IndexError::Io(e)
    }
}

fn read_u32(index: &(impl ReadAt + ?Sized), at: u64) -> Result<u32, IndexError> {
    let mut word = [0u8; 4];
    index.read_exact_at(&mut word, at)?;
    Ok(u32::from_be_bytes(word))
}

/// The pack offset of `oid` in a version-2 index of `len` bytes, by binary search over the
/// sorted object ids; only the header, two fanout entries and the probed ids are read.
fn index_lookup(
    index: &(impl ReadAt + ?Sized),
    len: u64,
    oid: &[u8; 20],
) -> Result<Option<u64>, IndexError> {
    let mut header = [0u8; 8];
    index.read_exact_at(&mut header, 0)?;
    if header[..4] != INDEX_MAGIC {
        return Err(IndexError::Bad("not a version-2 pack index".into()));
    }
    let version = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    if version != 2 {
        return Err(IndexError::Bad(format!("version {version}, expected 2")));
    }
    let count = u64::from(read_u32(index, FANOUT_AT + 255 * 4)?);
    // Ids, CRCs, 4-byte offsets and the two trailing checksums at least.
    if len < OIDS_AT + count * (20 + 4 + 4) + 40 {
        return Err(IndexError::Bad(format!(
            "{len} bytes is too short for {count} objects"
        )));
    }
    let first = usize::from(oid[0]);
    let mut low = match first {
        0 => 0,
        _ => u64::from(read_u32(index, FANOUT_AT + (first as u64 - 1) * 4)?),
    };
    let mut high = u64::from(read_u32(index, FANOUT_AT + first as u64 * 4)?);
    if low > high || high > count {
        return Err(IndexError::Bad("fanout table is not monotonic".into()));
    }
    let mut probe = [0u8; 20];
    let position = loop {
        if low >= high {
            return Ok(None);
        }
        let middle = low + (high - low) / 2;
        index.read_exact_at(&mut probe, OIDS_AT + middle * 20)?;
        match probe.cmp(oid) {
            std::cmp::Ordering::Equal => break middle,
            std::cmp::Ordering::Less => low = middle + 1,
            std::cmp::Ordering::Greater => high = middle,
        }
    };
    let offsets_at = OIDS_AT + count * (20 + 4);
    let small = read_u32(index, offsets_at + position * 4)?;
    if small & LARGE_OFFSET == 0 {
        return Ok(Some(u64::from(small)));
    }
    let large_at = offsets_at + count * 4 + u64::from(small & !LARGE_OFFSET) * 8;
    if large_at + 8 + 40 > len {
        return Err(IndexError::Bad(format!(
            "large offset entry {} is past the table",
            small & !LARGE_OFFSET
        )));
    }
    let mut large = [0u8; 8];
    index.read_exact_at(&mut large, large_at)?;
    Ok(Some(u64::from_be_bytes(large)))
}

/// The pack holding `oid` and its offset there, searching every index in `pack_dir`.
fn find_in_packs(pack_dir: &Path, oid: Oid) -> Result<Option<(PathBuf, u64)>, BlobStreamError> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BlobStreamError::Io { path, source }
    };
    let entries = match std::fs::read_dir(pack_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(pack_dir)(e)),
    };
    let mut indexes = Vec::new();
    for entry in entries {
        let path = entry.map_err(io_error(pack_dir))?.path();
        if path.extension().is_some_and(|e| e == "idx") {
            indexes.push(path);
        }
    }
    // Sorted so that a repository with the object in two packs always reads the same one.
    indexes.sort();
    // A SHA-256 repository has other indexes: leave it to libgit2.
    let Ok(key) = <&[u8; 20]>::try_from(oid.as_bytes()) else {
        return Ok(None);
    };
    for index_path in indexes {
        let file = match File::open(&index_path) {
            Ok(file) => file,
            // A concurrent repack removed it; the object is in the new pack or read whole.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error(&index_path)(e)),
        };
        let len = file.metadata().map_err(io_error(&index_path))?.len();
        match index_lookup(&file, len, key) {
            Ok(Some(offset)) => return Ok(Some((index_path.with_extension("pack"), offset))),
            Ok(None) => {}
            Err(IndexError::Io(source)) if source.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(BlobStreamError::BadIndex {
                    path: index_path,
                    reason: "truncated".into(),
                });
            }
            Err(IndexError::Io(source)) => return Err(io_error(&index_path)(source)),
            Err(IndexError::Bad(reason)) => {
                return Err(BlobStreamError::BadIndex {
                    path: index_path,
                    reason,
                });
            }
        }
    }
    Ok(None)
}

// Pack file objects.

const OBJ_BLOB: u8 = 3;
const OBJ_OFS_DELTA: u8 = 6;
const OBJ_REF_DELTA: u8 = 7;

/// The type and inflated size of the object header at the reader's position.
fn read_object_header(reader: &mut impl Read) -> Result<(u8, u64), String> {
    let mut next = || -> Result<u8, String> {
        let mut byte = [0u8; 1];
        reader
            .read_exact(&mut byte)
            .map_err(|e| format!("object header: {e}"))?;
        Ok(byte[0])
    };
    let first = next()?;
    let kind = (first >> 4) & 0x07;
    let mut size = u64::from(first & 0x0f);
    let mut shift = 4;
    let mut more = first & 0x80 != 0;
    while more {
        let byte = next()?;
        // 4 + 7 * 8 = 60 bits: any longer would overflow u64, which no real size needs.
        if shift > 57 {
            return Err("object size does not fit in 64 bits".into());
        }
        size |= u64::from(byte & 0x7f) << shift;
        shift += 7;
        more = byte & 0x80 != 0;
    }
    Ok((kind, size))
}

/// Opens the object at `offset` in `pack` for inflating if it is a whole blob; `None` for a delta.
fn open_packed(
    pack: &Path,
    offset: u64,
    oid: Oid,
    limit: u64,
) -> Result<Option<BlobReader<'static>>, BlobStreamError> {
    let bad = |reason: String| BlobStreamError::BadPack {
        path: pack.to_path_buf(),
        offset,
        reason,
    };
    let io_error = |source| BlobStreamError::Io {
        path: pack.to_path_buf(),
        source,
    };
    let mut file = match File::open(pack) {
        Ok(file) => file,
        // Repacked since the index was read: libgit2 finds it wherever it went.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(e)),
    };
    let len = file.metadata().map_err(io_error)?.len();
    let mut header = [0u8; 8];
    file.read_exact(&mut header).map_err(io_error)?;
    if &header[..4] != b"PACK" || !matches!(header[7], 2 | 3) || header[4..7] != [0, 0, 0] {
        return Err(bad("not a version-2 or -3 pack file".into()));
    }
    // The 12-byte header before, the 20-byte checksum after.
    if offset < 12 || offset >= len.saturating_sub(20) {
        return Err(bad(format!("outside the {len}-byte pack")));
    }
    file.seek(SeekFrom::Start(offset)).map_err(io_error)?;
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    let (kind, size) = read_object_header(&mut reader).map_err(bad)?;
    match kind {
        OBJ_BLOB => {}
        OBJ_OFS_DELTA | OBJ_REF_DELTA => return Ok(None),
        other => {
            return Err(BlobStreamError::NotABlob {
                oid,
                kind: format!("pack object of type {other}"),
            });
        }
    }
    check_limit(oid, size, limit)?;
    Ok(Some(BlobReader {
        source: Source::Packed(Box::new(flate2::bufread::ZlibDecoder::new(reader))),
        check: Check::new(oid, size),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) -> String {
        let output = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(["-c", "commit.gpgsign=false", "-c", "gc.auto=0"])
            .args(args)
            .current_dir(dir)
            .output()
            .expect("git runs");
        assert!(
            output.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .expect("utf-8")
            .trim()
            .to_string()
    }

    fn git_bytes(dir: &Path, args: &[&str]) -> Vec<u8> {
        let output = Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("git runs");
        assert!(output.status.success());
        output.stdout
    }

    /// Deterministic bytes that do not compress or delta against each other (xorshift).
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        path: PathBuf,
        big: Oid,
        twin: Oid,
        small: Oid,
        empty: Oid,
        delta: Oid,
    }

    /// A repository whose objects are all in one pack: a 2 MB blob, small ones, an empty one, and a
    /// blob that git stores as a delta against its previous version.
    fn packed_repo() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        git(&path, &["init", "-q", "-b", "main"]);
        std::fs::write(path.join("big.jar"), noise(2 * 1024 * 1024, 1)).expect("write");
        std::fs::write(path.join("twin.jar"), noise(2 * 1024 * 1024, 5)).expect("write");
        std::fs::write(path.join("small.bin"), noise(300, 2)).expect("write");
        std::fs::write(path.join("empty"), b"").expect("write");
        let base = noise(64 * 1024, 3);
        std::fs::write(path.join("grows.bin"), &base).expect("write");
        git(&path, &["add", "."]);
        git(&path, &["commit", "-q", "-m", "one"]);
        let mut grown = base.clone();
        grown.extend_from_slice(b"a small change at the end");
        std::fs::write(path.join("grows.bin"), &grown).expect("write");
        git(&path, &["commit", "-q", "-am", "two"]);
        git(
            &path,
            &[
                "repack",
                "-q",
                "-a",
                "-d",
                "-f",
                "--depth=50",
                "--window=10",
            ],
        );
        git(&path, &["prune-packed"]);
        let oid = |spec: &str| Oid::from_str(&git(&path, &["rev-parse", spec])).expect("oid");
        let big = oid("HEAD:big.jar");
        let twin = oid("HEAD:twin.jar");
        let small = oid("HEAD:small.bin");
        let empty = oid("HEAD:empty");
        // git deltas the older version against the newer one, so find whichever is the delta.
        let older = oid("HEAD~1:grows.bin");
        let newer = oid("HEAD:grows.bin");
        let verify = git(&path, &["verify-pack", "-v", &pack_index(&path)]);
        let delta = [older, newer]
            .into_iter()
            .find(|o| {
                verify
                    .lines()
                    .any(|l| l.starts_with(&o.to_string()) && l.split_whitespace().count() > 5)
            })
            .expect("one version of grows.bin is stored as a delta");
        Fixture {
            _dir: dir,
            path,
            big,
            twin,
            small,
            empty,
            delta,
        }
    }

    fn pack_index(repo: &Path) -> String {
        let dir = repo.join(".git/objects/pack");
        let mut found = std::fs::read_dir(&dir)
            .expect("pack dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "idx"));
        let index = found.next().expect("one pack index");
        assert!(found.next().is_none(), "exactly one pack");
        index.display().to_string()
    }

    fn read_all(reader: &mut impl Read) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        reader.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn packed_whole_blobs_stream_with_the_bytes_git_has() {
        let fixture = packed_repo();
        let repo = Repository::open(&fixture.path).expect("open");
        let streams = BlobStreams::new(&repo).expect("odb");
        for oid in [fixture.big, fixture.small, fixture.empty] {
            assert!(
                streams.odb.reader(oid).is_err(),
                "{oid} must be packed for this test"
            );
            let mut stream = streams
                .open_stream(oid, u64::MAX)
                .expect("opens")
                .expect("a whole blob in a pack streams");
            let expected = git_bytes(&fixture.path, &["cat-file", "blob", &oid.to_string()]);
            assert_eq!(read_all(&mut stream).expect("reads"), expected, "{oid}");
        }
    }

    #[test]
    fn deltas_fall_back_to_a_whole_read() {
        let fixture = packed_repo();
        let repo = Repository::open(&fixture.path).expect("open");
        let streams = BlobStreams::new(&repo).expect("odb");
        assert!(
            streams
                .open_stream(fixture.delta, u64::MAX)
                .expect("opens")
                .is_none()
        );
        let mut whole = streams.open(fixture.delta, u64::MAX).expect("opens");
        assert!(!whole.is_streamed());
        let expected = git_bytes(
            &fixture.path,
            &["cat-file", "blob", &fixture.delta.to_string()],
        );
        assert_eq!(read_all(&mut whole).expect("reads"), expected);
    }

    #[test]
    fn loose_blobs_stream_and_are_checked_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        git(dir.path(), &["init", "-q"]);
        std::fs::write(dir.path().join("loose"), noise(10_000, 4)).expect("write");
        let oid = Oid::from_str(&git(dir.path(), &["hash-object", "-w", "loose"])).expect("oid");
        let repo = Repository::open(dir.path()).expect("open");
        let streams = BlobStreams::new(&repo).expect("odb");
        let mut stream = streams.open(oid, u64::MAX).expect("opens");
        assert!(stream.is_streamed());
        assert_eq!(read_all(&mut stream).expect("reads"), noise(10_000, 4));
    }

    #[test]
    fn the_limit_is_checked_before_reading() {
        let fixture = packed_repo();
        let repo = Repository::open(&fixture.path).expect("open");
        let streams = BlobStreams::new(&repo).expect("odb");
        let error = streams
            .open(fixture.big, 1024 * 1024)
            .err()
            .expect("refused");
        assert!(
            matches!(error, BlobStreamError::TooLarge { size, .. } if size == 2 * 1024 * 1024),
            "{error}"
        );
        let error = streams.open(fixture.delta, 1024).err().expect("refused");
        assert!(matches!(error, BlobStreamError::TooLarge { .. }), "{error}");
    }

    /// A column of git's own listing of the pack: `id type size size-in-pack offset [depth base]`.
    fn listed(fixture: &Fixture, oid: Oid, column: usize) -> u64 {
        let index = pack_index(&fixture.path);
        let verify = git(&fixture.path, &["verify-pack", "-v", &index]);
        let line = verify
            .lines()
            .find(|l| l.starts_with(&oid.to_string()))
            .expect("listed");
        let field = line.split_whitespace().nth(column).expect("column");
        field.parse().expect("number")
    }

    fn offset_of(fixture: &Fixture, oid: Oid) -> u64 {
        listed(fixture, oid, 4)
    }

    fn size_in_pack(fixture: &Fixture, oid: Oid) -> u64 {
        listed(fixture, oid, 3)
    }

    /// Changes a file git wrote read-only.
    fn rewrite(path: &Path, change: impl FnOnce(&mut Vec<u8>)) {
        use std::os::unix::fs::PermissionsExt;
        let mut bytes = std::fs::read(path).expect("read");
        change(&mut bytes);
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::fs::write(path, bytes).expect("write");
    }

    fn flip_byte(fixture: &Fixture, at: u64) {
        let pack = PathBuf::from(pack_index(&fixture.path)).with_extension("pack");
        rewrite(&pack, |bytes| bytes[at as usize] ^= 0x01);
    }

    #[test]
    fn an_index_pointing_at_other_bytes_fails_the_read() {
        // Both blobs are the same size and intact zlib: only the SHA-1 tells them apart.
        let fixture = packed_repo();
        let index = PathBuf::from(pack_index(&fixture.path));
        rewrite(&index, |bytes| {
            let count = u32::from_be_bytes(bytes[1028..1032].try_into().expect("4")) as usize;
            let position = |oid: Oid| {
                (0..count)
                    .find(|i| {
                        let at = OIDS_AT as usize + i * 20;
                        &bytes[at..at + 20] == oid.as_bytes()
                    })
                    .expect("indexed")
            };
            let offsets = OIDS_AT as usize + count * 24;
            let (a, b) = (position(fixture.big), position(fixture.twin));
            for k in 0..4 {
                bytes.swap(offsets + a * 4 + k, offsets + b * 4 + k);
            }
        });
        let error = streamed_error(&fixture, fixture.big, "twin's bytes are not big's");
        assert!(
            matches!(check_error(&error), BlobCheckError::Hash { .. }),
            "{error}"
        );
    }

    /// Streams `oid` (which must stream, not fall back) to its end and returns the error it must end with.
    fn streamed_error(fixture: &Fixture, oid: Oid, why: &str) -> io::Error {
        let repo = Repository::open(&fixture.path).expect("open");
        let streams = BlobStreams::new(&repo).expect("odb");
        let mut stream = streams
            .open_stream(oid, u64::MAX)
            .expect("opens")
            .expect("streams");
        read_all(&mut stream).expect_err(why)
    }

    fn check_error(error: &io::Error) -> &BlobCheckError {
        error
            .get_ref()
            .and_then(|e| e.downcast_ref::<BlobCheckError>())
            .unwrap_or_else(|| panic!("not a check error: {error}"))
    }

    #[test]
    fn a_corrupt_pack_fails_the_read_instead_of_giving_wrong_bytes() {
        let fixture = packed_repo();
        let at = offset_of(&fixture, fixture.big) + 1024 * 1024;
        flip_byte(&fixture, at);
        let repo = Repository::open(&fixture.path).expect("open");
        let streams = BlobStreams::new(&repo).expect("odb");
        let mut stream = streams
            .open_stream(fixture.big, u64::MAX)
            .expect("the header is intact")
            .expect("streams");
        // Usually zlib's own checksum notices first; the next test defeats it.
        read_all(&mut stream).expect_err("corrupt data is not read to a clean end");
        assert!(stream.read(&mut [0u8; 16]).is_err(), "and it stays failed");
    }

    fn adler32(bytes: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for &byte in bytes {
            a = (a + u32::from(byte)) % 65521;
            b = (b + a) % 65521;
        }
        (b << 16) | a
    }

    #[test]
    fn a_corrupt_pack_with_a_matching_zlib_checksum_fails_the_read() {
        let fixture = packed_repo();
        let offset = offset_of(&fixture, fixture.big) as usize;
        let end = offset + size_in_pack(&fixture, fixture.big) as usize;
        let pack = PathBuf::from(pack_index(&fixture.path)).with_extension("pack");
        rewrite(&pack, |bytes| {
            let mut header = &bytes[offset..];
            read_object_header(&mut header).expect("header");
            // After the object header and zlib's two-byte header: raw deflate, then Adler-32.
            let data_at = bytes.len() - header.len() + 2;
            // Random data is kept in deflate's stored blocks, where a flipped byte inflates cleanly
            // to a wrong byte; find such a byte (not a block header) well inside the object.
            let corrupted = (data_at + 1024 * 1024..data_at + 1024 * 1024 + 64)
                .find_map(|at| {
                    let mut copy = bytes[data_at..end - 4].to_vec();
                    copy[at - data_at] ^= 0x01;
                    let mut out = Vec::new();
                    flate2::read::DeflateDecoder::new(copy.as_slice())
                        .read_to_end(&mut out)
                        .ok()
                        .filter(|_| out.len() == 2 * 1024 * 1024)
                        .map(|_| (at, out))
                })
                .expect("a byte in a stored block");
            let (at, content) = corrupted;
            bytes[at] ^= 0x01;
            bytes[end - 4..end].copy_from_slice(&adler32(&content).to_be_bytes());
        });
        let error = streamed_error(&fixture, fixture.big, "zlib is satisfied, the SHA-1 is not");
        assert!(
            matches!(check_error(&error), BlobCheckError::Hash { .. }),
            "{error}"
        );
    }

    #[test]
    fn a_wrong_size_in_the_header_fails_the_read() {
        let fixture = packed_repo();
        // The small blob's header: 300 bytes needs two bytes; make the declared size 301.
        let at = offset_of(&fixture, fixture.small);
        flip_byte(&fixture, at);
        let error = streamed_error(&fixture, fixture.small, "300 bytes are not 301");
        assert!(
            matches!(
                check_error(&error),
                BlobCheckError::Size {
                    declared: 301,
                    got: 300,
                    ..
                }
            ),
            "{error}"
        );
    }

    /// A version-2 index of sorted `(id, offset)` entries, as git writes it.
    fn build_index(entries: &[([u8; 20], u64)]) -> Vec<u8> {
        let mut out = INDEX_MAGIC.to_vec();
        out.extend_from_slice(&2u32.to_be_bytes());
        for byte in 0..=255u8 {
            let count = entries.iter().filter(|(id, _)| id[0] <= byte).count() as u32;
            out.extend_from_slice(&count.to_be_bytes());
        }
        for (id, _) in entries {
            out.extend_from_slice(id);
        }
        for _ in entries {
            out.extend_from_slice(&0u32.to_be_bytes());
        }
        let mut large = Vec::new();
        for (_, offset) in entries {
            let small = match u32::try_from(*offset) {
                Ok(small) if small & LARGE_OFFSET == 0 => small,
                _ => {
                    large.push(*offset);
                    LARGE_OFFSET | (large.len() as u32 - 1)
                }
            };
            out.extend_from_slice(&small.to_be_bytes());
        }
        for offset in large {
            out.extend_from_slice(&offset.to_be_bytes());
        }
        out.extend_from_slice(&[0u8; 40]);
        out
    }

    fn lookup(index: &[u8], id: [u8; 20]) -> Option<u64> {
        match index_lookup(index, index.len() as u64, &id) {
            Ok(found) => found,
            Err(IndexError::Io(e)) => panic!("io: {e}"),
            Err(IndexError::Bad(reason)) => panic!("bad: {reason}"),
        }
    }

    #[test]
    fn index_offsets_small_and_large() {
        let id = |first: u8, last: u8| {
            let mut id = [0x55u8; 20];
            id[0] = first;
            id[19] = last;
            id
        };
        let entries = [
            (id(0x00, 1), 12),
            (id(0x10, 1), 0x7fff_ffff),
            (id(0x10, 2), 5 * 1024 * 1024 * 1024),
            (id(0x10, 3), 4096),
            (id(0xff, 9), 0x8000_0000),
        ];
        let index = build_index(&entries);
        for (id, offset) in entries {
            assert_eq!(lookup(&index, id), Some(offset));
        }
        assert_eq!(lookup(&index, id(0x10, 0)), None);
        assert_eq!(lookup(&index, id(0x10, 4)), None);
        assert_eq!(lookup(&index, id(0x20, 1)), None);
        assert_eq!(lookup(&index, id(0xff, 8)), None);
    }

    #[test]
    fn a_large_offset_past_the_table_is_refused() {
        let entry = ([0x42u8; 20], 5 * 1024 * 1024 * 1024);
        let mut index = build_index(&[entry]);
        // Point the entry at large-offset slot 7 of a one-slot table.
        let at = (OIDS_AT + 20 + 4) as usize;
        index[at..at + 4].copy_from_slice(&(LARGE_OFFSET | 7).to_be_bytes());
        assert!(matches!(
            index_lookup(index.as_slice(), index.len() as u64, &entry.0),
            Err(IndexError::Bad(_))
        ));
    }

    #[test]
    fn truncated_and_foreign_indexes_are_refused() {
        let entry = ([0x42u8; 20], 12);
        let index = build_index(&[entry]);
        let short = &index[..index.len() - 41];
        assert!(matches!(
            index_lookup(short, short.len() as u64, &entry.0),
            Err(IndexError::Bad(_))
        ));
        let mut v1 = index.clone();
        v1[..4].copy_from_slice(&[0, 0, 0, 1]);
        assert!(matches!(
            index_lookup(v1.as_slice(), v1.len() as u64, &entry.0),
            Err(IndexError::Bad(_))
        ));
    }

    #[test]
    fn object_header_sizes() {
        // type 3, size 300 = 0b1_0010_1100: low 4 bits 1100, then 0b10010.
        let mut bytes: &[u8] = &[0x80 | (3 << 4) | 0x0c, 0x12];
        assert_eq!(read_object_header(&mut bytes), Ok((3, 300)));
        let mut small: &[u8] = &[(6 << 4) | 0x05];
        assert_eq!(read_object_header(&mut small), Ok((6, 5)));
        let mut endless: &[u8] = &[0xff; 12];
        assert!(read_object_header(&mut endless).is_err());
        let mut cut: &[u8] = &[0x80 | (3 << 4)];
        assert!(read_object_header(&mut cut).is_err());
    }
}
