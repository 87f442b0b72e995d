//! OpenSSL, which only ssh remotes use (libssh2's ciphers and keys), is set up when an ssh remote is
//! first fetched rather than when the process starts.
//!
//! Why: git2 starts OpenSSL in every process, with its error strings and the system's
//! `openssl.cnf`: about 0.4 ms of every command and 1 MiB of the idle service, for a library that
//! local and https remotes never call. OpenSSL's own once-only switches decide what its start
//! loads, so the agent makes the first call, without the strings and the configuration, and loads
//! the configuration itself before the first ssh fetch. https does not use OpenSSL (see
//! [`super::https`]).

use std::ffi::{c_char, c_int, c_ulong};
use std::sync::OnceLock;

// Values from OpenSSL 3's `crypto.h`, `ssl.h` and `conf.h`.
const OPENSSL_INIT_NO_LOAD_CRYPTO_STRINGS: u64 = 0x0000_0001;
const OPENSSL_INIT_NO_LOAD_CONFIG: u64 = 0x0000_0080;
const OPENSSL_INIT_NO_ATEXIT: u64 = 0x0008_0000;
const OPENSSL_INIT_NO_LOAD_SSL_STRINGS: u64 = 0x0010_0000;
const CONF_MFLAGS_IGNORE_MISSING_FILE: c_ulong = 0x10;
const CONF_MFLAGS_DEFAULT_SECTION: c_ulong = 0x20;

unsafe extern "C" {
    fn CONF_modules_load_file(
        filename: *const c_char,
        appname: *const c_char,
        flags: c_ulong,
    ) -> c_int;
}

/// Starts OpenSSL without its error strings and without reading the system configuration.
///
/// # Safety
/// Call before anything else uses OpenSSL or git2, while the process has one thread.
pub(super) unsafe fn start_without_configuration() {
    // SAFETY: the caller guarantees OpenSSL has not started and no other thread runs; a null
    // settings pointer asks for the defaults.
    unsafe {
        openssl_sys::OPENSSL_init_ssl(
            OPENSSL_INIT_NO_LOAD_CONFIG
                | OPENSSL_INIT_NO_LOAD_CRYPTO_STRINGS
                | OPENSSL_INIT_NO_LOAD_SSL_STRINGS
                | OPENSSL_INIT_NO_ATEXIT,
            std::ptr::null(),
        );
    }
}

/// Reads the system's OpenSSL configuration (`OPENSSL_CONF`, else OpenSSL's default file; none is
/// fine) once, so that a machine's crypto policy (providers, FIPS) applies to ssh. OpenSSL's own
/// start goes on without a configuration it cannot load; here that fails the ssh fetch instead, so
/// a policy is never skipped in silence.
pub(super) fn load_configuration() -> Result<(), String> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            // SAFETY: null file and application name select OpenSSL's default file and section;
            // OnceLock makes every ssh fetch wait until the one load is done.
            let loaded = unsafe {
                CONF_modules_load_file(
                    std::ptr::null(),
                    std::ptr::null(),
                    CONF_MFLAGS_DEFAULT_SECTION | CONF_MFLAGS_IGNORE_MISSING_FILE,
                )
            };
            if loaded > 0 {
                Ok(())
            } else {
                Err(format!(
                    "cannot load the system's OpenSSL configuration ({}), which ssh remotes use",
                    std::env::var("OPENSSL_CONF")
                        .unwrap_or_else(|_| "OpenSSL's default file".into())
                ))
            }
        })
        .clone()
}
