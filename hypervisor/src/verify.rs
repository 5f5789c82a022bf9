//! Checks the bundled manifest image's Ed25519 signature against the public key built into Keel.
//!
//! The check runs before anything else reads the image (even its capsule table), so a forged image
//! never reaches the parser or a capsule. Images read later from the machine's disk (`storage`) go
//! through the same check, with the same key, before they are parsed.

use alloc::{format, string::String};

use keel_dmfs::{Image, KeyId, SignatureError};

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

/// Checks and parses `image` (the bundled bytes, possibly padded), and stops Keel, naming what failed, unless
/// this build accepts it. In development mode it only warns, loudly, and parses.
pub fn check_bundled_image(image: &'static [u8]) -> Image<'static> {
    let started = crate::arch::csr::time::read();
    if matches!(KEY_POLICY, KeyPolicy::AllowUnsigned) {
        warn_development_mode();
    }
    match check_image(image) {
        Ok((image, Some(key))) => {
            console::print(format_args!(
                "[keel] the bundled manifest image's signature verifies (key {key}, image checked and read in {})\n",
                crate::sched::Since(started)
            ));
            image
        }
        Ok((image, None)) => image,
        Err(why) => crate::fatal(format_args!("the bundled manifest image is refused: {why}")),
    }
}

/// Checks any manifest image against this build's key and parses it; returns the image and the id of the key
/// that signed it, or why the image is refused. In development mode an image needs only to parse (and the bundled
/// image's check has already said so loudly); there is no key id then.
pub fn check_image(image: &'static [u8]) -> Result<(Image<'static>, Option<KeyId>), String> {
    match &KEY_POLICY {
        KeyPolicy::Key(public_key) => {
            let ours = KeyId::of(public_key);
            // The signature covers the checksum and everything it sums, so the image is read once, not twice.
            keel_dmfs::verify_and_parse(image, public_key)
                .map(|image| (image, Some(ours)))
                .map_err(|error| describe(error, ours))
        }
        KeyPolicy::AllowUnsigned => {
            Image::parse(image).map(|image| (image, None)).map_err(|error| format!("it is unusable: {error}"))
        }
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
        SignatureError::Unusable(error) => format!("its signature verifies, but it is unusable: {error}"),
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
