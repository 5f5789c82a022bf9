//! Capsule disks: round trips through the writer and parser, and every disk rule both of them enforce.

mod common;

use common::{
    build, field_error, get_u64, parse_changed, record_base, reseal, set_u32, set_u64, XorShift,
    MIB,
};
use keel_dmfs::layout::{disk, header, record, DISK_ENTRY_SIZE, HEADER_SIZE, RECORD_SIZE};
use keel_dmfs::{
    BuildError, CapsuleProblem, CapsuleSpec, Disk, DiskLocation, DiskName, DiskProblem, DiskSpec,
    Field, FieldProblem, FormatError, Image,
};

/// Sectors per MiB.
const SECTORS_PER_MIB: u64 = MIB / 512;

fn disk(name: &str, start_mib: u64, size_mib: u64, read_only: bool) -> DiskSpec {
    DiskSpec {
        name: name.into(),
        start_sector: start_mib * SECTORS_PER_MIB,
        sectors: size_mib * SECTORS_PER_MIB,
        read_only,
    }
}

fn spec(name: &str, disks: Vec<DiskSpec>) -> CapsuleSpec {
    CapsuleSpec {
        name: name.into(),
        kernel: name.as_bytes().repeat(100),
        memory: 32 * MIB,
        disks,
        ..CapsuleSpec::default()
    }
}

/// Two capsules whose four disks touch end to start but share no byte.
fn alpha() -> CapsuleSpec {
    spec(
        "alpha",
        vec![disk("data", 0, 64, false), disk("logs", 64, 4, true)],
    )
}

fn bravo() -> CapsuleSpec {
    spec(
        "bravo",
        vec![disk("data", 68, 64, false), disk("scratch", 1024, 1, false)],
    )
}

fn valid_image() -> Vec<u8> {
    build(vec![alpha(), spec("plain", Vec::new()), bravo()]).expect("valid capsules build")
}

/// Offset of entry `index` of the disk table of capsule `capsule`.
fn entry(image: &[u8], capsule: usize, index: usize) -> usize {
    get_u64(image, record_base(image, capsule) + record::DISK_TABLE) as usize
        + index * DISK_ENTRY_SIZE
}

/// Applies `change` to the valid image, reseals it and returns the parse result.
fn corrupt(change: impl FnOnce(&mut Vec<u8>)) -> Result<(), FormatError> {
    parse_changed(valid_image(), change)
}

fn disk_error(capsule: u32, disk: u8, problem: DiskProblem) -> Result<(), FormatError> {
    Err(FormatError::Disk {
        capsule,
        disk,
        problem,
    })
}

fn location(capsule: u32, disk: u8, name: &str) -> DiskLocation {
    DiskLocation {
        capsule,
        disk,
        name: DiskName::new(name),
    }
}

#[test]
fn round_trip_keeps_every_disk() {
    let bytes = valid_image();
    let image = Image::parse(&bytes).expect("written image parses");
    assert_eq!(image.version(), 3);

    let alpha = image.capsule("alpha").unwrap();
    assert_eq!(alpha.disk_count(), 2);
    let disks: Vec<Disk> = alpha.disks.collect();
    assert_eq!(
        disks,
        [
            Disk {
                name: "data",
                start_sector: 0,
                sectors: 64 * SECTORS_PER_MIB,
                read_only: false
            },
            Disk {
                name: "logs",
                start_sector: 64 * SECTORS_PER_MIB,
                sectors: 4 * SECTORS_PER_MIB,
                read_only: true
            },
        ]
    );
    assert_eq!(disks[1].byte_range(), 64 * MIB..68 * MIB);
    assert_eq!(disks[1].size_bytes(), 4 * MIB);
    // The capsule's own iterator is a copy: iterating does not use it up.
    assert_eq!(alpha.disks.count(), 2);
    assert_eq!(alpha.disk_count(), 2);

    let plain = image.capsule("plain").unwrap();
    assert_eq!(plain.disk_count(), 0);
    assert!(plain.disks.is_empty());
    let mut none = plain.disks;
    assert_eq!(none.next(), None);

    let bravo = image.capsule("bravo").unwrap();
    let names: Vec<&str> = bravo.disks.map(|disk| disk.name).collect();
    assert_eq!(names, ["data", "scratch"]);
    let scratch = bravo.disks.last().unwrap();
    assert_eq!(
        (scratch.start_sector, scratch.sectors, scratch.read_only),
        (1024 * SECTORS_PER_MIB, SECTORS_PER_MIB, false)
    );

    // Disk names are stored inline in the image and borrowed from it.
    let range = bytes.as_ptr_range();
    assert!(range.contains(&disks[0].name.as_ptr()));

    // Parsed disks convert back into specs that build the same image.
    let rebuilt = build(
        image
            .capsules()
            .map(|capsule| CapsuleSpec {
                name: capsule.name.into(),
                kernel: capsule.kernel.to_vec(),
                memory: capsule.memory,
                disks: capsule.disks.map(DiskSpec::from).collect(),
                ..CapsuleSpec::default()
            })
            .collect(),
    )
    .unwrap();
    assert_eq!(rebuilt, bytes);
    let reparsed = Image::parse(&rebuilt).unwrap();
    assert!(reparsed.capsules().eq(image.capsules()));
}

#[test]
fn debug_output_lists_disks() {
    let bytes = valid_image();
    let image = Image::parse(&bytes).unwrap();
    let text = format!("{:?}", image.capsule("alpha").unwrap());
    assert!(
        text.ends_with(
            "disks: [Disk { name: \"data\", start_sector: 0, sectors: 131072, read_only: false }, \
             Disk { name: \"logs\", start_sector: 131072, sectors: 8192, read_only: true }] }"
        ),
        "{text}"
    );
}

#[test]
fn disk_tables_sit_between_capsule_table_and_names() {
    let bytes = valid_image();
    let table_end = HEADER_SIZE + 3 * RECORD_SIZE;
    assert_eq!(entry(&bytes, 0, 0), table_end);
    assert_eq!(entry(&bytes, 2, 0), table_end + 2 * DISK_ENTRY_SIZE);
    // A capsule without disks has count and offset zero.
    let plain = record_base(&bytes, 1);
    assert_eq!(bytes[plain + record::DISK_COUNT], 0);
    assert_eq!(get_u64(&bytes, plain + record::DISK_TABLE), 0);
    let data = entry(&bytes, 0, 0);
    assert_eq!(
        &bytes[data + disk::NAME..data + disk::NAME + 20],
        b"data\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"
    );
    assert_eq!(bytes[data + disk::NAME_LENGTH], 4);
}

#[test]
fn version_1_images_read_as_having_no_disks() {
    let mut bytes = build(vec![spec("alpha", Vec::new())]).unwrap();
    bytes[header::VERSION] = 1;
    reseal(&mut bytes);
    let image = Image::parse(&bytes).expect("a version 1 image without disks parses");
    assert_eq!(image.version(), 1);
    assert_eq!(image.capsule("alpha").unwrap().disk_count(), 0);

    // In version 1 the disk fields are reserved bytes.
    let mut with_disks = valid_image();
    with_disks[header::VERSION] = 1;
    reseal(&mut with_disks);
    assert_eq!(
        Image::parse(&with_disks).err(),
        Some(FormatError::Capsule {
            capsule: 0,
            problem: CapsuleProblem::ReservedNotZero {
                offset: record::DISK_COUNT
            }
        })
    );
}

#[test]
fn touching_extents_are_allowed() {
    // Within one capsule and across capsules, in both orders.
    let bytes = build(vec![
        spec("one", vec![disk("b", 4, 4, false), disk("a", 0, 4, false)]),
        spec("two", vec![disk("c", 8, 4, true), disk("z", 12, 4, true)]),
    ])
    .unwrap();
    let image = Image::parse(&bytes).unwrap();
    assert_eq!(
        image
            .capsules()
            .map(|capsule| capsule.disk_count())
            .sum::<usize>(),
        4
    );
}

#[test]
fn builder_refuses_bad_disks() {
    let with = |disk: DiskSpec| build(vec![spec("alpha", vec![disk])]).unwrap_err();
    let problem = |error: BuildError| match error {
        BuildError::Disk { problem, .. } => Some(problem),
        _ => None,
    };
    assert_eq!(
        problem(with(disk("", 0, 1, false))),
        Some(DiskProblem::EmptyName)
    );
    assert_eq!(
        problem(with(disk(&"d".repeat(21), 0, 1, false))),
        Some(DiskProblem::NameTooLong { length: 21 })
    );
    assert_eq!(
        problem(with(disk("a b", 0, 1, false))),
        Some(DiskProblem::NameInvalidCharacter { character: ' ' })
    );
    let misaligned = DiskSpec {
        start_sector: 4,
        ..disk("data", 0, 1, false)
    };
    assert_eq!(
        problem(with(misaligned)),
        Some(DiskProblem::StartMisaligned { start_sector: 4 })
    );
    let empty = DiskSpec {
        sectors: 0,
        ..disk("data", 0, 1, false)
    };
    assert_eq!(
        problem(with(empty)),
        Some(DiskProblem::BadSectorCount { sectors: 0 })
    );
    let partial = DiskSpec {
        sectors: 9,
        ..disk("data", 0, 1, false)
    };
    assert_eq!(
        problem(with(partial)),
        Some(DiskProblem::BadSectorCount { sectors: 9 })
    );
    let far = DiskSpec {
        start_sector: u64::MAX / 512 / 8 * 8,
        sectors: 8,
        ..disk("data", 0, 1, false)
    };
    let error = with(far);
    assert!(matches!(
        problem(error.clone()),
        Some(DiskProblem::EndOverflows { sectors: 8, .. })
    ));
    assert!(
        error
            .to_string()
            .starts_with("capsule \"alpha\" disk \"data\": start sector"),
        "{error}"
    );

    let five = (0..5)
        .map(|index| disk(&format!("d{index}"), index, 1, false))
        .collect();
    assert_eq!(
        build(vec![spec("alpha", five)]).unwrap_err(),
        BuildError::Capsule {
            name: "alpha".into(),
            problem: CapsuleProblem::TooManyDisks { count: 5 }
        }
    );
    let four = (0..4)
        .map(|index| disk(&format!("d{index}"), index, 1, false))
        .collect();
    assert!(build(vec![spec("alpha", four)]).is_ok());

    let twice = vec![disk("data", 0, 1, false), disk("data", 1, 1, false)];
    let error = build(vec![spec("alpha", twice)]).unwrap_err();
    assert_eq!(
        error,
        BuildError::DuplicateDiskName {
            capsule: "alpha".into(),
            disk: "data".into()
        }
    );
    assert_eq!(
        error.to_string(),
        "capsule \"alpha\" has two disks named \"data\""
    );
    // Different capsules may reuse a disk name.
    assert!(build(vec![
        spec("one", vec![disk("data", 0, 1, false)]),
        spec("two", vec![disk("data", 1, 1, false)]),
    ])
    .is_ok());
}

#[test]
fn builder_refuses_overlaps() {
    let across = build(vec![
        spec("alpha", vec![disk("data", 0, 128, false)]),
        spec("beta", vec![disk("data", 64, 128, false)]),
    ])
    .unwrap_err();
    assert_eq!(
        across,
        BuildError::DisksOverlap {
            first_capsule: "alpha".into(),
            first_disk: "data".into(),
            second_capsule: "beta".into(),
            second_disk: "data".into(),
            start: 0x400_0000,
            end: 0x800_0000,
        }
    );
    assert_eq!(
        across.to_string(),
        "capsule \"alpha\" disk \"data\" overlaps capsule \"beta\" disk \"data\" (bytes 0x4000000..0x8000000)"
    );

    let within = build(vec![spec(
        "alpha",
        vec![disk("one", 10, 10, false), disk("two", 0, 11, false)],
    )])
    .unwrap_err();
    assert_eq!(
        within,
        BuildError::DisksOverlap {
            first_capsule: "alpha".into(),
            first_disk: "one".into(),
            second_capsule: "alpha".into(),
            second_disk: "two".into(),
            start: 10 * MIB,
            end: 11 * MIB,
        }
    );

    // Read-only disks may not share bytes either: the rule has no exceptions.
    let read_only = build(vec![
        spec("alpha", vec![disk("base", 0, 4, true)]),
        spec("beta", vec![disk("base", 0, 4, true)]),
    ]);
    assert!(matches!(read_only, Err(BuildError::DisksOverlap { .. })));

    // One disk inside another.
    let inside = build(vec![
        spec("alpha", vec![disk("big", 0, 100, false)]),
        spec("beta", vec![disk("small", 50, 1, false)]),
    ]);
    assert!(matches!(
        inside,
        Err(BuildError::DisksOverlap { start, end, .. }) if start == 50 * MIB && end == 51 * MIB
    ));
}

#[test]
fn parser_refuses_overlap_across_capsules() {
    // Move bravo's "data" (68 MiB) down by 2 MiB, into alpha's "logs" (64..68 MiB).
    let error = corrupt(|i| {
        let at = entry(i, 2, 0) + disk::START_SECTOR;
        set_u64(i, at, 66 * SECTORS_PER_MIB);
    })
    .unwrap_err();
    assert_eq!(
        error,
        FormatError::DisksOverlap {
            first: location(0, 1, "logs"),
            second: location(2, 0, "data"),
            start: 66 * MIB,
            end: 68 * MIB,
        }
    );
    assert_eq!(
        error.to_string(),
        "DMFS capsule #2 disk #0 (\"data\") overlaps capsule #0 disk #1 (\"logs\") (bytes 0x4200000..0x4400000)"
    );
}

#[test]
fn parser_refuses_overlap_within_a_capsule() {
    let error = corrupt(|i| {
        // Grow bravo's "data" to reach its "scratch" at 1 GiB.
        let at = entry(i, 2, 0) + disk::SECTOR_COUNT;
        set_u64(i, at, 1024 * SECTORS_PER_MIB);
    })
    .unwrap_err();
    assert_eq!(
        error,
        FormatError::DisksOverlap {
            first: location(2, 0, "data"),
            second: location(2, 1, "scratch"),
            start: 1024 * MIB,
            end: 1025 * MIB,
        }
    );
    // Two capsules pointing at the same disk table is the same overlap in disguise.
    let error = corrupt(|i| {
        let table = get_u64(i, record_base(i, 0) + record::DISK_TABLE);
        let bravo = record_base(i, 2);
        set_u64(i, bravo + record::DISK_TABLE, table);
    })
    .unwrap_err();
    assert_eq!(
        error,
        FormatError::DisksOverlap {
            first: location(0, 0, "data"),
            second: location(2, 0, "data"),
            start: 0,
            end: 64 * MIB,
        }
    );
}

#[test]
fn parser_refuses_bad_disk_entries() {
    let at = |field: usize| move |i: &mut Vec<u8>| entry(i, 0, 1) + field;
    assert_eq!(
        corrupt(|i| {
            let o = at(disk::FLAGS)(i);
            set_u32(i, o, 0b10)
        }),
        disk_error(0, 1, DiskProblem::UnknownFlags { flags: 0b10 })
    );
    assert_eq!(
        corrupt(|i| {
            let o = at(disk::RESERVED_1 + 2)(i);
            i[o] = 1
        }),
        disk_error(
            0,
            1,
            DiskProblem::ReservedNotZero {
                offset: disk::RESERVED_1 + 2
            }
        )
    );
    assert_eq!(
        corrupt(|i| {
            let o = at(disk::RESERVED_2 + 3)(i);
            i[o] = 1
        }),
        disk_error(
            0,
            1,
            DiskProblem::ReservedNotZero {
                offset: disk::RESERVED_2 + 3
            }
        )
    );
    // "logs" is 4 bytes: a byte after it in the name field must be zero.
    assert_eq!(
        corrupt(|i| {
            let o = at(disk::NAME + 19)(i);
            i[o] = b'x'
        }),
        disk_error(
            0,
            1,
            DiskProblem::NamePaddingNotZero {
                offset: disk::NAME + 19
            }
        )
    );
    assert_eq!(
        corrupt(|i| {
            let o = at(disk::NAME_LENGTH)(i);
            i[o] = 21
        }),
        disk_error(0, 1, DiskProblem::NameTooLong { length: 21 })
    );
    assert_eq!(
        corrupt(|i| {
            let o = at(disk::NAME)(i);
            i[o..o + 20].fill(0);
            let o = at(disk::NAME_LENGTH)(i);
            i[o] = 0
        }),
        disk_error(0, 1, DiskProblem::EmptyName)
    );
    assert_eq!(
        corrupt(|i| {
            let o = at(disk::NAME + 1)(i);
            i[o] = b'/'
        }),
        disk_error(0, 1, DiskProblem::NameInvalidCharacter { character: '/' })
    );
    assert_eq!(
        corrupt(|i| {
            let o = at(disk::NAME)(i);
            i[o] = 0xfe
        }),
        disk_error(0, 1, DiskProblem::NameNotUtf8)
    );
    let start = 64 * SECTORS_PER_MIB + 1;
    assert_eq!(
        corrupt(|i| {
            let o = at(disk::START_SECTOR)(i);
            set_u64(i, o, start)
        }),
        disk_error(
            0,
            1,
            DiskProblem::StartMisaligned {
                start_sector: start
            }
        )
    );
    assert_eq!(
        corrupt(|i| {
            let o = at(disk::SECTOR_COUNT)(i);
            set_u64(i, o, 0)
        }),
        disk_error(0, 1, DiskProblem::BadSectorCount { sectors: 0 })
    );
    assert_eq!(
        corrupt(|i| {
            let o = at(disk::SECTOR_COUNT)(i);
            set_u64(i, o, 4)
        }),
        disk_error(0, 1, DiskProblem::BadSectorCount { sectors: 4 })
    );
    let huge = !7u64; // the largest multiple of 8
    let result = corrupt(|i| {
        let o = at(disk::SECTOR_COUNT)(i);
        set_u64(i, o, huge)
    });
    assert_eq!(
        result,
        disk_error(
            0,
            1,
            DiskProblem::EndOverflows {
                start_sector: 64 * SECTORS_PER_MIB,
                sectors: huge
            }
        )
    );
    let message = result.unwrap_err().to_string();
    assert!(
        message.starts_with("DMFS capsule #0 disk #1: start sector 0x20000 plus"),
        "{message}"
    );
}

#[test]
fn parser_refuses_duplicate_disk_names() {
    // Rename bravo's "scratch" (7 bytes) to "data".
    let error = corrupt(|i| {
        let o = entry(i, 2, 1);
        i[o + disk::NAME..o + disk::NAME + 20].fill(0);
        i[o + disk::NAME..o + disk::NAME + 4].copy_from_slice(b"data");
        i[o + disk::NAME_LENGTH] = 4;
    })
    .unwrap_err();
    assert_eq!(
        error,
        FormatError::DuplicateDiskName {
            capsule: 2,
            name: DiskName::new("data"),
            first: 0,
            second: 1
        }
    );
    assert_eq!(
        error.to_string(),
        "DMFS capsule #2: disks #0 and #1 are both named \"data\""
    );
}

fn table_error(capsule: u32, problem: FieldProblem) -> Result<(), FormatError> {
    field_error(capsule, Field::DiskTable, problem)
}

#[test]
fn parser_refuses_bad_disk_tables() {
    let count_at = |i: &[u8], capsule| record_base(i, capsule) + record::DISK_COUNT;
    let table_at = |i: &[u8], capsule| record_base(i, capsule) + record::DISK_TABLE;
    assert_eq!(
        corrupt(|i| {
            let o = count_at(i, 0);
            i[o] = 5
        }),
        Err(FormatError::Capsule {
            capsule: 0,
            problem: CapsuleProblem::TooManyDisks { count: 5 }
        })
    );
    // A count of zero with an offset.
    assert_eq!(
        corrupt(|i| {
            let o = count_at(i, 0);
            i[o] = 0
        }),
        table_error(
            0,
            FieldProblem::OffsetWithoutLength {
                offset: (HEADER_SIZE + 3 * RECORD_SIZE) as u64
            }
        )
    );
    let result = corrupt(|i| {
        let o = table_at(i, 0);
        let table = get_u64(i, o);
        set_u64(i, o, table + 4)
    });
    let table = (HEADER_SIZE + 3 * RECORD_SIZE) as u64;
    assert_eq!(
        result,
        table_error(0, FieldProblem::TableMisaligned { offset: table + 4 })
    );
    assert_eq!(
        result.unwrap_err().to_string(),
        "DMFS capsule #0: disk table: offset 0x1a4 is not a multiple of 8"
    );
    assert_eq!(
        corrupt(|i| {
            let o = table_at(i, 0);
            set_u64(i, o, 64)
        }),
        table_error(
            0,
            FieldProblem::OverlapsHeader {
                offset: 64,
                length: 96
            }
        )
    );
    assert_eq!(
        corrupt(|i| {
            let o = table_at(i, 2);
            set_u64(i, o, HEADER_SIZE as u64 + 8)
        }),
        table_error(
            2,
            FieldProblem::OverlapsTable {
                offset: HEADER_SIZE as u64 + 8,
                length: 96
            }
        )
    );
    let length = valid_image().len() as u64;
    assert_eq!(
        corrupt(|i| {
            let o = table_at(i, 2);
            set_u64(i, o, length - 8)
        }),
        table_error(
            2,
            FieldProblem::OutOfRange {
                offset: length - 8,
                length: 96,
                image_length: length
            }
        )
    );
    let far = u64::MAX - 7;
    assert_eq!(
        corrupt(|i| {
            let o = table_at(i, 2);
            set_u64(i, o, far)
        }),
        table_error(
            2,
            FieldProblem::Overflows {
                offset: far,
                length: 96
            }
        )
    );
    // A capsule without disks must not point anywhere.
    assert_eq!(
        corrupt(|i| {
            let o = table_at(i, 1);
            set_u64(i, o, table)
        }),
        table_error(1, FieldProblem::OffsetWithoutLength { offset: table })
    );
    // In version 2 the bytes between the count and the table offset (version 3's MAC) are
    // reserved.
    assert_eq!(
        corrupt(|i| {
            i[header::VERSION] = 2;
            let o = record_base(i, 1) + record::VERSION_2_RESERVED;
            i[o] = 1
        }),
        Err(FormatError::Capsule {
            capsule: 1,
            problem: CapsuleProblem::ReservedNotZero {
                offset: record::VERSION_2_RESERVED
            }
        })
    );
}

#[test]
fn random_disk_corruption_never_yields_overlapping_disks() {
    let original = valid_image();
    let tables_start = HEADER_SIZE;
    let tables_end = entry(&original, 2, 2);
    let mut random = XorShift(0x5eed_d15c_0000_0001);
    let mut accepted = 0;
    for _ in 0..3000 {
        let mut bytes = original.clone();
        for _ in 0..=random.below(3) {
            let position = tables_start + random.below(tables_end - tables_start);
            bytes[position] ^= 1 << random.below(8);
        }
        reseal(&mut bytes);
        let Ok(image) = Image::parse(&bytes) else {
            continue;
        };
        accepted += 1;
        let disks: Vec<Disk> = image.capsules().flat_map(|capsule| capsule.disks).collect();
        for capsule in image.capsules() {
            assert!(capsule.disk_count() <= 4);
            let names: Vec<&str> = capsule.disks.map(|disk| disk.name).collect();
            for (index, name) in names.iter().enumerate() {
                assert!(!names[..index].contains(name), "duplicate disk name {name}");
            }
        }
        for (index, disk) in disks.iter().enumerate() {
            assert!(disk.sectors > 0 && disk.sectors % 8 == 0 && disk.start_sector % 8 == 0);
            assert!(!disk.name.is_empty() && disk.name.len() <= 20);
            assert!(disk.end_sector().checked_mul(512).is_some());
            for other in &disks[..index] {
                let (a, b) = (disk.byte_range(), other.byte_range());
                assert!(
                    a.end <= b.start || b.end <= a.start,
                    "{disk:?} overlaps {other:?}"
                );
            }
        }
    }
    // Flips in names and in the read-only flag keep an image valid, so some must pass.
    assert!(accepted > 0);
}

#[test]
fn the_fullest_image_parses() {
    // 256 capsules with 4 disks each: the most the format allows, all checked against each other.
    let capsules = (0..keel_dmfs::layout::MAX_CAPSULES as u64)
        .map(|capsule| CapsuleSpec {
            name: format!("c{capsule}"),
            kernel: vec![1],
            memory: 2 * MIB,
            disks: (0..4)
                .map(|index| disk(&format!("d{index}"), capsule * 4 + index, 1, index == 3))
                .collect(),
            ..CapsuleSpec::default()
        })
        .collect();
    let bytes = build(capsules).unwrap();
    let image = Image::parse(&bytes).unwrap();
    let disks: Vec<Disk> = image.capsules().flat_map(|capsule| capsule.disks).collect();
    assert_eq!(disks.len(), 1024);
    assert_eq!(disks[1023].byte_range(), 1023 * MIB..1024 * MIB);
    assert!(disks[1023].read_only && !disks[1022].read_only);

    // The very last disk moved onto the very first is still found.
    let mut bytes = bytes;
    let last = entry(&bytes, 255, 3) + disk::START_SECTOR;
    set_u64(&mut bytes, last, 0);
    reseal(&mut bytes);
    assert_eq!(
        Image::parse(&bytes).err(),
        Some(FormatError::DisksOverlap {
            first: location(0, 0, "d0"),
            second: location(255, 3, "d3"),
            start: 0,
            end: MIB,
        })
    );
}
