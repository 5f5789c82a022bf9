//! Keel manifest file-system ("DMFS") images: a versioned, checksummed container of capsule
//! definitions and their kernel, initrd and command-line payloads.
//!
//! A capsule may also have up to four disks ([`Disk`]): extents of the machine's own disk that the
//! guest sees as virtio-blk devices. No two disks of an image overlap; the writer and the parser both
//! refuse images where they would. It may also have a network card, known by its MAC address
//! ([`Capsule::mac`]): a unicast address that no other capsule of the image shares.
//!
//! The hypervisor embeds one image and reads it in place, so the parser ([`Image::parse`]) is
//! zero-copy and checks every offset, length and field before handing out a [`Capsule`]; after a
//! successful parse nothing can fail any more. The writer ([`ImageBuilder`], feature `alloc`)
//! applies the same rules, so whatever it produces parses. The byte layout is documented in
//! `FORMAT.md` next to this crate's manifest and mirrored by the constants in [`layout`].
//!
//! Images may carry an Ed25519 signature over their whole contents. With the `ed25519` feature,
//! [`verify`] (or [`Image::verify`]) checks it against a public key, and [`SignatureCheck`] lets
//! several processors share the hashing; with `alloc` as well, [`sign`] makes one.
//! The checksum stays separate: it reports accidental corruption, the signature forgery.

#![cfg_attr(not(test), no_std)]

#[cfg(feature = "alloc")]
extern crate alloc;

mod capsule;
mod crc;
mod disk;
mod error;
pub mod layout;
mod mac;
mod parse;
mod signature;
#[cfg(feature = "alloc")]
mod writer;

pub use capsule::{Capsule, CapsuleName, InlineName, KernelFormat, RestartPolicy};
pub use crc::{checksum, Crc32};
pub use disk::{check_disk_extent, check_disk_name, Disk, DiskName, Disks};
pub use error::{CapsuleProblem, DiskLocation, DiskProblem, Field, FieldProblem, FormatError};
pub use mac::{check_mac, MacAddress};
pub use parse::{Capsules, Image};
#[cfg(feature = "ed25519")]
pub use signature::{
    public_key, verify, verify_and_parse, ChunkDigest, SignatureCheck, SignatureError,
};
#[cfg(all(feature = "ed25519", feature = "alloc"))]
pub use signature::{sign, sign_with};
pub use signature::{KeyId, SignatureScheme, SignedMessage};
#[cfg(feature = "alloc")]
pub use writer::{BuildError, CapsuleSpec, DiskSpec, ImageBuilder};
