//! Checks the bundled manifest image's Ed25519 signature against the public key built into Keel.
//!
//! The check runs before anything else reads the image (even its capsule table), so a forged image
//! never reaches the parser or a capsule. Images read later from the machine's disk (`storage`) go
//! through the same check, with the same key, before they are parsed.

use alloc::{format, string::String};

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
        KeyPolicy::AllowUnsigned => warn_development_mode(),
        _ => match check_image(image) {
            Ok(key) => console::print(format_args!(
                "[keel] the bundled manifest image's signature verifies (key {key})\n"
            )),
            Err(why) => crate::fatal(format_args!("the bundled manifest image is refused: {why}")),
        },
    }
}

/// Checks any manifest image against this build's key; returns the key's id, or why the image is refused.
/// In development mode every image passes (and the bundled image's check has already said so loudly).
pub fn check_image(image: &[u8]) -> Result<KeyId, String> {
    match &KEY_POLICY {
        KeyPolicy::Key(public_key) => {
            let ours = KeyId::of(public_key);
            keel_dmfs::verify(image, public_key).map(|()| ours).map_err(|error| describe(error, ours))
        }
        KeyPolicy::AllowUnsigned => Ok(KeyId::of(&[0; 32])),
        KeyPolicy::NoKey => Err(String::from(
            "this build carries no public key to check manifest images with; build it with `cargo xtask build` \
             (KEEL_PUBLIC_KEY), or with --unsigned-dev for development",
        )),
    }
}

fn describe(error: SignatureError, ours: KeyId) -> String {
    match error {
        SignatureError::Unsigned => format!("it is unsigned; this build accepts only images signed with key {ours}"),
        SignatureError::BadSignature => format!(
            "its signature does not verify against this build's public key (key {ours}): the image was altered after it was signed"
        ),
        SignatureError::WrongKey { image, expected } => {
            format!("it is signed with key {image}, not with this build's public key {expected}")
        }
        SignatureError::BadPublicKey => format!("this build's public key {ours} is not a usable Ed25519 public key"),
        SignatureError::Format(error) => format!("its signature cannot be checked: {error}"),
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
