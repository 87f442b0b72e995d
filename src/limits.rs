//! Every size limit the agent enforces, in one place, each with the reason for its value.

/// The most bytes the agent reads, keeps or accepts of each kind of input.
///
/// Every read from the repository, the local disk, Flink, an artifact store or an HTTP client is
/// bounded, so a broken or hostile source costs an error naming the limit, never the agent's memory.
/// None is set in `config.yaml`: every component reads [`Limits::DEFAULT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `config.yaml`: a hand-written file of a few KiB; more is not a config file.
    pub config_file_bytes: u64,
    /// A TLS certificate, key or CA bundle, or a Flink bearer token or password file, each read
    /// whole; a CA bundle with every public root is about 250 KiB. The start-up check that every
    /// file the config names is readable and not empty reads each under its reader's limit.
    pub credential_file_bytes: u64,
    /// A secret read whole into memory: a `${secret:NAME}` value, the git token or key passphrase,
    /// the webhook secret, an alert target's HMAC key. Secrets are short; a large one is a mistake.
    pub secret_file_bytes: u64,
    /// The file holding a Slack webhook URL: one URL.
    pub slack_url_file_bytes: u64,
    /// `repo.auth.known_hosts_file`: a user's `~/.ssh/known_hosts` can hold thousands of hosts.
    pub known_hosts_bytes: u64,
    /// `trust.allowed_signers`: one line per signer key, a few hundred bytes each.
    pub allowed_signers_bytes: u64,
    /// The watermark file in the state directory: one commit id, at most 64 hex digits
    /// (SHA-256 repositories); anything longer is not the agent's.
    pub watermark_file_bytes: u64,
    /// One job spec YAML file in the repository: a spec is a page of YAML.
    pub spec_file_bytes: u64,
    /// One SQL or Python source file a spec names.
    pub source_file_bytes: u64,
    /// All SQL or Python source files of one job together: they are submitted in one request and
    /// kept in memory while the plan is made.
    pub program_bytes: u64,
    /// One JAR, in the repository or downloaded from `artifact_url`; streamed and hashed, never
    /// held in memory. Large shaded JARs reach a few hundred MiB.
    pub jar_bytes: u64,
    /// An armored SSH signature: a JAR's `.sig` file (in the repository or downloaded) and a
    /// commit's signature. A real ed25519 one is under 1 KiB.
    pub signature_bytes: u64,
    /// One answer from the Flink REST API: the job list of a busy cluster is a few MiB; more is a
    /// broken or hostile server, and reading it would take the agent's memory.
    pub flink_answer_bytes: usize,
    /// The body of a request to the agent's HTTP server: a git host's push webhook is at most a
    /// few hundred KiB, and the other endpoints take none.
    pub http_body_bytes: usize,
    /// hyper's read buffer per connection, which bounds a request's headers: request headers are
    /// small, bodies are streamed past it, and a full connection table (256 by default) stays at
    /// 16 MiB.
    pub http_header_bytes: usize,
    /// The largest piece of a pack file libgit2 maps at once (its default is 1 GiB on 64-bit).
    pub git_pack_window_bytes: usize,
    /// The most of all pack files libgit2 keeps mapped (its default is 8 GiB on 64-bit): with the
    /// defaults, reading a 400 MB JAR from a pack kept the whole compressed object mapped (and
    /// resident) next to its inflated copy.
    pub git_pack_mapped_bytes: usize,
    /// The largest tree libgit2 keeps parsed in its object cache (its default is 4 KiB, which made
    /// every path lookup in a folder of thousands of specs parse that folder again).
    pub git_tree_cache_bytes: usize,
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

impl Limits {
    /// The limits the agent runs with.
    pub const DEFAULT: Limits = Limits {
        config_file_bytes: MIB,
        credential_file_bytes: MIB,
        secret_file_bytes: 64 * KIB,
        slack_url_file_bytes: 4 * KIB,
        known_hosts_bytes: 4 * MIB,
        allowed_signers_bytes: MIB,
        watermark_file_bytes: 256,
        spec_file_bytes: 256 * KIB,
        source_file_bytes: MIB,
        program_bytes: 4 * MIB,
        jar_bytes: GIB,
        signature_bytes: 16 * KIB,
        flink_answer_bytes: 64 * MIB as usize,
        http_body_bytes: MIB as usize,
        http_header_bytes: 64 * KIB as usize,
        git_pack_window_bytes: 32 * MIB as usize,
        git_pack_mapped_bytes: 128 * MIB as usize,
        git_tree_cache_bytes: 64 * MIB as usize,
    };
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::DEFAULT
    }
}

/// `bytes` in the largest binary unit that divides it (`1 MiB`, `16 KiB`, `300 bytes`), for messages.
pub fn in_units(bytes: u64) -> String {
    match bytes {
        0 => "0 bytes".into(),
        b if b % GIB == 0 => format!("{} GiB", b / GIB),
        b if b % MIB == 0 => format!("{} MiB", b / MIB),
        b if b % KIB == 0 => format!("{} KiB", b / KIB),
        b => format!("{b} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_name_the_limit_as_people_write_it() {
        assert_eq!(in_units(Limits::DEFAULT.source_file_bytes), "1 MiB");
        assert_eq!(in_units(Limits::DEFAULT.program_bytes), "4 MiB");
        assert_eq!(in_units(Limits::DEFAULT.signature_bytes), "16 KiB");
        assert_eq!(in_units(Limits::DEFAULT.jar_bytes), "1 GiB");
        assert_eq!(in_units(1000), "1000 bytes");
    }
}
