//! Checks the bundled manifest image's Ed25519 signature against the public key built into Keel.
//!
//! The check runs before anything else reads the image (even its capsule table), so a forged image
//! never reaches the parser or a capsule. Images read later from the machine's disk (`storage`) go
//! through the same check, with the same key, before they are parsed.
//!
//! Hashing the bundled image is most of Keel's own start-up time, so it is shared out: the image is
//! signed over the digests of its 256 KiB chunks (scheme 2), and every hart that comes online while
//! the check is under way hashes chunks until none are left.

use alloc::{format, string::String, sync::Arc, vec::Vec};
use core::sync::atomic::{AtomicUsize, Ordering};

use keel_dmfs::{ChunkDigest, Image, KeyId, SignatureCheck, SignatureError};
use spin::{Mutex, Once};

use crate::{console, hart};

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
///
/// `start_others` starts the other harts; it is called once the check is ready to be shared, and the harts lend a
/// hand ([`help_check`]) as they come online.
pub fn check_bundled_image(image: &'static [u8], start_others: impl FnOnce()) -> Image<'static> {
    let started = crate::arch::csr::time::read();
    if matches!(KEY_POLICY, KeyPolicy::AllowUnsigned) {
        warn_development_mode();
    }
    let checked = match &KEY_POLICY {
        KeyPolicy::Key(public_key) => {
            let ours = KeyId::of(public_key);
            match SignatureCheck::begin(image, public_key) {
                Ok(check) => {
                    let (result, harts) = check_on_every_hart(check, start_others);
                    result.map(|image| (image, Some((ours, harts)))).map_err(|error| describe(error, ours))
                }
                Err(error) => {
                    start_others();
                    Err(describe(error, ours))
                }
            }
        }
        KeyPolicy::AllowUnsigned | KeyPolicy::NoKey => {
            start_others();
            check_image(image).map(|(image, _)| (image, None))
        }
    };
    match checked {
        Ok((image, Some((key, harts)))) => {
            console::print(format_args!(
                "[keel] the bundled manifest image's signature verifies (key {key}, image checked and read in {} \
                 by {harts} hart(s))\n",
                crate::sched::Since(started)
            ));
            image
        }
        Ok((image, None)) => image,
        Err(why) => crate::fatal(format_args!("the bundled manifest image is refused: {why}")),
    }
}

/// A signature check whose chunks any hart may hash.
struct SharedCheck {
    check: SignatureCheck<'static>,
    /// One slot per chunk, written once by the hart that claimed the chunk.
    digests: Vec<Once<ChunkDigest>>,
    /// The next chunk nobody has claimed.
    next: AtomicUsize,
    /// Chunks hashed so far.
    done: AtomicUsize,
    /// Harts that hashed at least one chunk.
    harts: AtomicUsize,
    /// The hart that waits for the last digest.
    waiter: usize,
}

impl SharedCheck {
    /// Hashes unclaimed chunks until none are left; whoever hashes the last one wakes the waiter.
    fn work(&self) {
        let mut first = true;
        loop {
            let index = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(slot) = self.digests.get(index) else {
                return;
            };
            if core::mem::take(&mut first) {
                self.harts.fetch_add(1, Ordering::Relaxed);
            }
            slot.call_once(|| self.check.chunk_digest(index));
            if self.done.fetch_add(1, Ordering::AcqRel) + 1 == self.digests.len() && hart::id() != self.waiter {
                hart::kick(self.waiter);
            }
        }
    }

    fn finished(&self) -> bool {
        self.done.load(Ordering::Acquire) == self.digests.len()
    }
}

/// The check under way, while there is one.
static SHARED: Mutex<Option<Arc<SharedCheck>>> = Mutex::new(None);

/// Hashes chunks of the bundled image on this hart if its check is still under way (each secondary hart calls
/// this as it comes online).
pub fn help_check() {
    let shared = SHARED.lock().clone();
    if let Some(shared) = shared {
        shared.work();
    }
}

/// Runs `check` on this hart and on every hart that `start_others` brings up meanwhile; returns the parsed image
/// (or why it is refused) and how many harts hashed chunks.
fn check_on_every_hart(
    check: SignatureCheck<'static>,
    start_others: impl FnOnce(),
) -> (Result<Image<'static>, SignatureError>, usize) {
    let chunks = check.chunks();
    let shared = Arc::new(SharedCheck {
        check,
        digests: (0..chunks).map(|_| Once::new()).collect(),
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        harts: AtomicUsize::new(0),
        waiter: hart::id(),
    });
    *SHARED.lock() = Some(shared.clone());
    start_others();
    shared.work();
    // Harts that arrive from now on find nothing to do; the ones still hashing a chunk finish it.
    *SHARED.lock() = None;
    hart::sleep_until(|| shared.finished());
    let digests = shared.digests.iter().filter_map(|slot| slot.get().copied());
    (shared.check.finish_and_parse(digests), shared.harts.load(Ordering::Relaxed).max(1))
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
