//! Checks the bundled manifest image's Ed25519 signature against the public key built into Keel.
//!
//! The check runs before anything else reads the image (even its capsule table), so a forged image
//! never reaches the parser or a capsule. Every image Keel starts capsules from is this one.

use keel_dmfs::{KeyId, SignatureError};

use crate::console;

/// Which manifest images this build accepts.
#[allow(dead_code, reason = "build.rs picks one variant per build")]
enum KeyPolicy {
    /// Only images signed with the secret half of this public key (`KEEL_PUBLIC_KEY` at build time).
    Key([u8; 32]),
    /// Development mode (`KEEL_ALLOW_UNSIGNED=1` at build time): no image is checked.
    AllowUnsigned,
    /// Built with neither: nothing can be trusted, so nothing is accepted.
    NoKey,
}

include!(concat!(env!("OUT_DIR"), "/key_policy.rs"));

/// Checks `image` (the bundled bytes, possibly padded) and stops Keel, naming what failed, unless this
/// build accepts it. In development mode it only warns, loudly.
pub fn check_bundled_image(image: &[u8]) {
    match &KEY_POLICY {
        KeyPolicy::Key(public_key) => {
            let ours = KeyId::of(public_key);
            match keel_dmfs::verify(image, public_key) {
                Ok(()) => console::print(format_args!(
                    "[keel] the bundled manifest image's signature verifies (key {ours})\n"
                )),
                Err(error) => refuse(error, ours),
            }
        }
        KeyPolicy::AllowUnsigned => warn_development_mode(),
        KeyPolicy::NoKey => crate::fatal(format_args!(
            "this build carries no public key to check the bundled manifest image with; build it with \
             `cargo xtask build` (KEEL_PUBLIC_KEY), or with --unsigned-dev for development"
        )),
    }
}

fn refuse(error: SignatureError, ours: KeyId) -> ! {
    match error {
        SignatureError::Unsigned => crate::fatal(format_args!(
            "the bundled manifest image is unsigned; this build boots only images signed with key {ours}"
        )),
        SignatureError::BadSignature => crate::fatal(format_args!(
            "the bundled manifest image's signature does not verify against this build's public key (key {ours}): \
             the image was altered after it was signed"
        )),
        SignatureError::WrongKey { image, expected } => crate::fatal(format_args!(
            "the bundled manifest image is signed with key {image}, not with this build's public key {expected}"
        )),
        SignatureError::BadPublicKey => crate::fatal(format_args!(
            "this build's public key {ours} is not a usable Ed25519 public key"
        )),
        SignatureError::Format(error) => crate::fatal(format_args!(
            "the bundled manifest image's signature cannot be checked: {error}"
        )),
    }
}

fn warn_development_mode() {
    const RULE: &str =
        "[keel] ************************************************************************\n";
    console::print(format_args!(
        "{RULE}\
         [keel] WARNING: DEVELOPMENT BUILD (KEEL_ALLOW_UNSIGNED=1).\n\
         [keel] WARNING: The bundled manifest image's signature is NOT checked: an unsigned or\n\
         [keel] WARNING: altered image boots. Never use this build outside development.\n\
         {RULE}"
    ));
}
