//! Trust: SSH signatures on commits and JARs, judged against an allowed_signers file, and anti-rollback.

pub mod allowed_signers;
pub mod artifacts;
pub mod commits;
pub mod sshsig;

use chrono::{DateTime, Utc};

pub use allowed_signers::{AllowedSigner, AllowedSigners, AllowedSignersError, SignerError};
pub use sshsig::{HashAlgorithm, SshSigError, SshSignature};

/// The SSHSIG namespace git uses for commit and tag signatures.
pub const GIT_NAMESPACE: &str = "git";

/// A signature that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The allowed_signers principal (first of its line).
    pub principal: String,
    /// Every principal of the matching line (for ownership rules).
    pub principals: Vec<String>,
    /// The key's fingerprint.
    pub fingerprint: String,
    /// The hash the signature used.
    pub hash_algorithm: HashAlgorithm,
}

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The signature itself is malformed, for another namespace, or does not match.
    #[error(transparent)]
    Format(#[from] SshSigError),
    /// No line of allowed_signers vouches for the key.
    #[error(transparent)]
    Signer(#[from] SignerError),
}

/// Verifies an armored signature over `message` for `namespace`, with key validity judged at `at`.
pub fn verify_armored(
    armored: &[u8],
    message: &[u8],
    namespace: &str,
    signers: &AllowedSigners,
    at: DateTime<Utc>,
) -> Result<Verified, SignatureError> {
    let signature = SshSignature::parse(armored)?;
    verify_parsed(
        &signature,
        &signature.hash_algorithm.digest(message),
        namespace,
        signers,
        at,
    )
}

/// Like [`verify_armored`] for a message already hashed with the signature's algorithm.
pub fn verify_parsed(
    signature: &SshSignature,
    digest: &[u8],
    namespace: &str,
    signers: &AllowedSigners,
    at: DateTime<Utc>,
) -> Result<Verified, SignatureError> {
    signature.check_namespace(namespace)?;
    signature.verify_digest(digest, namespace)?;
    let signer = signers.find(&signature.public_key, namespace, at)?;
    Ok(Verified {
        principal: signer.principal().to_string(),
        principals: signer.principals.clone(),
        fingerprint: signature.fingerprint(),
        hash_algorithm: signature.hash_algorithm,
    })
}
