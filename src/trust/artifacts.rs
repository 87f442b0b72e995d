//! JAR checks: a size-limited streaming hash, the pinned sha256, and the detached SSH signature.

use std::io::Read;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256, Sha512};

use super::{AllowedSigners, SignatureError, SshSignature, Verified, verify_parsed};

/// Both digests of one read of a JAR (sha256 for pins and records, sha512 for ssh-keygen's default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JarDigest {
    /// Lower-case hex SHA-256.
    pub sha256: String,
    /// Raw SHA-256.
    pub sha256_raw: Vec<u8>,
    /// Raw SHA-512.
    pub sha512_raw: Vec<u8>,
    /// Size in bytes.
    pub size: u64,
}

/// Why a JAR was refused.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// Over the size limit.
    #[error("{path}: larger than the limit of {limit} bytes")]
    TooLarge {
        /// The artifact.
        path: String,
        /// The limit.
        limit: u64,
    },
    /// Reading failed.
    #[error("{path}: {source}")]
    Io {
        /// The artifact.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not a ZIP/JAR file.
    #[error("{path}: not a JAR (no ZIP header)")]
    NotAJar {
        /// The artifact.
        path: String,
    },
    /// The content does not match the spec's pin.
    #[error("{path}: sha256 is {actual}, but the spec pins {expected}")]
    DigestMismatch {
        /// The artifact.
        path: String,
        /// Pinned.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// A signature is required and absent.
    #[error("{path}: no detached signature {path}.sig, and one is required ({why})")]
    SignatureMissing {
        /// The artifact.
        path: String,
        /// Which policy requires it.
        why: &'static str,
    },
    /// The signature failed.
    #[error("{path}.sig: {source}")]
    Signature {
        /// The artifact.
        path: String,
        /// Why.
        source: Box<SignatureError>,
    },
}

/// Hashes a JAR as a stream, refusing more than `limit` bytes.
pub fn hash_jar(mut reader: impl Read, path: &str, limit: u64) -> Result<JarDigest, ArtifactError> {
    let mut sha256 = Sha256::new();
    let mut sha512 = Sha512::new();
    // Smaller than the JARs it reads, since a buffer is paged in whole when calloc takes it from
    // the heap: 256 KiB were 64 page faults of `plan` for a JAR of 10 bytes.
    let mut buffer = vec![0u8; 64 * 1024];
    let mut size: u64 = 0;
    let mut head = [0u8; 4];
    loop {
        let read = reader
            .read(&mut buffer)
            .map_err(|source| ArtifactError::Io {
                path: path.to_string(),
                source,
            })?;
        if read == 0 {
            break;
        }
        if size < 4 {
            let start = size as usize;
            let take = (4 - start).min(read);
            head[start..start + take].copy_from_slice(&buffer[..take]);
        }
        size += read as u64;
        if size > limit {
            return Err(ArtifactError::TooLarge {
                path: path.to_string(),
                limit,
            });
        }
        sha256.update(&buffer[..read]);
        sha512.update(&buffer[..read]);
    }
    if &head != b"PK\x03\x04" {
        return Err(ArtifactError::NotAJar {
            path: path.to_string(),
        });
    }
    let sha256_raw = sha256.finalize().to_vec();
    Ok(JarDigest {
        sha256: hex::encode(&sha256_raw),
        sha256_raw,
        sha512_raw: sha512.finalize().to_vec(),
        size,
    })
}

/// What a JAR must satisfy.
pub struct ArtifactPolicy<'a> {
    /// Trusted keys.
    pub signers: &'a AllowedSigners,
    /// Namespace of artifact signatures.
    pub namespace: &'a str,
    /// Whether a signature is mandatory, and why (`None`: optional).
    pub signature_required: Option<&'static str>,
}

/// Checks a hashed JAR against its pin and its detached signature (if any, or if required).
pub fn verify_jar(
    path: &str,
    digest: &JarDigest,
    pinned_sha256: Option<&str>,
    signature: Option<&[u8]>,
    policy: &ArtifactPolicy<'_>,
    at: DateTime<Utc>,
) -> Result<Option<Verified>, ArtifactError> {
    if let Some(expected) = pinned_sha256.filter(|pin| !pin.eq_ignore_ascii_case(&digest.sha256)) {
        return Err(ArtifactError::DigestMismatch {
            path: path.to_string(),
            expected: expected.to_string(),
            actual: digest.sha256.clone(),
        });
    }
    let Some(armored) = signature else {
        return match policy.signature_required {
            Some(why) => Err(ArtifactError::SignatureMissing {
                path: path.to_string(),
                why,
            }),
            None => Ok(None),
        };
    };
    let failed = |source: SignatureError| ArtifactError::Signature {
        path: path.to_string(),
        source: Box::new(source),
    };
    let parsed = SshSignature::parse(armored).map_err(|e| failed(e.into()))?;
    let message_digest = match parsed.hash_algorithm {
        super::HashAlgorithm::Sha256 => &digest.sha256_raw,
        super::HashAlgorithm::Sha512 => &digest.sha512_raw,
    };
    verify_parsed(
        &parsed,
        message_digest,
        policy.namespace,
        policy.signers,
        at,
    )
    .map(Some)
    .map_err(failed)
}
