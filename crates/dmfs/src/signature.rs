//! Image signatures: what an Ed25519 signature covers, and (feature `ed25519`) making and checking one.
//!
//! The signed message is the whole image, `[0, image_length)`, with the 64-byte signature area read
//! as zeros. The checksum and the key id lie outside that area, so the signature covers them too.
//! Scheme 1 signs that message itself; scheme 2 signs the list of its chunks' SHA-512 digests, so a
//! verifier with several processors can hash the chunks at once ([`SignatureCheck`]).

use core::fmt;

use crate::layout::{
    header, HEADER_SIZE, KEY_ID_LEN, KEY_LEN, SIGNATURE_CHUNK_SIZE, SIGNATURE_ED25519,
    SIGNATURE_ED25519_CHUNKS, SIGNATURE_NONE,
};

#[cfg(all(feature = "ed25519", feature = "alloc"))]
use crate::crc::checksum;
#[cfg(feature = "ed25519")]
use crate::{
    error::FormatError,
    layout::{CHUNK_DIGEST_LEN, SIGNATURE_CHUNKS_TAG},
    parse::{bytes_at, frame, u32_at, Image},
};

/// How an image is signed: the header's `signature_scheme`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SignatureScheme {
    /// Scheme 0: no key id and no signature.
    Unsigned,
    /// Scheme 1: Ed25519 (RFC 8032, the plain variant) over the signed message.
    Ed25519,
    /// Scheme 2: Ed25519 (RFC 8032, the plain variant) over the SHA-512 digests of the signed
    /// message's chunks (`FORMAT.md`, "Signature").
    Ed25519Chunks,
}

impl SignatureScheme {
    /// The scheme a header's `signature_scheme` field names, or `None` for a value no scheme has.
    pub fn from_value(value: u32) -> Option<Self> {
        match value {
            SIGNATURE_NONE => Some(Self::Unsigned),
            SIGNATURE_ED25519 => Some(Self::Ed25519),
            SIGNATURE_ED25519_CHUNKS => Some(Self::Ed25519Chunks),
            _ => None,
        }
    }

    /// The header's `signature_scheme` value for this scheme.
    pub fn value(self) -> u32 {
        match self {
            Self::Unsigned => SIGNATURE_NONE,
            Self::Ed25519 => SIGNATURE_ED25519,
            Self::Ed25519Chunks => SIGNATURE_ED25519_CHUNKS,
        }
    }
}

impl fmt::Display for SignatureScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unsigned => "unsigned",
            Self::Ed25519 => "Ed25519",
            Self::Ed25519Chunks => "Ed25519 over chunk digests",
        })
    }
}

/// Names the key that signed an image: the first eight bytes of its Ed25519 public key.
///
/// It lets a verifier tell "signed with another key" apart from "altered after signing". It proves
/// nothing on its own; the signature does.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl KeyId {
    /// The id of `public_key`.
    pub fn of(public_key: &[u8; KEY_LEN]) -> KeyId {
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(public_key.get(..KEY_ID_LEN).unwrap_or(&[0; KEY_ID_LEN]));
        KeyId(id)
    }
}

impl fmt::Display for KeyId {
    /// Lower-case hex, the way `xxd -p` shows the start of the public key file.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// The signature area as the signed message reads it.
static ZERO_SIGNATURE: [u8; header::SIGNATURE_LEN] = [0; header::SIGNATURE_LEN];

/// The message a signature covers: the image with its signature area read as zeros.
///
/// It is held as the bytes before and after the signature area, so that an image can be verified
/// where it lies (read-only, possibly very large) without being copied.
#[derive(Clone, Copy)]
pub struct SignedMessage<'a> {
    before: &'a [u8],
    after: &'a [u8],
}

impl<'a> SignedMessage<'a> {
    /// The message of `image`, which is exactly an image (its declared length) of at least a header.
    pub(crate) fn of(image: &'a [u8]) -> Self {
        const _: () = assert!(header::SIGNATURE + header::SIGNATURE_LEN == HEADER_SIZE);
        Self {
            before: image.get(..header::SIGNATURE).unwrap_or_default(),
            after: image.get(HEADER_SIZE..).unwrap_or_default(),
        }
    }

    /// The message in order: the header up to the signature area, 64 zeros, the rest of the image.
    pub fn parts(&self) -> [&'a [u8]; 3] {
        [self.before, &ZERO_SIGNATURE, self.after]
    }

    /// Length of the message in bytes: the image length.
    #[allow(
        clippy::len_without_is_empty,
        reason = "the message always holds at least the header"
    )]
    pub fn len(&self) -> usize {
        self.before.len() + ZERO_SIGNATURE.len() + self.after.len()
    }

    /// The message as one buffer.
    #[cfg(feature = "alloc")]
    pub fn to_vec(&self) -> alloc::vec::Vec<u8> {
        self.parts().concat()
    }

    /// How many chunks scheme 2 hashes the message in: one per started [`SIGNATURE_CHUNK_SIZE`] bytes.
    pub fn chunk_count(&self) -> usize {
        self.len().div_ceil(SIGNATURE_CHUNK_SIZE)
    }

    /// Chunk `index` of the message, as the pieces of [`Self::parts`] it spans (empty past the end).
    pub fn chunk(&self, index: usize) -> impl Iterator<Item = &'a [u8]> {
        let start = index.saturating_mul(SIGNATURE_CHUNK_SIZE);
        let end = start.saturating_add(SIGNATURE_CHUNK_SIZE);
        let mut part_start = 0;
        self.parts().into_iter().filter_map(move |part| {
            let part_end = part_start + part.len();
            let from = start.clamp(part_start, part_end) - part_start;
            let to = end.clamp(part_start, part_end) - part_start;
            part_start = part_end;
            let piece = part.get(from..to);
            piece.filter(|piece| !piece.is_empty())
        })
    }
}

impl fmt::Debug for SignedMessage<'_> {
    /// Shows the length, not the (possibly very large) contents.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedMessage")
            .field("len", &self.len())
            .finish()
    }
}

/// Why an image's signature was not accepted.
#[cfg(feature = "ed25519")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureError {
    /// The header cannot be read (not an image, truncated, unknown signature scheme), so there is
    /// nothing to verify.
    Format(FormatError),
    /// The image carries no signature (signature scheme 0).
    Unsigned,
    /// The image was signed with another key than the one it is checked against.
    WrongKey {
        /// The id stored in the image.
        image: KeyId,
        /// The id of the key it was checked against.
        expected: KeyId,
    },
    /// The signature does not match the contents: the image was altered after it was signed, or the
    /// signature itself is damaged.
    BadSignature,
    /// The key to check against is not a usable Ed25519 public key.
    BadPublicKey,
    /// The signature verifies, but the signed image breaks a rule of the format
    /// ([`verify_and_parse`] only).
    Unusable(FormatError),
}

#[cfg(feature = "ed25519")]
impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Format(error) => write!(f, "{error}"),
            Self::Unsigned => f.write_str("DMFS image is unsigned (signature scheme 0)"),
            Self::WrongKey { image, expected } => write!(
                f,
                "DMFS image was signed with key {image}, not with the expected key {expected}"
            ),
            Self::BadSignature => f.write_str(
                "DMFS image signature does not verify: the image was altered after it was signed, or the signature is damaged",
            ),
            Self::BadPublicKey => {
                f.write_str("the public key to verify with is not a valid Ed25519 public key")
            }
            Self::Unusable(error) => write!(f, "the DMFS image is signed, but unusable: {error}"),
        }
    }
}

#[cfg(feature = "ed25519")]
impl core::error::Error for SignatureError {}

/// The SHA-512 digest of one chunk of a scheme-2 signed message.
#[cfg(feature = "ed25519")]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ChunkDigest(pub [u8; CHUNK_DIGEST_LEN]);

#[cfg(feature = "ed25519")]
impl fmt::Debug for ChunkDigest {
    /// The first bytes in hex: enough to tell digests apart in a test failure.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChunkDigest(")?;
        for byte in self.0.iter().take(8) {
            write!(f, "{byte:02x}")?;
        }
        f.write_str("..)")
    }
}

/// A signature check that has read the header and is ready to hash the image.
///
/// For a scheme-2 image the work splits into [`Self::chunks`] independent pieces: whoever holds the
/// check can compute [`Self::chunk_digest`] for each chunk, on as many processors as it likes, and
/// then hands the digests, in chunk order, to [`Self::finish`]. A scheme-1 image has no chunks;
/// [`Self::finish`] hashes all of it.
#[cfg(feature = "ed25519")]
pub struct SignatureCheck<'a> {
    /// The bytes passed in, padding included (parsing wants them as they came).
    bytes: &'a [u8],
    message: SignedMessage<'a>,
    scheme: SignatureScheme,
    key: ed25519_dalek::VerifyingKey,
    signature: ed25519_dalek::Signature,
}

#[cfg(feature = "ed25519")]
impl<'a> SignatureCheck<'a> {
    /// Reads what locates and names the signature (only the header fields a verifier needs, see
    /// `FORMAT.md`) and refuses at once an image that is unsigned, signed with another key or
    /// unreadable, or a public key that is unusable. `image` may be followed by padding.
    pub fn begin(image: &'a [u8], public_key: &[u8; KEY_LEN]) -> Result<Self, SignatureError> {
        use ed25519_dalek::{Signature, VerifyingKey};

        let (head, framed) = frame(image).map_err(SignatureError::Format)?;
        let value = u32_at(head, header::SIGNATURE_SCHEME);
        let scheme = match SignatureScheme::from_value(value) {
            Some(SignatureScheme::Unsigned) => return Err(SignatureError::Unsigned),
            Some(scheme) => scheme,
            None => {
                return Err(SignatureError::Format(
                    FormatError::UnknownSignatureScheme { scheme: value },
                ))
            }
        };
        let key = VerifyingKey::from_bytes(public_key).map_err(|_| SignatureError::BadPublicKey)?;
        // A small-order key accepts signatures that took no secret to make.
        if key.is_weak() {
            return Err(SignatureError::BadPublicKey);
        }
        let expected = KeyId::of(public_key);
        let found = KeyId(bytes_at(head, header::KEY_ID));
        if found != expected {
            return Err(SignatureError::WrongKey {
                image: found,
                expected,
            });
        }
        Ok(Self {
            bytes: image,
            message: SignedMessage::of(framed),
            scheme,
            key,
            signature: Signature::from_bytes(&bytes_at(head, header::SIGNATURE)),
        })
    }

    /// The image's signature scheme (1 or 2).
    pub fn scheme(&self) -> SignatureScheme {
        self.scheme
    }

    /// How many chunk digests [`Self::finish`] needs: none for scheme 1.
    pub fn chunks(&self) -> usize {
        match self.scheme {
            SignatureScheme::Ed25519Chunks => self.message.chunk_count(),
            SignatureScheme::Unsigned | SignatureScheme::Ed25519 => 0,
        }
    }

    /// The SHA-512 digest of chunk `index` of the signed message (of nothing, past the last chunk).
    pub fn chunk_digest(&self, index: usize) -> ChunkDigest {
        chunk_digest(&self.message, index)
    }

    /// Checks the signature, given the digest of every chunk in order (none for scheme 1, whose
    /// whole message is hashed here). Digests that are not exactly this image's fail as a signature
    /// that does not verify.
    pub fn finish(
        &self,
        digests: impl IntoIterator<Item = ChunkDigest>,
    ) -> Result<(), SignatureError> {
        // The streaming verifier hashes the message piece by piece, so the signature area can be fed
        // as zeros without copying the image, and the digests as they come.
        let mut verifier = self
            .key
            .verify_stream(&self.signature)
            .map_err(|_| SignatureError::BadSignature)?;
        let mut digests = digests.into_iter();
        match self.scheme {
            SignatureScheme::Ed25519Chunks => {
                let chunks = self.chunks();
                verifier.update(chunks_prefix(self.message.len()));
                for _ in 0..chunks {
                    let digest = digests.next().ok_or(SignatureError::BadSignature)?;
                    verifier.update(digest.0);
                }
            }
            SignatureScheme::Unsigned | SignatureScheme::Ed25519 => {
                for part in self.message.parts() {
                    verifier.update(part);
                }
            }
        }
        if digests.next().is_some() {
            return Err(SignatureError::BadSignature);
        }
        verifier
            .finalize_and_verify()
            .map_err(|_| SignatureError::BadSignature)
    }

    /// [`Self::finish`], then parses the image like [`Image::parse`] without summing its checksum
    /// again (see [`verify_and_parse`]).
    pub fn finish_and_parse(
        &self,
        digests: impl IntoIterator<Item = ChunkDigest>,
    ) -> Result<Image<'a>, SignatureError> {
        self.finish(digests)?;
        Image::parse_signed(self.bytes).map_err(SignatureError::Unusable)
    }

    /// Every chunk's digest, hashed in turn on this processor: what [`Self::finish`] needs when
    /// nobody shares the work.
    fn digests_here(&self) -> impl Iterator<Item = ChunkDigest> + '_ {
        (0..self.chunks()).map(|index| self.chunk_digest(index))
    }
}

/// SHA-512 of chunk `index` of `message`.
#[cfg(feature = "ed25519")]
fn chunk_digest(message: &SignedMessage<'_>, index: usize) -> ChunkDigest {
    use sha2::{Digest as _, Sha512};

    let mut hasher = Sha512::new();
    for piece in message.chunk(index) {
        hasher.update(piece);
    }
    ChunkDigest(hasher.finalize().into())
}

/// What scheme 2's digest list starts with: the tag, the chunk size and the image length.
#[cfg(feature = "ed25519")]
fn chunks_prefix(image_length: usize) -> [u8; 20] {
    let mut prefix = [0u8; 20];
    let (tag, rest) = prefix.split_at_mut(SIGNATURE_CHUNKS_TAG.len());
    tag.copy_from_slice(&SIGNATURE_CHUNKS_TAG);
    let (size, length) = rest.split_at_mut(4);
    size.copy_from_slice(&(SIGNATURE_CHUNK_SIZE as u32).to_le_bytes());
    length.copy_from_slice(&(image_length as u64).to_le_bytes());
    prefix
}

/// Checks that `image` is signed with the secret key belonging to `public_key`.
///
/// Only the header fields that locate the image are read before the signature is checked, so this
/// can run before [`Image::parse`] looks at anything else. `image` may be followed by padding. This
/// hashes the whole image on the calling processor; [`SignatureCheck`] lets several share the work.
#[cfg(feature = "ed25519")]
pub fn verify(image: &[u8], public_key: &[u8; KEY_LEN]) -> Result<(), SignatureError> {
    let check = SignatureCheck::begin(image, public_key)?;
    check.finish(check.digests_here())
}

/// Checks the signature like [`verify`], then parses the image like [`Image::parse`] without summing
/// its checksum again: the verified signature already covers the checksum field and every byte the
/// checksum covers. [`sign`] sums an image just before signing it, so for its images both ways give
/// the same result; this one reads the image once instead of twice.
#[cfg(feature = "ed25519")]
pub fn verify_and_parse<'a>(image: &'a [u8], public_key: &[u8; KEY_LEN]) -> Result<Image<'a>, SignatureError> {
    let check = SignatureCheck::begin(image, public_key)?;
    check.finish_and_parse(check.digests_here())
}

#[cfg(feature = "ed25519")]
impl Image<'_> {
    /// Checks that the image is signed with the secret key belonging to `public_key`.
    pub fn verify(&self, public_key: &[u8; KEY_LEN]) -> Result<(), SignatureError> {
        verify(self.as_bytes(), public_key)
    }
}

/// The Ed25519 public key of the key pair whose secret seed is `secret_key`.
#[cfg(feature = "ed25519")]
pub fn public_key(secret_key: &[u8; KEY_LEN]) -> [u8; KEY_LEN] {
    ed25519_dalek::SigningKey::from_bytes(secret_key)
        .verifying_key()
        .to_bytes()
}

/// Signs `image` in place with the key pair whose secret seed is `secret_key`, with scheme 2
/// (Ed25519 over chunk digests), which verifiers can check on several processors at once.
///
/// The image must parse; an image that is already signed is signed afresh. The header gets the
/// signature scheme and the key id, the checksum is recomputed (it covers the key id), and the
/// signature goes last because it covers everything else. Bytes of `image` past the declared
/// image length are left alone.
#[cfg(all(feature = "ed25519", feature = "alloc"))]
pub fn sign(image: &mut [u8], secret_key: &[u8; KEY_LEN]) -> Result<(), FormatError> {
    sign_with(image, secret_key, SignatureScheme::Ed25519Chunks)
}

/// Signs `image` like [`sign`], with the signature scheme asked for. [`SignatureScheme::Unsigned`]
/// takes any signature off instead (and gives the image a fresh checksum).
#[cfg(all(feature = "ed25519", feature = "alloc"))]
pub fn sign_with(
    image: &mut [u8],
    secret_key: &[u8; KEY_LEN],
    scheme: SignatureScheme,
) -> Result<(), FormatError> {
    use ed25519_dalek::{Signer as _, SigningKey};

    let length = Image::parse(image)?.len();
    let Some(image) = image.get_mut(..length) else {
        // `parse` checked that the buffer holds `length` bytes.
        return Err(FormatError::ImageTruncated {
            image_length: length as u64,
            available: image.len(),
        });
    };
    let signing_key = SigningKey::from_bytes(secret_key);
    let key_id = match scheme {
        SignatureScheme::Unsigned => KeyId([0; KEY_ID_LEN]),
        SignatureScheme::Ed25519 | SignatureScheme::Ed25519Chunks => {
            KeyId::of(&signing_key.verifying_key().to_bytes())
        }
    };

    put(image, header::SIGNATURE_SCHEME, &scheme.value().to_le_bytes());
    put(image, header::KEY_ID, &key_id.0);
    put(image, header::SIGNATURE, &ZERO_SIGNATURE);
    let sum = checksum(image);
    put(image, header::CHECKSUM, &sum.to_le_bytes());
    // The signature area is zero now, so the buffer is exactly the signed message.
    let signature = match scheme {
        SignatureScheme::Unsigned => return Ok(()),
        SignatureScheme::Ed25519 => signing_key.sign(image),
        SignatureScheme::Ed25519Chunks => {
            let message = SignedMessage::of(image);
            let mut digest_list = chunks_prefix(message.len()).to_vec();
            for index in 0..message.chunk_count() {
                digest_list.extend_from_slice(&chunk_digest(&message, index).0);
            }
            signing_key.sign(&digest_list)
        }
    };
    put(image, header::SIGNATURE, &signature.to_bytes());
    Ok(())
}

/// Copies `bytes` into the header of a parsed image, at a fixed offset from the layout.
#[cfg(all(feature = "ed25519", feature = "alloc"))]
fn put(image: &mut [u8], offset: usize, bytes: &[u8]) {
    if let Some(target) = offset
        .checked_add(bytes.len())
        .and_then(|end| image.get_mut(offset..end))
    {
        target.copy_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_is_the_start_of_the_public_key() {
        let mut key = [0u8; KEY_LEN];
        for (index, byte) in key.iter_mut().enumerate() {
            *byte = (index as u8).wrapping_mul(17);
        }
        let id = KeyId::of(&key);
        assert_eq!(id.0, [0, 17, 34, 51, 68, 85, 102, 119]);
        assert_eq!(id.to_string(), "0011223344556677");
        assert_eq!(format!("{id:?}"), "KeyId(0011223344556677)");
    }

    #[test]
    fn signed_message_blanks_the_signature_area() {
        let mut image = [0xabu8; 300];
        image[header::SIGNATURE..HEADER_SIZE].fill(0x11);
        let message = SignedMessage::of(&image);
        assert_eq!(message.len(), 300);
        let [before, zeros, after] = message.parts();
        assert_eq!(before, &image[..header::SIGNATURE]);
        assert!(zeros.iter().all(|&byte| byte == 0));
        assert_eq!(zeros.len(), header::SIGNATURE_LEN);
        assert_eq!(after, &image[HEADER_SIZE..]);
        assert_eq!(format!("{message:?}"), "SignedMessage { len: 300 }");
    }

    #[test]
    fn scheme_values_round_trip() {
        for scheme in [
            SignatureScheme::Unsigned,
            SignatureScheme::Ed25519,
            SignatureScheme::Ed25519Chunks,
        ] {
            assert_eq!(SignatureScheme::from_value(scheme.value()), Some(scheme));
        }
        assert_eq!(
            [0, 1, 2].map(SignatureScheme::from_value),
            [
                Some(SignatureScheme::Unsigned),
                Some(SignatureScheme::Ed25519),
                Some(SignatureScheme::Ed25519Chunks)
            ]
        );
        assert_eq!(SignatureScheme::from_value(3), None);
    }

    #[test]
    fn scheme_names() {
        assert_eq!(SignatureScheme::Unsigned.to_string(), "unsigned");
        assert_eq!(SignatureScheme::Ed25519.to_string(), "Ed25519");
        assert_eq!(
            SignatureScheme::Ed25519Chunks.to_string(),
            "Ed25519 over chunk digests"
        );
    }
}
