//! Signing and verifying images: round trips, tampering, the wrong key, unsigned images.

mod common;

use common::{build, reseal, XorShift, MIB};
use ed25519_dalek::{Signature, VerifyingKey};
use keel_dmfs::layout::{
    header, HEADER_SIZE, KEY_LEN, SIGNATURE_CHUNK_SIZE, SIGNATURE_ED25519, SIGNATURE_ED25519_CHUNKS,
};
use keel_dmfs::{
    public_key, sign, sign_with, verify, verify_and_parse, CapsuleSpec, ChunkDigest, FormatError, Image, KeyId,
    SignatureCheck, SignatureError, SignatureScheme,
};
use sha2::{Digest as _, Sha512};

/// RFC 8032, section 7.1, test 1: a known secret seed and its public key.
const RFC_SECRET: [u8; KEY_LEN] = [
    0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec, 0x2c, 0xc4,
    0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03, 0x1c, 0xae, 0x7f, 0x60,
];
const RFC_PUBLIC: [u8; KEY_LEN] = [
    0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe, 0xd3, 0xc9, 0x64, 0x07, 0x3a,
    0x0e, 0xe1, 0x72, 0xf3, 0xda, 0xa6, 0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68, 0xf7, 0x07, 0x51, 0x1a,
];
const OTHER_SECRET: [u8; KEY_LEN] = [0x42; KEY_LEN];

fn unsigned_image() -> Vec<u8> {
    let kernel: Vec<u8> = (0..6000u32).map(|index| (index * 7) as u8).collect();
    build(vec![CapsuleSpec {
        name: "boot".into(),
        kernel,
        initrd: Some(vec![0x5a; 2000]),
        cmdline: "console=ttyS0".into(),
        memory: 64 * MIB,
        boot: true,
        ..CapsuleSpec::default()
    }])
    .expect("a valid capsule builds")
}

fn signed_image() -> Vec<u8> {
    let mut image = unsigned_image();
    sign(&mut image, &RFC_SECRET).expect("a valid image can be signed");
    image
}

/// Offset of the boot capsule's kernel within the image.
fn kernel_offset(image: &[u8]) -> usize {
    let parsed = Image::parse(image).unwrap();
    let kernel = parsed.boot_capsule().unwrap().kernel;
    kernel.as_ptr() as usize - image.as_ptr() as usize
}

#[test]
fn public_key_matches_rfc_8032() {
    assert_eq!(public_key(&RFC_SECRET), RFC_PUBLIC);
}

#[test]
fn signed_image_verifies_and_still_parses() {
    let image = signed_image();
    assert_eq!(verify(&image, &RFC_PUBLIC), Ok(()));

    let parsed = Image::parse(&image).expect("a signed image parses");
    assert_eq!(parsed.signature_scheme(), SignatureScheme::Ed25519Chunks);
    assert_eq!(parsed.key_id(), Some(KeyId::of(&RFC_PUBLIC)));
    assert_eq!(parsed.verify(&RFC_PUBLIC), Ok(()));
    assert_eq!(
        u32::from_le_bytes(image[header::SIGNATURE_SCHEME..][..4].try_into().unwrap()),
        SIGNATURE_ED25519_CHUNKS
    );
    // Signing changes nothing but the header.
    assert_eq!(image[HEADER_SIZE..], unsigned_image()[HEADER_SIZE..]);
}

/// Scheme 2's signed digest list, computed from `FORMAT.md` alone: the tag, the chunk size and the image length,
/// then the SHA-512 of each 256 KiB chunk of the message.
fn documented_digest_list(message: &[u8]) -> Vec<u8> {
    let mut list = b"DMFSCHK1".to_vec();
    list.extend_from_slice(&(256u32 * 1024).to_le_bytes());
    list.extend_from_slice(&(message.len() as u64).to_le_bytes());
    for chunk in message.chunks(256 * 1024) {
        list.extend_from_slice(&Sha512::digest(chunk));
    }
    list
}

#[test]
fn signature_is_plain_ed25519_over_the_documented_message() {
    for image in [signed_image(), signed_large_image()] {
        let parsed = Image::parse(&image).unwrap();
        let message = parsed.signed_message().to_vec();
        assert_eq!(message.len(), image.len());
        assert!(message[header::SIGNATURE..HEADER_SIZE].iter().all(|&b| b == 0));
        assert_eq!(message[..header::SIGNATURE], image[..header::SIGNATURE]);
        assert_eq!(message[HEADER_SIZE..], image[HEADER_SIZE..]);

        // An independent, non-streaming check with the strictest verification the library offers.
        let signature = Signature::from_bytes(&parsed.signature().unwrap());
        let key = VerifyingKey::from_bytes(&RFC_PUBLIC).unwrap();
        let list = documented_digest_list(&message);
        assert_eq!(list.len(), 20 + 64 * message.len().div_ceil(256 * 1024));
        assert!(key.verify_strict(&list, &signature).is_ok());
    }
}

#[test]
fn scheme_1_images_still_verify() {
    let mut image = unsigned_image();
    sign_with(&mut image, &RFC_SECRET, SignatureScheme::Ed25519).unwrap();
    assert_eq!(
        u32::from_le_bytes(image[header::SIGNATURE_SCHEME..][..4].try_into().unwrap()),
        SIGNATURE_ED25519
    );
    let parsed = Image::parse(&image).unwrap();
    assert_eq!(parsed.signature_scheme(), SignatureScheme::Ed25519);
    assert_eq!(verify(&image, &RFC_PUBLIC), Ok(()));
    assert!(verify_and_parse(&image, &RFC_PUBLIC).is_ok());
    // Scheme 1 signs the message itself.
    let signature = Signature::from_bytes(&parsed.signature().unwrap());
    let key = VerifyingKey::from_bytes(&RFC_PUBLIC).unwrap();
    assert!(key.verify_strict(&parsed.signed_message().to_vec(), &signature).is_ok());
    // It has no chunks to share out.
    let check = SignatureCheck::begin(&image, &RFC_PUBLIC).unwrap();
    assert_eq!(check.chunks(), 0);
    assert_eq!(check.finish([]), Ok(()));

    let at = kernel_offset(&image) + 100;
    image[at] ^= 0x01;
    reseal(&mut image);
    assert_eq!(verify(&image, &RFC_PUBLIC), Err(SignatureError::BadSignature));

    // The scheme field is signed: a scheme-2 signature does not pass as scheme 1, nor the reverse.
    let mut relabelled = signed_image();
    relabelled[header::SIGNATURE_SCHEME] = SIGNATURE_ED25519 as u8;
    assert_eq!(verify(&relabelled, &RFC_PUBLIC), Err(SignatureError::BadSignature));
}

#[test]
fn signing_as_unsigned_takes_the_signature_off() {
    let mut image = signed_image();
    sign_with(&mut image, &RFC_SECRET, SignatureScheme::Unsigned).unwrap();
    assert_eq!(image, unsigned_image());
    assert_eq!(verify(&image, &RFC_PUBLIC), Err(SignatureError::Unsigned));
}

/// An image of several chunks, the last one short: a kernel of 800 KiB and an initrd of 100 KiB.
fn signed_large_image() -> Vec<u8> {
    let mut random = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut bytes = |length: usize| (0..length).map(|_| random.next() as u8).collect::<Vec<u8>>();
    let mut image = build(vec![CapsuleSpec {
        name: "boot".into(),
        kernel: bytes(800 * 1024),
        initrd: Some(bytes(100 * 1024)),
        cmdline: "console=ttyS0".into(),
        memory: 64 * MIB,
        boot: true,
        ..CapsuleSpec::default()
    }])
    .unwrap();
    sign(&mut image, &RFC_SECRET).unwrap();
    image
}

#[test]
fn chunks_can_be_hashed_in_any_order() {
    let image = signed_large_image();
    let check = SignatureCheck::begin(&image, &RFC_PUBLIC).unwrap();
    assert_eq!(check.scheme(), SignatureScheme::Ed25519Chunks);
    let chunks = check.chunks();
    assert_eq!(chunks, image.len().div_ceil(SIGNATURE_CHUNK_SIZE));
    assert!(chunks >= 3 && !image.len().is_multiple_of(SIGNATURE_CHUNK_SIZE));

    // As several harts would: last chunk first, each into its own slot.
    let mut digests = vec![ChunkDigest([0; 64]); chunks];
    for index in (0..chunks).rev() {
        digests[index] = check.chunk_digest(index);
    }
    // Each digest is the SHA-512 of that chunk of the message (signature area read as zeros).
    let message = Image::parse(&image).unwrap().signed_message().to_vec();
    for (index, chunk) in message.chunks(SIGNATURE_CHUNK_SIZE).enumerate() {
        assert_eq!(digests[index].0[..], Sha512::digest(chunk)[..], "chunk {index}");
    }
    assert_eq!(check.finish(digests.iter().copied()), Ok(()));
    let parsed = check.finish_and_parse(digests.iter().copied()).unwrap();
    assert_eq!(parsed.len(), image.len());

    // Digests out of order, one missing, one too many, one wrong: none verifies.
    let mut swapped = digests.clone();
    swapped.swap(0, 1);
    assert_eq!(check.finish(swapped), Err(SignatureError::BadSignature));
    assert_eq!(check.finish(digests[1..].iter().copied()), Err(SignatureError::BadSignature));
    let mut extra = digests.clone();
    extra.push(check.chunk_digest(chunks));
    assert_eq!(check.finish(extra), Err(SignatureError::BadSignature));
    let mut wrong = digests.clone();
    wrong[chunks - 1].0[5] ^= 1;
    assert_eq!(check.finish(wrong), Err(SignatureError::BadSignature));
}

#[test]
fn a_change_in_any_chunk_is_caught() {
    let original = signed_large_image();
    let chunks = original.len().div_ceil(SIGNATURE_CHUNK_SIZE);
    for index in 0..chunks {
        // A byte in the middle of the chunk, and the chunk's last byte (the image's last for the last chunk).
        let end = ((index + 1) * SIGNATURE_CHUNK_SIZE).min(original.len());
        for at in [index * SIGNATURE_CHUNK_SIZE + 1000, end - 1] {
            let mut image = original.clone();
            image[at] ^= 0x80;
            reseal(&mut image);
            assert_eq!(verify(&image, &RFC_PUBLIC), Err(SignatureError::BadSignature), "byte {at:#x}");
        }
    }
    // A chunk of the same length moved elsewhere is caught too.
    let mut image = original.clone();
    let (first, second) = image.split_at_mut(2 * SIGNATURE_CHUNK_SIZE);
    first[SIGNATURE_CHUNK_SIZE..].swap_with_slice(&mut second[..SIGNATURE_CHUNK_SIZE]);
    reseal(&mut image);
    assert_eq!(verify(&image, &RFC_PUBLIC), Err(SignatureError::BadSignature));
}

#[test]
fn checks_refuse_before_hashing() {
    let image = signed_large_image();
    assert!(matches!(SignatureCheck::begin(&unsigned_image(), &RFC_PUBLIC), Err(SignatureError::Unsigned)));
    assert!(matches!(
        SignatureCheck::begin(&image, &public_key(&OTHER_SECRET)),
        Err(SignatureError::WrongKey { .. })
    ));
    assert!(matches!(SignatureCheck::begin(&image, &[0; KEY_LEN]), Err(SignatureError::BadPublicKey)));
}

#[test]
fn signing_is_deterministic_and_repeatable() {
    let once = signed_image();
    let mut twice = once.clone();
    sign(&mut twice, &RFC_SECRET).unwrap();
    assert_eq!(once, twice);
}

#[test]
fn unsigned_image_is_reported_as_unsigned() {
    let image = unsigned_image();
    assert_eq!(verify(&image, &RFC_PUBLIC), Err(SignatureError::Unsigned));
    let parsed = Image::parse(&image).unwrap();
    assert_eq!(parsed.signature_scheme(), SignatureScheme::Unsigned);
    assert_eq!(parsed.key_id(), None);
    assert_eq!(parsed.signature(), None);
    assert_eq!(
        SignatureError::Unsigned.to_string(),
        "DMFS image is unsigned (signature scheme 0)"
    );
}

#[test]
fn wrong_key_is_named_with_both_ids() {
    let image = signed_image();
    let other_public = public_key(&OTHER_SECRET);
    let error = verify(&image, &other_public).unwrap_err();
    assert_eq!(
        error,
        SignatureError::WrongKey {
            image: KeyId::of(&RFC_PUBLIC),
            expected: KeyId::of(&other_public),
        }
    );
    assert_eq!(
        error.to_string(),
        format!(
            "DMFS image was signed with key d75a980182b10ab7, not with the expected key {}",
            KeyId::of(&other_public)
        )
    );
}

#[test]
fn resigning_with_another_key_replaces_the_signature() {
    let mut image = signed_image();
    sign(&mut image, &OTHER_SECRET).unwrap();
    assert_eq!(verify(&image, &public_key(&OTHER_SECRET)), Ok(()));
    assert!(matches!(
        verify(&image, &RFC_PUBLIC),
        Err(SignatureError::WrongKey { .. })
    ));
}

#[test]
fn corrupted_payload_fails_both_checksum_and_signature() {
    let mut image = signed_image();
    let at = kernel_offset(&image) + 100;
    image[at] ^= 0x01;
    assert_eq!(
        verify(&image, &RFC_PUBLIC),
        Err(SignatureError::BadSignature)
    );
    assert!(matches!(
        Image::parse(&image),
        Err(FormatError::ChecksumMismatch { .. })
    ));
}

#[test]
fn forged_payload_with_a_fixed_checksum_fails_the_signature_only() {
    let mut image = signed_image();
    let at = kernel_offset(&image) + 100;
    image[at] ^= 0x01;
    reseal(&mut image);
    // The checksum cannot tell; the signature can.
    assert!(Image::parse(&image).is_ok());
    let error = verify(&image, &RFC_PUBLIC).unwrap_err();
    assert_eq!(error, SignatureError::BadSignature);
    assert!(error.to_string().contains("altered after it was signed"));
}

#[test]
fn every_covered_header_field_is_protected() {
    let original = signed_image();
    let offsets = [
        header::VERSION + 1,
        header::CHECKSUM,
        header::IMAGE_LENGTH,
        header::TABLE_OFFSET,
        header::CAPSULE_COUNT,
        header::RECORD_SIZE + 3,
        header::RESERVED + 5,
        HEADER_SIZE,
    ];
    for offset in offsets {
        let mut image = original.clone();
        image[offset] ^= 0x10;
        assert!(
            verify(&image, &RFC_PUBLIC).is_err(),
            "a flip at {offset:#x} was accepted"
        );
    }
    // A changed key id makes the image name another key.
    let mut image = original.clone();
    image[header::KEY_ID] ^= 1;
    assert!(matches!(
        verify(&image, &RFC_PUBLIC),
        Err(SignatureError::WrongKey { .. })
    ));
}

#[test]
fn damaged_signature_is_refused() {
    for offset in [
        header::SIGNATURE,
        header::SIGNATURE + 31,
        header::SIGNATURE + 40,
    ] {
        let mut image = signed_image();
        image[offset] ^= 0x04;
        assert_eq!(
            verify(&image, &RFC_PUBLIC),
            Err(SignatureError::BadSignature),
            "signature byte {offset:#x}"
        );
    }
    // A scalar half that is not reduced modulo the group order is refused outright.
    let mut image = signed_image();
    image[header::SIGNATURE + 63] |= 0xf0;
    assert_eq!(
        verify(&image, &RFC_PUBLIC),
        Err(SignatureError::BadSignature)
    );
}

#[test]
fn weak_public_keys_are_refused() {
    let image = signed_image();
    // The identity point, and a point of order 4 (y = 0).
    let mut identity = [0u8; KEY_LEN];
    identity[0] = 1;
    for key in [identity, [0u8; KEY_LEN]] {
        assert_eq!(verify(&image, &key), Err(SignatureError::BadPublicKey));
    }
}

#[test]
fn padding_after_the_image_is_not_signed() {
    let mut image = signed_image();
    image.extend_from_slice(&[0xee; 4096]);
    assert_eq!(verify(&image, &RFC_PUBLIC), Ok(()));
    // Signing a padded buffer leaves the padding alone.
    let mut padded = unsigned_image();
    padded.extend_from_slice(&[0xee; 100]);
    sign(&mut padded, &RFC_SECRET).unwrap();
    assert_eq!(padded[padded.len() - 100..], [0xee; 100]);
    assert_eq!(verify(&padded, &RFC_PUBLIC), Ok(()));
}

#[test]
fn unreadable_headers_are_format_errors() {
    assert_eq!(
        verify(b"not an image at all", &RFC_PUBLIC),
        Err(SignatureError::Format(FormatError::BadMagic {
            found: *b"not an i"
        }))
    );
    let image = signed_image();
    assert_eq!(
        verify(&image[..100], &RFC_PUBLIC),
        Err(SignatureError::Format(FormatError::Truncated {
            length: 100
        }))
    );
    assert!(matches!(
        verify(&image[..image.len() - 1], &RFC_PUBLIC),
        Err(SignatureError::Format(FormatError::ImageTruncated { .. }))
    ));
    let mut unknown = image.clone();
    unknown[header::SIGNATURE_SCHEME] = 9;
    assert_eq!(
        verify(&unknown, &RFC_PUBLIC),
        Err(SignatureError::Format(
            FormatError::UnknownSignatureScheme { scheme: 9 }
        ))
    );
    assert!(Image::parse(&unknown).is_err());
}

#[test]
fn sign_refuses_what_does_not_parse() {
    let mut garbage = vec![0u8; 4096];
    assert!(matches!(
        sign(&mut garbage, &RFC_SECRET),
        Err(FormatError::BadMagic { .. })
    ));
    assert!(garbage.iter().all(|&byte| byte == 0), "nothing was written");
    let mut corrupted = unsigned_image();
    corrupted[HEADER_SIZE + 200] ^= 1;
    assert!(matches!(
        sign(&mut corrupted, &RFC_SECRET),
        Err(FormatError::ChecksumMismatch { .. })
    ));
}

#[test]
fn signed_images_keep_reserved_bytes_zero() {
    let mut image = signed_image();
    image[header::RESERVED + 11] = 1;
    reseal(&mut image);
    assert_eq!(
        Image::parse(&image).map(|_| ()),
        Err(FormatError::ReservedHeaderByte {
            offset: header::RESERVED + 11
        })
    );
}

#[test]
fn random_flips_never_verify() {
    let original = signed_image();
    let mut random = XorShift(0x2545_f491_4f6c_dd1d);
    for _ in 0..200 {
        let state = random.next();
        let position = (state % original.len() as u64) as usize;
        let bit = (state >> 32) % 8;
        let mut image = original.clone();
        image[position] ^= 1 << bit;
        assert!(
            verify(&image, &RFC_PUBLIC).is_err(),
            "flipping bit {bit} at {position:#x} went unnoticed"
        );
    }
}

/// Signs `image` exactly as it is, without the checks and the fresh checksum that `sign` adds: an
/// image that `sign` would refuse, signed by a key holder anyway.
fn sign_as_is(image: &mut [u8], secret: &[u8; KEY_LEN]) {
    use ed25519_dalek::{Signer as _, SigningKey};
    image[header::SIGNATURE..HEADER_SIZE].fill(0);
    let signature = SigningKey::from_bytes(secret).sign(&documented_digest_list(image));
    image[header::SIGNATURE..HEADER_SIZE].copy_from_slice(&signature.to_bytes());
}

#[test]
fn verify_and_parse_reads_what_parse_reads() {
    let image = signed_image();
    let both = verify_and_parse(&image, &RFC_PUBLIC).expect("a signed image verifies and parses");
    let parsed = Image::parse(&image).unwrap();
    assert_eq!(both.len(), parsed.len());
    assert_eq!(both.boot_capsule().unwrap().kernel, parsed.boot_capsule().unwrap().kernel);
    assert_eq!(both.key_id(), Some(KeyId::of(&RFC_PUBLIC)));

    // Every refusal of `verify` is a refusal here too.
    let mut tampered = image.clone();
    let at = kernel_offset(&tampered) + 100;
    tampered[at] ^= 0x10;
    assert_eq!(verify_and_parse(&tampered, &RFC_PUBLIC).map(|_| ()), Err(SignatureError::BadSignature));
    assert_eq!(verify_and_parse(&unsigned_image(), &RFC_PUBLIC).map(|_| ()), Err(SignatureError::Unsigned));
}

#[test]
fn verify_and_parse_trusts_the_signature_for_the_checksum_only() {
    // A key holder signed an image whose checksum is wrong: the signature vouches for every byte, so the
    // checksum is not summed again...
    let mut image = signed_image();
    image[header::CHECKSUM] ^= 0xff;
    sign_as_is(&mut image, &RFC_SECRET);
    assert!(matches!(Image::parse(&image), Err(FormatError::ChecksumMismatch { .. })));
    assert!(verify_and_parse(&image, &RFC_PUBLIC).is_ok());

    // ...but every other rule of the format still holds for a signed image.
    let mut image = signed_image();
    image[header::CAPSULE_COUNT..][..4].copy_from_slice(&1000u32.to_le_bytes());
    sign_as_is(&mut image, &RFC_SECRET);
    let refused = verify_and_parse(&image, &RFC_PUBLIC).map(|_| ());
    assert_eq!(refused, Err(SignatureError::Unusable(FormatError::TooManyCapsules { count: 1000 })));
    assert!(refused.unwrap_err().to_string().starts_with("the DMFS image is signed, but unusable: "));
}
