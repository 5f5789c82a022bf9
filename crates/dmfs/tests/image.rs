//! Round trips through the writer and parser, and every kind of corruption the parser must catch.

mod common;

use common::{
    build, field_error, get_u64, parse_changed, record_base, reseal, set_u16, set_u32, set_u64,
    XorShift, MIB,
};
use keel_dmfs::layout::{self, flags, header, record, HEADER_SIZE, RECORD_SIZE};
use keel_dmfs::{
    BuildError, CapsuleProblem, CapsuleSpec, Field, FieldProblem, FormatError, Image, ImageBuilder,
    KernelFormat, RestartPolicy,
};

fn kernel(seed: u8, length: usize) -> Vec<u8> {
    (0..length)
        .map(|index| (index as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn boot_spec() -> CapsuleSpec {
    CapsuleSpec {
        name: "alpha".into(),
        kernel: kernel(1, 5000),
        initrd: Some(kernel(2, 3000)),
        cmdline: "console=ttyS0 earlycon".into(),
        memory: 256 * MIB,
        vcpus: 2,
        autostart: true,
        boot: true,
        may_manage: true,
        restart: RestartPolicy::OnFailure,
        kernel_format: KernelFormat::LinuxImage,
        mac: Some([0x02, 0x00, 0x5e, 0x10, 0x00, 0x01]),
        disks: Vec::new(),
    }
}

fn second_spec() -> CapsuleSpec {
    CapsuleSpec {
        name: "bravo".into(),
        kernel: kernel(3, 100),
        memory: 32 * MIB,
        restart: RestartPolicy::Always,
        kernel_format: KernelFormat::Flat,
        ..CapsuleSpec::default()
    }
}

fn valid_image() -> Vec<u8> {
    build(vec![boot_spec(), second_spec()]).expect("valid capsules build")
}

/// Applies `change` to a valid image, reseals it and returns the parse result.
fn corrupt(change: impl FnOnce(&mut Vec<u8>)) -> Result<(), FormatError> {
    parse_changed(valid_image(), change)
}

#[test]
fn round_trip_keeps_every_field() {
    let bytes = valid_image();
    assert_eq!(bytes.len() % 4096, 0);
    let image = Image::parse(&bytes).expect("written image parses");
    assert_eq!(image.version(), 3);
    assert_eq!(image.len(), bytes.len());
    assert_eq!(image.capsule_count(), 2);

    let capsules: Vec<_> = image.capsules().collect();
    assert_eq!(capsules.len(), 2);
    let alpha = capsules[0];
    let spec = boot_spec();
    assert_eq!(alpha.name, "alpha");
    assert_eq!(alpha.kernel, spec.kernel.as_slice());
    assert_eq!(alpha.initrd, spec.initrd.as_deref());
    assert_eq!(alpha.cmdline, spec.cmdline);
    assert_eq!((alpha.memory, alpha.vcpus), (256 * MIB, 2));
    assert!(alpha.autostart && alpha.boot && alpha.may_manage);
    assert_eq!(alpha.restart, RestartPolicy::OnFailure);
    assert_eq!(alpha.kernel_format, KernelFormat::LinuxImage);
    assert_eq!(alpha.mac, Some([0x02, 0x00, 0x5e, 0x10, 0x00, 0x01]));

    let bravo = capsules[1];
    assert_eq!(bravo.name, "bravo");
    assert_eq!(bravo.kernel, kernel(3, 100).as_slice());
    assert_eq!(bravo.initrd, None);
    assert_eq!(bravo.cmdline, "");
    assert_eq!((bravo.memory, bravo.vcpus), (32 * MIB, 1));
    assert!(!bravo.autostart && !bravo.boot && !bravo.may_manage);
    assert_eq!(bravo.restart, RestartPolicy::Always);
    assert_eq!(bravo.kernel_format, KernelFormat::Flat);
    assert_eq!(bravo.mac, None);

    assert_eq!(image.capsule("bravo"), Some(bravo));
    assert_eq!(image.capsule("charlie"), None);
    assert_eq!(image.boot_capsule(), Some(alpha));
}

#[test]
fn debug_output_shows_sizes_not_payloads() {
    let bytes = valid_image();
    let image = Image::parse(&bytes).unwrap();
    let text = format!("{image:?} {:?}", image.boot_capsule().unwrap());
    assert!(text.contains("capsule_count: 2"), "{text}");
    assert!(
        text.contains("kernel_len: 5000") && text.contains("initrd_len: Some(3000)"),
        "{text}"
    );
    assert!(text.len() < 1000, "{text}");
}

#[test]
fn payloads_are_page_aligned_within_the_image() {
    let bytes = valid_image();
    let image = Image::parse(&bytes).unwrap();
    let base = bytes.as_ptr() as usize;
    for capsule in image.capsules() {
        assert_eq!(
            (capsule.kernel.as_ptr() as usize - base) % 4096,
            0,
            "{} kernel",
            capsule.name
        );
        if let Some(initrd) = capsule.initrd {
            assert_eq!(
                (initrd.as_ptr() as usize - base) % 4096,
                0,
                "{} initrd",
                capsule.name
            );
        }
    }
}

#[test]
fn identical_payloads_are_stored_once() {
    let shared = kernel(9, 10_000);
    let build = |second_kernel: Vec<u8>| {
        ImageBuilder::new()
            .capsule(CapsuleSpec {
                name: "one".into(),
                kernel: shared.clone(),
                memory: 16 * MIB,
                ..Default::default()
            })
            .and_then(|b| {
                b.capsule(CapsuleSpec {
                    name: "two".into(),
                    kernel: second_kernel,
                    memory: 16 * MIB,
                    ..Default::default()
                })
            })
            .and_then(|b| b.build())
            .unwrap()
    };
    let deduplicated = build(shared.clone());
    let distinct = build(kernel(10, 10_000));
    assert!(deduplicated.len() < distinct.len());
    let image = Image::parse(&deduplicated).unwrap();
    let one = image.capsule("one").unwrap();
    let two = image.capsule("two").unwrap();
    assert_eq!(one.kernel.as_ptr(), two.kernel.as_ptr());
    assert_eq!(two.kernel, shared.as_slice());
}

#[test]
fn image_without_capsules_parses() {
    let bytes = ImageBuilder::new().build().unwrap();
    let image = Image::parse(&bytes).unwrap();
    assert_eq!(image.capsule_count(), 0);
    assert_eq!(image.capsules().count(), 0);
    assert_eq!(image.boot_capsule(), None);
}

#[test]
fn trailing_bytes_after_the_image_are_ignored() {
    let mut bytes = valid_image();
    let length = bytes.len();
    bytes.extend_from_slice(&[0xee; 4096]);
    let image = Image::parse(&bytes).unwrap();
    assert_eq!(image.len(), length);
    assert_eq!(image.as_bytes(), &bytes[..length]);
}

#[test]
fn rejects_bad_magic() {
    let mut bytes = valid_image();
    bytes[..8].copy_from_slice(b"NOTDMFS!");
    let error = Image::parse(&bytes).unwrap_err();
    assert_eq!(
        error,
        FormatError::BadMagic {
            found: *b"NOTDMFS!"
        }
    );
    assert_eq!(
        error.to_string(),
        "not a DMFS image: magic is \"NOTDMFS!\", expected \"KEELDMFS\""
    );
    // A short foreign file is reported as foreign, not as truncated.
    assert!(matches!(
        Image::parse(b"\x7fELF\x02\x01\x01\x00\x00"),
        Err(FormatError::BadMagic { .. })
    ));
}

#[test]
fn rejects_truncated_input() {
    assert_eq!(
        Image::parse(&[]).err(),
        Some(FormatError::Truncated { length: 0 })
    );
    let bytes = valid_image();
    assert_eq!(
        Image::parse(&bytes[..100]).err(),
        Some(FormatError::Truncated { length: 100 })
    );
    let cut = bytes.len() - 1;
    assert_eq!(
        Image::parse(&bytes[..cut]).err(),
        Some(FormatError::ImageTruncated {
            image_length: bytes.len() as u64,
            available: cut
        })
    );
}

#[test]
fn rejects_unknown_version_naming_both() {
    let error = corrupt(|image| set_u16(image, header::VERSION, 4)).unwrap_err();
    assert_eq!(error, FormatError::UnsupportedVersion { found: 4 });
    assert_eq!(
        error.to_string(),
        "DMFS format version 4 is not supported; this build reads versions 1 to 3"
    );
    assert_eq!(
        corrupt(|image| set_u16(image, header::VERSION, 0)),
        Err(FormatError::UnsupportedVersion { found: 0 })
    );
}

#[test]
fn rejects_checksum_mismatch() {
    let mut bytes = valid_image();
    let stored = u32::from_le_bytes(
        bytes[header::CHECKSUM..header::CHECKSUM + 4]
            .try_into()
            .unwrap(),
    );
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    let Err(FormatError::ChecksumMismatch {
        stored: found,
        computed,
    }) = Image::parse(&bytes)
    else {
        panic!("expected a checksum mismatch");
    };
    assert_eq!(found, stored);
    assert_ne!(computed, stored);
}

#[test]
fn rejects_bad_header_fields() {
    assert_eq!(
        corrupt(|i| set_u16(i, header::HEADER_SIZE, 64)),
        Err(FormatError::BadHeaderSize { found: 64 })
    );
    assert_eq!(
        corrupt(|i| set_u32(i, header::RECORD_SIZE, 128)),
        Err(FormatError::BadRecordSize { found: 128 })
    );
    assert_eq!(
        corrupt(|i| set_u32(i, header::SIGNATURE_SCHEME, 3)),
        Err(FormatError::UnknownSignatureScheme { scheme: 3 })
    );
    // An unsigned image has no key id.
    assert_eq!(
        corrupt(|i| i[header::KEY_ID + 2] = 1),
        Err(FormatError::ReservedHeaderByte {
            offset: header::KEY_ID + 2
        })
    );
    assert_eq!(
        corrupt(|i| i[header::RESERVED + 3] = 1),
        Err(FormatError::ReservedHeaderByte {
            offset: header::RESERVED + 3
        })
    );
    assert_eq!(
        corrupt(|i| i[header::SIGNATURE + 63] = 1),
        Err(FormatError::ReservedHeaderByte {
            offset: header::SIGNATURE + 63
        })
    );
}

#[test]
fn rejects_bad_image_length() {
    let mut bytes = valid_image();
    set_u64(&mut bytes, header::IMAGE_LENGTH, 64);
    assert_eq!(
        Image::parse(&bytes).err(),
        Some(FormatError::ImageLengthTooSmall { image_length: 64 })
    );
    set_u64(&mut bytes, header::IMAGE_LENGTH, u64::MAX);
    assert_eq!(
        Image::parse(&bytes).err(),
        Some(FormatError::ImageTruncated {
            image_length: u64::MAX,
            available: bytes.len()
        })
    );
}

#[test]
fn rejects_bad_capsule_table() {
    assert_eq!(
        corrupt(|i| set_u32(i, header::CAPSULE_COUNT, 257)),
        Err(FormatError::TooManyCapsules { count: 257 })
    );
    assert_eq!(
        corrupt(|i| set_u64(i, header::TABLE_OFFSET, 132)),
        Err(FormatError::TableMisaligned { offset: 132 })
    );
    assert_eq!(
        corrupt(|i| set_u64(i, header::TABLE_OFFSET, 64)),
        Err(FormatError::TableOverlapsHeader { offset: 64 })
    );
    let Err(FormatError::TableOutOfRange { count: 256, .. }) =
        corrupt(|i| set_u32(i, header::CAPSULE_COUNT, 256))
    else {
        panic!("a table of 256 records does not fit in the test image");
    };
    // Offset plus table size overflows 64 bits.
    let far = u64::MAX - 7;
    assert!(matches!(
        corrupt(|i| set_u64(i, header::TABLE_OFFSET, far)),
        Err(FormatError::TableOutOfRange { offset, .. }) if offset == far
    ));
}

#[test]
fn rejects_fields_out_of_range() {
    let length = valid_image().len() as u64;
    let result = corrupt(|i| {
        let base = record_base(i, 1);
        set_u64(i, base + record::KERNEL, length);
    });
    assert_eq!(
        result,
        field_error(
            1,
            Field::Kernel,
            FieldProblem::OutOfRange {
                offset: length,
                length: 100,
                image_length: length
            }
        )
    );
}

#[test]
fn rejects_overflowing_offset_plus_length() {
    let offset = u64::MAX - 4;
    let result = corrupt(|i| {
        let base = record_base(i, 0);
        set_u64(i, base + record::CMDLINE, offset);
    });
    assert_eq!(
        result,
        field_error(
            0,
            Field::Cmdline,
            FieldProblem::Overflows { offset, length: 22 }
        )
    );
    let message = result.unwrap_err().to_string();
    assert!(
        message.contains("capsule #0")
            && message.contains("command line")
            && message.contains("overflows"),
        "{message}"
    );
}

#[test]
fn rejects_fields_overlapping_header_or_table() {
    let result = corrupt(|i| {
        let base = record_base(i, 0);
        set_u64(i, base + record::NAME, 8);
    });
    assert_eq!(
        result,
        field_error(
            0,
            Field::Name,
            FieldProblem::OverlapsHeader {
                offset: 8,
                length: 5
            }
        )
    );

    let table = HEADER_SIZE as u64;
    let result = corrupt(|i| {
        let base = record_base(i, 1);
        set_u64(i, base + record::NAME, table + 10);
    });
    assert_eq!(
        result,
        field_error(
            1,
            Field::Name,
            FieldProblem::OverlapsTable {
                offset: table + 10,
                length: 5
            }
        )
    );
    // A payload at offset 0 is both misplaced and overlapping: the header overlap is reported.
    let result = corrupt(|i| {
        let base = record_base(i, 0);
        set_u64(i, base + record::KERNEL, 0);
    });
    assert_eq!(
        result,
        field_error(
            0,
            Field::Kernel,
            FieldProblem::OverlapsHeader {
                offset: 0,
                length: 5000
            }
        )
    );
}

#[test]
fn rejects_misaligned_payloads() {
    let result = corrupt(|i| {
        let base = record_base(i, 0);
        let offset = get_u64(i, base + record::KERNEL);
        set_u64(i, base + record::KERNEL, offset + 8);
    });
    let Err(FormatError::Field {
        capsule: 0,
        field: Field::Kernel,
        problem: FieldProblem::Misaligned { offset },
    }) = result
    else {
        panic!("expected misaligned kernel, got {result:?}");
    };
    assert_eq!(offset % 4096, 8);
}

#[test]
fn rejects_offset_without_length() {
    let result = corrupt(|i| {
        let base = record_base(i, 1);
        set_u64(i, base + record::INITRD, 4096);
    });
    assert_eq!(
        result,
        field_error(
            1,
            Field::Initrd,
            FieldProblem::OffsetWithoutLength { offset: 4096 }
        )
    );
}

fn capsule_error(capsule: u32, problem: CapsuleProblem) -> Result<(), FormatError> {
    Err(FormatError::Capsule { capsule, problem })
}

fn name_offset(image: &[u8], index: usize) -> usize {
    get_u64(image, record_base(image, index) + record::NAME) as usize
}

#[test]
fn rejects_bad_names() {
    let result = corrupt(|i| {
        let at = name_offset(i, 1);
        i[at + 2] = 0xff;
    });
    assert_eq!(result, capsule_error(1, CapsuleProblem::NameNotUtf8));
    let result = corrupt(|i| {
        let at = name_offset(i, 1);
        i[at] = b' ';
    });
    assert_eq!(
        result,
        capsule_error(1, CapsuleProblem::NameInvalidCharacter { character: ' ' })
    );
    let result = corrupt(|i| {
        let base = record_base(i, 0);
        set_u64(i, base + record::NAME, 0);
        set_u64(i, base + record::NAME + 8, 0);
    });
    assert_eq!(result, capsule_error(0, CapsuleProblem::EmptyName));
}

#[test]
fn rejects_duplicate_names() {
    let result = corrupt(|i| {
        let first = name_offset(i, 0);
        let second = name_offset(i, 1);
        let name: Vec<u8> = i[first..first + 5].to_vec();
        i[second..second + 5].copy_from_slice(&name);
    });
    let error = result.unwrap_err();
    let FormatError::DuplicateName {
        name,
        first: 0,
        second: 1,
    } = error
    else {
        panic!("expected a duplicate name, got {error:?}");
    };
    assert_eq!(name.as_str(), "alpha");
    assert_eq!(
        error.to_string(),
        "DMFS capsules #0 and #1 are both named \"alpha\""
    );
}

#[test]
fn rejects_two_boot_capsules() {
    let error = corrupt(|i| {
        let base = record_base(i, 1);
        set_u32(i, base + record::FLAGS, flags::BOOT);
    })
    .unwrap_err();
    assert_eq!(
        error,
        FormatError::MultipleBootCapsules {
            first: 0,
            second: 1
        }
    );
    assert_eq!(
        error.to_string(),
        "DMFS capsules #0 and #1 are both marked as the boot capsule"
    );
}

#[test]
fn rejects_bad_record_values() {
    let at = |field: usize| move |i: &mut Vec<u8>| record_base(i, 1) + field;
    assert_eq!(
        corrupt(|i| {
            let o = at(record::VCPUS)(i);
            set_u32(i, o, 0)
        }),
        capsule_error(1, CapsuleProblem::BadVcpuCount { vcpus: 0 })
    );
    assert_eq!(
        corrupt(|i| {
            let o = at(record::VCPUS)(i);
            set_u32(i, o, 65)
        }),
        capsule_error(1, CapsuleProblem::BadVcpuCount { vcpus: 65 })
    );
    assert_eq!(
        corrupt(|i| {
            let o = at(record::MEMORY)(i);
            set_u64(i, o, 3 * MIB)
        }),
        capsule_error(1, CapsuleProblem::BadMemory { memory: 3 * MIB })
    );
    assert_eq!(
        corrupt(|i| {
            let o = at(record::MEMORY)(i);
            set_u64(i, o, 0)
        }),
        capsule_error(1, CapsuleProblem::BadMemory { memory: 0 })
    );
    assert_eq!(
        corrupt(|i| {
            let o = at(record::FLAGS)(i);
            set_u32(i, o, 1 << 7)
        }),
        capsule_error(1, CapsuleProblem::UnknownFlags { flags: 1 << 7 })
    );
    assert_eq!(
        corrupt(|i| {
            let o = at(record::RESTART)(i);
            i[o] = 3
        }),
        capsule_error(1, CapsuleProblem::UnknownRestartPolicy { value: 3 })
    );
    assert_eq!(
        corrupt(|i| {
            let o = at(record::KERNEL + 8)(i);
            set_u64(i, o, 0)
        }),
        capsule_error(1, CapsuleProblem::EmptyKernel)
    );
}

#[test]
fn rejects_bad_command_lines() {
    let cmdline_offset = |i: &[u8]| get_u64(i, record_base(i, 0) + record::CMDLINE) as usize;
    assert_eq!(
        corrupt(|i| {
            let o = cmdline_offset(i);
            i[o + 3] = 0
        }),
        capsule_error(0, CapsuleProblem::CmdlineHasNul)
    );
    assert_eq!(
        corrupt(|i| {
            let o = cmdline_offset(i);
            i[o + 3] = 0xc0
        }),
        capsule_error(0, CapsuleProblem::CmdlineNotUtf8)
    );
}

#[test]
fn builder_rejects_what_the_parser_rejects() {
    let with = |change: fn(&mut CapsuleSpec)| {
        let mut spec = boot_spec();
        change(&mut spec);
        ImageBuilder::new().capsule(spec).map(|_| ())
    };
    let problem = |result: Result<(), BuildError>| match result {
        Err(BuildError::Capsule { problem, .. }) => Some(problem),
        _ => None,
    };
    assert_eq!(
        problem(with(|s| s.name.clear())),
        Some(CapsuleProblem::EmptyName)
    );
    assert_eq!(
        problem(with(|s| s.name = "a b".into())),
        Some(CapsuleProblem::NameInvalidCharacter { character: ' ' })
    );
    assert_eq!(
        problem(with(|s| s.name = "x".repeat(65))),
        Some(CapsuleProblem::NameTooLong { length: 65 })
    );
    assert_eq!(
        problem(with(|s| s.vcpus = 0)),
        Some(CapsuleProblem::BadVcpuCount { vcpus: 0 })
    );
    assert_eq!(
        problem(with(|s| s.memory = MIB)),
        Some(CapsuleProblem::BadMemory { memory: MIB })
    );
    assert_eq!(
        problem(with(|s| s.kernel.clear())),
        Some(CapsuleProblem::EmptyKernel)
    );
    assert_eq!(
        problem(with(|s| s.initrd = Some(Vec::new()))),
        Some(CapsuleProblem::EmptyInitrd)
    );
    assert_eq!(
        problem(with(|s| s.cmdline = "a\0b".into())),
        Some(CapsuleProblem::CmdlineHasNul)
    );
    assert_eq!(
        problem(with(|s| s.cmdline = "x".repeat(4097))),
        Some(CapsuleProblem::CmdlineTooLong { length: 4097 })
    );

    let error = with(|s| s.vcpus = 99).unwrap_err();
    assert_eq!(
        error.to_string(),
        "capsule \"alpha\": vCPU count 99 is outside 1..=64"
    );

    let duplicate = ImageBuilder::new().capsule(boot_spec()).and_then(|b| {
        b.capsule(CapsuleSpec {
            boot: false,
            ..boot_spec()
        })
    });
    assert_eq!(
        duplicate.unwrap_err(),
        BuildError::DuplicateName {
            name: "alpha".into()
        }
    );

    let two_boot = ImageBuilder::new().capsule(boot_spec()).and_then(|b| {
        b.capsule(CapsuleSpec {
            name: "other".into(),
            mac: None,
            ..boot_spec()
        })
    });
    assert_eq!(
        two_boot.unwrap_err(),
        BuildError::MultipleBootCapsules {
            first: "alpha".into(),
            second: "other".into()
        }
    );
}

#[test]
fn builder_enforces_the_capsule_limit() {
    let mut builder = ImageBuilder::new();
    for index in 0..layout::MAX_CAPSULES {
        let spec = CapsuleSpec {
            name: format!("c{index}"),
            kernel: vec![1],
            memory: 2 * MIB,
            ..Default::default()
        };
        builder = builder.capsule(spec).unwrap();
    }
    let extra = CapsuleSpec {
        name: "extra".into(),
        kernel: vec![1],
        memory: 2 * MIB,
        ..Default::default()
    };
    assert_eq!(
        builder.clone().capsule(extra).unwrap_err(),
        BuildError::TooManyCapsules
    );
    // The fullest image still parses, and all capsules share one kernel page.
    let bytes = builder.build().unwrap();
    let image = Image::parse(&bytes).unwrap();
    assert_eq!(image.capsules().count(), layout::MAX_CAPSULES as usize);
}

/// Everything a successfully parsed image hands out must obey the documented guarantees.
fn check_invariants(image: &Image<'_>) {
    let mut boot = 0;
    let mut macs = Vec::new();
    for capsule in image.capsules() {
        if let Some(mac) = capsule.mac {
            assert!(mac != [0; 6] && mac[0] & 1 == 0, "unusable mac {mac:02x?}");
            assert!(
                !macs.contains(&mac),
                "mac {mac:02x?} shared by two capsules"
            );
            macs.push(mac);
        }
        assert!(!capsule.name.is_empty() && capsule.name.len() <= 64);
        assert!(!capsule.kernel.is_empty());
        assert!((1..=64).contains(&capsule.vcpus));
        assert!(capsule.memory != 0 && capsule.memory % (2 * MIB) == 0);
        assert!(capsule.initrd.is_none_or(|initrd| !initrd.is_empty()));
        boot += usize::from(capsule.boot);
    }
    assert!(boot <= 1);
    assert_eq!(image.capsules().count(), image.capsule_count());
}

#[test]
fn random_corruption_never_panics() {
    let original = valid_image();
    let table_end = record_base(&original, 2);
    let mut random = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut accepted = 0;
    for round in 0..2000 {
        let mut bytes = original.clone();
        for _ in 0..=random.below(4) {
            // Half of the flips hit the header and table, where the structure lives.
            let position = if random.below(2) == 0 {
                random.below(table_end)
            } else {
                random.below(bytes.len())
            };
            bytes[position] ^= 1 << random.below(8);
        }
        if round % 7 == 0 {
            let length = random.below(bytes.len() + 1);
            bytes.truncate(length);
        }
        // Without resealing nearly everything stops at the checksum; resealing reaches the rest.
        // (Only some rounds try both: checksumming dominates the run time of unoptimized tests.)
        if round % 4 == 0 {
            assert!(Image::parse(&bytes).is_err() || bytes.len() >= original.len());
        }
        if bytes.len() >= HEADER_SIZE {
            reseal(&mut bytes);
        }
        if let Ok(image) = Image::parse(&bytes) {
            check_invariants(&image);
            accepted += 1;
        }
    }
    // Flips inside payloads are legitimate changes, so some images must still be accepted.
    assert!(accepted > 0);
}

#[test]
fn random_headers_never_panic() {
    let mut random = XorShift(0x0123_4567_89ab_cdef);
    for _ in 0..2000 {
        let length = HEADER_SIZE + random.below(4096);
        let mut bytes: Vec<u8> = (0..length).map(|_| random.next() as u8).collect();
        bytes[..8].copy_from_slice(&layout::MAGIC);
        set_u16(&mut bytes, header::VERSION, 1 + random.below(3) as u16);
        set_u16(&mut bytes, header::HEADER_SIZE, HEADER_SIZE as u16);
        set_u32(&mut bytes, header::RECORD_SIZE, RECORD_SIZE as u32);
        set_u64(&mut bytes, header::IMAGE_LENGTH, length as u64);
        set_u32(&mut bytes, header::SIGNATURE_SCHEME, 0);
        bytes[header::KEY_ID..HEADER_SIZE].fill(0);
        set_u64(&mut bytes, header::TABLE_OFFSET, HEADER_SIZE as u64);
        set_u32(&mut bytes, header::CAPSULE_COUNT, random.below(4) as u32);
        reseal(&mut bytes);
        if let Ok(image) = Image::parse(&bytes) {
            check_invariants(&image);
        }
    }
}
