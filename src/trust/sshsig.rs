//! The SSHSIG format (OpenSSH `PROTOCOL.sshsig`), ed25519 only, parsed and checked rule by rule.

use base64::Engine as _;
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256, Sha512};

use crate::limits::Limits;

const BEGIN: &str = "-----BEGIN SSH SIGNATURE-----";
const END: &str = "-----END SSH SIGNATURE-----";
const MAGIC: &[u8] = b"SSHSIG";
const KEY_TYPE: &str = "ssh-ed25519";

/// Why a signature was refused. Each rule of the format has its own variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshSigError {
    /// Over [`Limits::signature_bytes`].
    #[error("signature is {0} bytes, over the limit of {limit}", limit = Limits::DEFAULT.signature_bytes)]
    TooLarge(usize),
    /// The BEGIN/END lines are missing or there is text outside them.
    #[error("not an armored SSH signature ({0})")]
    Armor(&'static str),
    /// The body is not base64.
    #[error("signature body is not valid base64")]
    Base64,
    /// The blob does not start with `SSHSIG`.
    #[error("signature blob does not start with SSHSIG")]
    Magic,
    /// Only version 1 exists.
    #[error("unsupported SSHSIG version {0} (only 1)")]
    Version(u32),
    /// A length field points past the end of the blob.
    #[error("signature blob is truncated in {0}")]
    Truncated(&'static str),
    /// Bytes follow the last field.
    #[error("{0} trailing bytes after the signature blob")]
    TrailingBytes(usize),
    /// The key is not ed25519.
    #[error("unsupported key type `{0}`: only ssh-ed25519 keys are accepted")]
    KeyType(String),
    /// The signature algorithm is not ed25519.
    #[error("unsupported signature type `{0}`: only ssh-ed25519 signatures are accepted")]
    SignatureType(String),
    /// A key or signature has the wrong length or extra data.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The namespace is empty.
    #[error("signature has an empty namespace")]
    EmptyNamespace,
    /// The namespace is not the one this use requires.
    #[error("signature namespace is `{found}`, expected `{expected}`")]
    WrongNamespace {
        /// In the signature.
        found: String,
        /// Required here.
        expected: String,
    },
    /// The reserved field carries data.
    #[error("signature reserved field is not empty")]
    ReservedNotEmpty,
    /// A hash other than sha256/sha512.
    #[error("unsupported hash algorithm `{0}` (only sha256 and sha512)")]
    HashAlgorithm(String),
    /// The ed25519 check failed: the data or the signature was altered.
    #[error("signature does not match the signed data (altered content or forged signature)")]
    BadSignature,
}

/// The message hash an SSHSIG signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlgorithm {
    /// SHA-256.
    Sha256,
    /// SHA-512 (ssh-keygen's and git's default).
    Sha512,
}

impl HashAlgorithm {
    /// The name in the blob.
    pub fn name(self) -> &'static str {
        match self {
            HashAlgorithm::Sha256 => "sha256",
            HashAlgorithm::Sha512 => "sha512",
        }
    }

    /// Hashes a message in one go.
    pub fn digest(self, message: &[u8]) -> Vec<u8> {
        match self {
            HashAlgorithm::Sha256 => Sha256::digest(message).to_vec(),
            HashAlgorithm::Sha512 => Sha512::digest(message).to_vec(),
        }
    }
}

/// A parsed SSHSIG whose structure passed every rule; not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshSignature {
    /// The signer's ed25519 public key.
    pub public_key: [u8; 32],
    /// What the signature is for (`git`, an artifact namespace...).
    pub namespace: String,
    /// How the message was hashed.
    pub hash_algorithm: HashAlgorithm,
    /// R‖S.
    pub signature: [u8; 64],
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize, field: &'static str) -> Result<&'a [u8], SshSigError> {
        if self.bytes.len() < count {
            return Err(SshSigError::Truncated(field));
        }
        let (head, tail) = self.bytes.split_at(count);
        self.bytes = tail;
        Ok(head)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, SshSigError> {
        let raw = self.take(4, field)?;
        Ok(u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]))
    }

    fn string(&mut self, field: &'static str) -> Result<&'a [u8], SshSigError> {
        let length = self.u32(field)? as usize;
        self.take(length, field)
    }

    fn finish(&self) -> Result<(), SshSigError> {
        match self.bytes.len() {
            0 => Ok(()),
            n => Err(SshSigError::TrailingBytes(n)),
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Decodes the armor to the binary blob.
pub fn dearmor(armored: &[u8]) -> Result<Vec<u8>, SshSigError> {
    // Refused before decoding.
    if armored.len() as u64 > Limits::DEFAULT.signature_bytes {
        return Err(SshSigError::TooLarge(armored.len()));
    }
    let text = std::str::from_utf8(armored).map_err(|_| SshSigError::Armor("not UTF-8"))?;
    let trimmed = text.trim();
    let body = trimmed
        .strip_prefix(BEGIN)
        .ok_or(SshSigError::Armor("missing BEGIN SSH SIGNATURE line"))?
        .strip_suffix(END)
        .ok_or(SshSigError::Armor("missing END SSH SIGNATURE line"))?;
    if body.contains("-----") {
        return Err(SshSigError::Armor("more than one armored block"));
    }
    let compact: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|_| SshSigError::Base64)
}

/// Parses a public key blob: `string "ssh-ed25519"`, `string key(32)`, nothing else.
pub fn parse_public_key_blob(blob: &[u8]) -> Result<[u8; 32], SshSigError> {
    let mut reader = Reader { bytes: blob };
    let key_type = reader.string("public key type")?;
    if key_type != KEY_TYPE.as_bytes() {
        return Err(SshSigError::KeyType(text(key_type)));
    }
    let key = reader.string("public key")?;
    reader
        .finish()
        .map_err(|_| SshSigError::Malformed("public key (extra data)"))?;
    key.try_into()
        .map_err(|_| SshSigError::Malformed("ed25519 public key (not 32 bytes)"))
}

impl SshSignature {
    /// Parses an armored signature, enforcing every structural rule.
    pub fn parse(armored: &[u8]) -> Result<SshSignature, SshSigError> {
        let blob = dearmor(armored)?;
        let mut reader = Reader { bytes: &blob };
        if reader
            .take(MAGIC.len(), "magic")
            .map_err(|_| SshSigError::Magic)?
            != MAGIC
        {
            return Err(SshSigError::Magic);
        }
        let version = reader.u32("version")?;
        if version != 1 {
            return Err(SshSigError::Version(version));
        }
        let public_key = parse_public_key_blob(reader.string("public key")?)?;
        let namespace = reader.string("namespace")?;
        if namespace.is_empty() {
            return Err(SshSigError::EmptyNamespace);
        }
        let namespace = std::str::from_utf8(namespace)
            .map_err(|_| SshSigError::Malformed("namespace (not UTF-8)"))?
            .to_string();
        if !reader.string("reserved")?.is_empty() {
            return Err(SshSigError::ReservedNotEmpty);
        }
        let hash_algorithm = match reader.string("hash algorithm")? {
            b"sha256" => HashAlgorithm::Sha256,
            b"sha512" => HashAlgorithm::Sha512,
            other => return Err(SshSigError::HashAlgorithm(text(other))),
        };
        let signature_blob = reader.string("signature")?;
        reader.finish()?;

        let mut inner = Reader {
            bytes: signature_blob,
        };
        let algorithm = inner.string("signature type")?;
        if algorithm != KEY_TYPE.as_bytes() {
            return Err(SshSigError::SignatureType(text(algorithm)));
        }
        let raw = inner.string("signature bytes")?;
        inner
            .finish()
            .map_err(|_| SshSigError::Malformed("signature (extra data)"))?;
        let signature = raw
            .try_into()
            .map_err(|_| SshSigError::Malformed("ed25519 signature (not 64 bytes)"))?;
        Ok(SshSignature {
            public_key,
            namespace,
            hash_algorithm,
            signature,
        })
    }

    /// Checks the signature over a whole message.
    pub fn verify(&self, message: &[u8], expected_namespace: &str) -> Result<(), SshSigError> {
        self.verify_digest(&self.hash_algorithm.digest(message), expected_namespace)
    }

    /// Checks the signature given `H(message)` computed with [`Self::hash_algorithm`] (for streamed files).
    pub fn verify_digest(
        &self,
        digest: &[u8],
        expected_namespace: &str,
    ) -> Result<(), SshSigError> {
        self.check_namespace(expected_namespace)?;
        let mut signed = MAGIC.to_vec();
        // The reserved field is signed empty, as OpenSSH rebuilds it; a non-empty one never parses.
        for field in [
            expected_namespace.as_bytes(),
            b"",
            self.hash_algorithm.name().as_bytes(),
            digest,
        ] {
            signed.extend_from_slice(&(field.len() as u32).to_be_bytes());
            signed.extend_from_slice(field);
        }
        let key = VerifyingKey::from_bytes(&self.public_key)
            .map_err(|_| SshSigError::Malformed("ed25519 public key"))?;
        key.verify_strict(&signed, &Signature::from_bytes(&self.signature))
            .map_err(|_| SshSigError::BadSignature)
    }

    /// Refuses a signature made for another purpose.
    pub fn check_namespace(&self, expected: &str) -> Result<(), SshSigError> {
        if self.namespace != expected {
            return Err(SshSigError::WrongNamespace {
                found: self.namespace.clone(),
                expected: expected.to_string(),
            });
        }
        Ok(())
    }

    /// `SHA256:<base64>` of the public key blob, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.public_key)
    }
}

/// `SHA256:<base64, no padding>` of an ed25519 key's wire blob.
pub fn fingerprint(key: &[u8; 32]) -> String {
    let mut blob = Vec::with_capacity(51);
    blob.extend_from_slice(&(KEY_TYPE.len() as u32).to_be_bytes());
    blob.extend_from_slice(KEY_TYPE.as_bytes());
    blob.extend_from_slice(&32u32.to_be_bytes());
    blob.extend_from_slice(key);
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(&blob))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn armor(blob: &[u8]) -> Vec<u8> {
        let body = base64::engine::general_purpose::STANDARD.encode(blob);
        format!("{BEGIN}\n{body}\n{END}\n").into_bytes()
    }

    fn string(out: &mut Vec<u8>, field: &[u8]) {
        out.extend_from_slice(&(field.len() as u32).to_be_bytes());
        out.extend_from_slice(field);
    }

    fn blob(
        version: u32,
        namespace: &[u8],
        reserved: &[u8],
        hash: &[u8],
        trailing: &[u8],
    ) -> Vec<u8> {
        let mut key = Vec::new();
        string(&mut key, b"ssh-ed25519");
        string(&mut key, &[7; 32]);
        let mut sig = Vec::new();
        string(&mut sig, b"ssh-ed25519");
        string(&mut sig, &[9; 64]);
        let mut out = b"SSHSIG".to_vec();
        out.extend_from_slice(&version.to_be_bytes());
        string(&mut out, &key);
        string(&mut out, namespace);
        string(&mut out, reserved);
        string(&mut out, hash);
        string(&mut out, &sig);
        out.extend_from_slice(trailing);
        out
    }

    #[test]
    fn each_structural_rule_has_its_error() {
        let ok = SshSignature::parse(&armor(&blob(1, b"git", b"", b"sha512", b""))).unwrap();
        assert_eq!(ok.namespace, "git");
        assert_eq!(ok.hash_algorithm, HashAlgorithm::Sha512);
        let cases: [(Vec<u8>, SshSigError); 6] = [
            (
                blob(2, b"git", b"", b"sha512", b""),
                SshSigError::Version(2),
            ),
            (
                blob(1, b"", b"", b"sha512", b""),
                SshSigError::EmptyNamespace,
            ),
            (
                blob(1, b"git", b"x", b"sha512", b""),
                SshSigError::ReservedNotEmpty,
            ),
            (
                blob(1, b"git", b"", b"md5", b""),
                SshSigError::HashAlgorithm("md5".into()),
            ),
            (
                blob(1, b"git", b"", b"sha512", b"zz"),
                SshSigError::TrailingBytes(2),
            ),
            (b"SSHSIH\0\0\0\x01".to_vec(), SshSigError::Magic),
        ];
        for (bytes, expected) in cases {
            assert_eq!(SshSignature::parse(&armor(&bytes)), Err(expected));
        }
        assert_eq!(
            SshSignature::parse(b"-----BEGIN SSH SIGNATURE-----\nAAAA"),
            Err(SshSigError::Armor("missing END SSH SIGNATURE line"))
        );
        let mut doubled = armor(&blob(1, b"git", b"", b"sha512", b""));
        doubled.extend(armor(&blob(1, b"git", b"", b"sha512", b"")));
        assert!(SshSignature::parse(&doubled).is_err());
        assert_eq!(
            ok.check_namespace("file"),
            Err(SshSigError::WrongNamespace {
                found: "git".into(),
                expected: "file".into()
            })
        );
    }

    #[test]
    fn a_huge_length_field_is_truncation_not_allocation() {
        let mut bytes = b"SSHSIG".to_vec();
        bytes.extend_from_slice(&1u32.to_be_bytes());
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            SshSignature::parse(&armor(&bytes)),
            Err(SshSigError::Truncated("public key"))
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = SshSignature::parse(&bytes);
            let _ = SshSignature::parse(&armor(&bytes));
        }

        #[test]
        fn mutated_signatures_never_panic(position in 0usize..200, value in any::<u8>(), cut in 0usize..200) {
            let mut bytes = blob(1, b"git", b"", b"sha512", b"");
            let index = position % bytes.len();
            bytes[index] = value;
            bytes.truncate(bytes.len() - cut % bytes.len());
            if let Ok(signature) = SshSignature::parse(&armor(&bytes)) {
                let _ = signature.verify(b"message", "git");
            }
        }
    }
}
