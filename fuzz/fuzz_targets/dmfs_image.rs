//! Fuzzes the DMFS image parser: arbitrary bytes, and the same bytes with a valid checksum so that
//! mutations reach the capsule table instead of stopping at the CRC.
#![no_main]

use keel_dmfs::layout::{header, HEADER_SIZE};
use keel_dmfs::{CapsuleSpec, DiskSpec, Image, ImageBuilder};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

/// A key pair's public half, fixed across runs: verifying arbitrary images against it must fail
/// cleanly, never panic.
static PUBLIC_KEY: LazyLock<[u8; 32]> = LazyLock::new(|| keel_dmfs::public_key(&[0x4b; 32]));

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Some(fixed) = with_valid_checksum(data) {
        check(&fixed);
    }
});

/// `data` with the header's checksum field recomputed over the declared image length, when the
/// header is long enough to say how long the image is.
fn with_valid_checksum(data: &[u8]) -> Option<Vec<u8>> {
    let length_field = data.get(header::IMAGE_LENGTH..header::IMAGE_LENGTH + 8)?;
    let length = u64::from_le_bytes(length_field.try_into().ok()?);
    let length = usize::try_from(length).ok()?.max(HEADER_SIZE);
    let mut fixed = data.to_vec();
    let sum = keel_dmfs::checksum(fixed.get(..length)?);
    fixed[header::CHECKSUM..header::CHECKSUM + 4].copy_from_slice(&sum.to_le_bytes());
    Some(fixed)
}

fn check(data: &[u8]) {
    // Verification only frames the image; it must cope with anything.
    let _ = keel_dmfs::verify(data, &PUBLIC_KEY);
    let Ok(image) = Image::parse(data) else {
        return;
    };
    let bytes = image.as_bytes();
    assert!(bytes.len() <= data.len() && bytes.len() >= HEADER_SIZE);
    assert_eq!(bytes.as_ptr(), data.as_ptr());
    assert_eq!(image.len(), bytes.len());
    let _ = (
        image.version(),
        image.signature_scheme(),
        image.key_id(),
        image.signature(),
    );
    let _ = format!("{image:?}");
    let message = image.signed_message();
    assert_eq!(message.len(), image.len());
    assert_eq!(
        message.parts().iter().map(|part| part.len()).sum::<usize>(),
        image.len()
    );
    // Scheme 2's chunks cover the message exactly once.
    let chunked: usize = (0..=message.chunk_count())
        .flat_map(|index| message.chunk(index))
        .map(<[u8]>::len)
        .sum();
    assert_eq!(chunked, image.len());
    let _ = image.verify(&PUBLIC_KEY);

    let range = bytes.as_ptr_range();
    let inside = |slice: &[u8]| {
        let slice = slice.as_ptr_range();
        range.start <= slice.start && slice.end <= range.end
    };
    let capsules: Vec<_> = image.capsules().collect();
    assert_eq!(capsules.len(), image.capsule_count());
    let mut boot = None;
    let mut extents: Vec<(u64, u64)> = Vec::new();
    for capsule in &capsules {
        assert!(inside(capsule.kernel) && !capsule.kernel.is_empty());
        assert!(capsule.initrd.is_none_or(inside));
        assert!(inside(capsule.name.as_bytes()) && !capsule.name.is_empty());
        assert!(inside(capsule.cmdline.as_bytes()) || capsule.cmdline.is_empty());
        assert!((1..=64).contains(&capsule.vcpus));
        assert!(capsule.memory > 0 && capsule.memory % (2 << 20) == 0);
        assert_eq!(image.capsule(capsule.name), Some(*capsule));
        assert_eq!(capsule.disks.count(), capsule.disk_count());
        for disk in capsule.disks {
            assert!(inside(disk.name.as_bytes()) && !disk.name.is_empty());
            assert!(disk.sectors > 0);
            // The extent's end fits in 64 bits, in sectors and in bytes.
            let end = disk.start_sector.checked_add(disk.sectors);
            assert!(end.and_then(|end| end.checked_mul(512)).is_some());
            assert_eq!(
                disk.byte_range().end - disk.byte_range().start,
                disk.size_bytes()
            );
            // No two disks of an image share a sector.
            for &(start, end) in &extents {
                assert!(
                    disk.end_sector() <= start || end <= disk.start_sector,
                    "overlapping disks parsed"
                );
            }
            extents.push((disk.start_sector, disk.end_sector()));
        }
        if capsule.boot {
            assert!(boot.is_none(), "two boot capsules passed the parser");
            boot = Some(*capsule);
        }
        let _ = format!("{capsule:?} {} {}", capsule.restart, capsule.kernel_format);
    }
    assert_eq!(image.boot_capsule(), boot);

    // Whatever parses can be written again by the builder, and reads back the same.
    let mut builder = ImageBuilder::new();
    for capsule in &capsules {
        builder = builder
            .capsule(CapsuleSpec {
                name: capsule.name.to_owned(),
                kernel: capsule.kernel.to_vec(),
                initrd: capsule.initrd.map(<[u8]>::to_vec),
                cmdline: capsule.cmdline.to_owned(),
                memory: capsule.memory,
                vcpus: capsule.vcpus,
                autostart: capsule.autostart,
                boot: capsule.boot,
                mac: capsule.mac,
                may_manage: capsule.may_manage,
                restart: capsule.restart,
                kernel_format: capsule.kernel_format,
                disks: capsule
                    .disks
                    .map(|disk| DiskSpec {
                        name: disk.name.to_owned(),
                        start_sector: disk.start_sector,
                        sectors: disk.sectors,
                        read_only: disk.read_only,
                    })
                    .collect(),
            })
            .unwrap_or_else(|error| panic!("the builder refuses a parsed capsule: {error}"));
    }
    let rebuilt = builder
        .build()
        .unwrap_or_else(|error| panic!("the builder refuses a parsed image: {error}"));
    let reparsed = Image::parse(&rebuilt)
        .unwrap_or_else(|error| panic!("a rebuilt image does not parse: {error}"));
    assert!(reparsed.capsules().eq(capsules.iter().copied()));
}
