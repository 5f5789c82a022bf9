//! `[[capsule.disk]]` entries: what builds, what every disk mistake is reported as, and that the
//! manifests shipped in guests/manifests still build.

mod common;

use std::fs;
use std::path::Path;

use common::{build_next_to_kernel, check, linux_image, refusal, TempDir, MIB};
use keel_dmfs::{Disk, Image};
use mkdmfs::{parse_manifest, Defines, ManifestError};

/// Two capsules (the second without a `boot`), followed by `disks` verbatim.
fn manifest_with(disks: &str) -> String {
    format!(
        "[[capsule]]\nname = \"alpha\"\nkernel = \"Image\"\nmemory = \"64M\"\nboot = true\n\
         [[capsule]]\nname = \"beta\"\nkernel = \"Image\"\nmemory = \"64M\"\n{disks}"
    )
}

#[test]
fn disks_build_into_the_image() {
    // Integers and sizes with suffixes; extents that touch; a name reused by another capsule.
    let text = manifest_with(
        "[[capsule.disk]]\nname = \"data\"\nstart = \"64M\"\nsize = \"64M\"\n\
         [[capsule.disk]]\nname = \"base\"\nstart = 0\nsize = 67108864\nread-only = true\n",
    )
    .replace(
        "boot = true\n",
        "boot = true\n[[capsule.disk]]\nname = \"data\"\nstart = \"128M\"\nsize = \"4K\"\nread-only = false\n",
    );
    let built = build_next_to_kernel(&text);
    let summary = built.capsules[1].to_string();
    assert!(
        summary.ends_with(", disk data 64 MiB at 64 MiB, disk base 64 MiB at 0 bytes read-only"),
        "{summary}"
    );
    assert!(
        built.capsules[0]
            .to_string()
            .ends_with(", disk data 4 KiB at 128 MiB"),
        "{}",
        built.capsules[0]
    );

    let image = Image::parse(&built.image).unwrap();
    let alpha: Vec<Disk> = image.capsule("alpha").unwrap().disks.collect();
    assert_eq!(
        alpha,
        [Disk {
            name: "data",
            start_sector: 128 * MIB / 512,
            sectors: 8,
            read_only: false
        }]
    );
    let beta: Vec<Disk> = image.capsule("beta").unwrap().disks.collect();
    assert_eq!(
        beta,
        [
            Disk {
                name: "data",
                start_sector: 64 * MIB / 512,
                sectors: 64 * MIB / 512,
                read_only: false
            },
            Disk {
                name: "base",
                start_sector: 0,
                sectors: 64 * MIB / 512,
                read_only: true
            },
        ]
    );
}

#[test]
fn overlap_across_capsules_names_both_disks_and_the_bytes() {
    let text =
        manifest_with("[[capsule.disk]]\nname = \"data\"\nstart = \"64M\"\nsize = \"64M\"\n")
            .replace(
                "boot = true\n",
                "boot = true\n[[capsule.disk]]\nname = \"data\"\nstart = 0\nsize = \"128M\"\n",
            );
    assert!(matches!(
        check(&text),
        Err(ManifestError::DisksOverlap { start, end, .. }) if start == 64 * MIB && end == 128 * MIB
    ));
    assert_eq!(
        refusal(&text),
        "capsule \"alpha\" disk \"data\" overlaps capsule \"beta\" disk \"data\" (bytes 0x4000000..0x8000000)"
    );
}

#[test]
fn overlap_within_a_capsule_is_refused() {
    let text = manifest_with(
        "[[capsule.disk]]\nname = \"one\"\nstart = \"1M\"\nsize = \"1M\"\n\
         [[capsule.disk]]\nname = \"two\"\nstart = \"1020K\"\nsize = \"8K\"\n",
    );
    assert_eq!(
        refusal(&text),
        "capsule \"beta\" disk \"one\" overlaps capsule \"beta\" disk \"two\" (bytes 0x100000..0x101000)"
    );
}

#[test]
fn read_only_disks_may_not_overlap_either() {
    let text = manifest_with(
        "[[capsule.disk]]\nname = \"one\"\nstart = 0\nsize = \"1M\"\nread-only = true\n\
         [[capsule.disk]]\nname = \"two\"\nstart = 0\nsize = \"1M\"\nread-only = true\n",
    );
    assert!(refusal(&text).contains("overlaps"));
}

/// The refusal of a manifest whose second capsule has one disk made of `keys`.
fn disk_refusal(keys: &str) -> String {
    refusal(&manifest_with(&format!("[[capsule.disk]]\n{keys}")))
}

#[test]
fn each_disk_mistake_names_capsule_disk_and_problem() {
    assert_eq!(
        disk_refusal("start = 0\nsize = \"4K\"\n"),
        "capsule \"beta\" disk entry 1 (unnamed): missing required key `name`"
    );
    assert_eq!(
        disk_refusal("name = \"d\"\nsize = \"4K\"\n"),
        "capsule \"beta\" disk \"d\": missing required key `start`"
    );
    assert_eq!(
        disk_refusal("name = \"d\"\nstart = 0\n"),
        "capsule \"beta\" disk \"d\": missing required key `size`"
    );
    assert_eq!(
        disk_refusal("name = \"abcdefghijklmnopqrstu\"\nstart = 0\nsize = \"4K\"\n"),
        "capsule \"beta\" disk \"abcdefghijklmnopqrstu\": name is 21 bytes long, more than the limit of 20 (a virtio-blk device ID)"
    );
    assert_eq!(
        disk_refusal("name = \"my disk\"\nstart = 0\nsize = \"4K\"\n"),
        "capsule \"beta\" disk \"my disk\": name contains ' '; only ASCII letters, digits, '-', '_' and '.' are allowed"
    );
    assert_eq!(
        disk_refusal("name = \"\"\nstart = 0\nsize = \"4K\"\n"),
        "capsule \"beta\" disk entry 1 (unnamed): name is empty"
    );
    assert_eq!(
        disk_refusal("name = \"d\"\nstart = \"64Q\"\nsize = \"4K\"\n"),
        "capsule \"beta\" disk \"d\": `start` = \"64Q\" is not a size: unknown suffix; use K, M or G"
    );
    assert_eq!(
        disk_refusal("name = \"d\"\nstart = -4096\nsize = \"4K\"\n"),
        "capsule \"beta\" disk \"d\": `start` = -4096 is not a size: it is negative"
    );
    assert_eq!(
        disk_refusal("name = \"d\"\nstart = 0\nsize = true\n"),
        "capsule \"beta\" disk \"d\": `size` = true is not a size: expected a byte count or a string such as \"64M\""
    );
    assert_eq!(
        disk_refusal("name = \"d\"\nstart = 512\nsize = \"4K\"\n"),
        "capsule \"beta\" disk \"d\": `start` = 512 bytes (0x200 bytes) is not a multiple of 4 KiB"
    );
    assert_eq!(
        disk_refusal("name = \"d\"\nstart = 0\nsize = \"6K\"\n"),
        "capsule \"beta\" disk \"d\": `size` = 6 KiB (0x1800 bytes) is not a multiple of 4 KiB"
    );
    assert_eq!(
        disk_refusal("name = \"d\"\nstart = 0\nsize = 0\n"),
        "capsule \"beta\" disk \"d\": `size` is zero"
    );
    assert_eq!(
        disk_refusal("name = \"d\"\nstart = \"17179869183G\"\nsize = \"2G\"\n"),
        "capsule \"beta\" disk \"d\": `start` 0xffffffffc0000000 plus `size` 0x80000000 ends past the largest 64-bit byte offset"
    );
    // The last 4 KiB a 64-bit offset reaches is fine.
    assert!(check(&manifest_with(
        "[[capsule.disk]]\nname = \"d\"\nstart = \"17179869183G\"\nsize = \"1023M\"\n\
         [[capsule.disk]]\nname = \"e\"\nstart = \"18446744073708503040\"\nsize = \"1020K\"\n"
    ))
    .is_ok());
}

#[test]
fn names_are_unique_within_a_capsule() {
    let text = manifest_with(
        "[[capsule.disk]]\nname = \"d\"\nstart = 0\nsize = \"4K\"\n\
         [[capsule.disk]]\nname = \"e\"\nstart = \"4K\"\nsize = \"4K\"\n\
         [[capsule.disk]]\nname = \"d\"\nstart = \"8K\"\nsize = \"4K\"\n",
    );
    assert_eq!(
        refusal(&text),
        "capsule \"beta\" disk \"d\": disk entries 1 and 3 of this capsule are both named so"
    );
}

#[test]
fn at_most_four_disks_per_capsule() {
    let disks = |count: u64| {
        (0..count)
            .map(|index| {
                format!(
                    "[[capsule.disk]]\nname = \"d{index}\"\nstart = \"{}K\"\nsize = \"4K\"\n",
                    index * 4
                )
            })
            .collect::<String>()
    };
    assert!(check(&manifest_with(&disks(4))).is_ok());
    assert_eq!(
        refusal(&manifest_with(&disks(5))),
        "capsule \"beta\": has 5 [[capsule.disk]] entries; at most 4 are allowed"
    );
}

#[test]
fn unknown_disk_keys_are_refused() {
    let error = parse_manifest(&manifest_with(
        "[[capsule.disk]]\nname = \"d\"\nstart = 0\nsize = \"4K\"\nreadonly = true\n",
    ))
    .expect_err("an unknown key");
    let message = error.to_string();
    assert!(
        message.contains("readonly") && message.contains("read-only"),
        "{message}"
    );
}

/// The manifests shipped with Keel, built against stand-in kernels and initrds.
#[test]
fn shipped_manifests_still_build() {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../guests/manifests");
    let images = TempDir::new();
    let kernel = linux_image(8 * MIB, 8192);
    for path in ["small/Image", "debian/Image"] {
        images.write(path, &kernel);
    }
    for path in ["initramfs.cpio", "initramfs-debian.cpio"] {
        images.write(path, &[0x30; 4096]);
    }
    // The flat test guests xtask builds into `${guests}`.
    images.write("guests/hostile.bin", &[0x73, 0x00, 0x50, 0x10]);
    let defines: Defines = [
        ("images".to_owned(), images.path().display().to_string()),
        (
            "guests".to_owned(),
            images.path().join("guests").display().to_string(),
        ),
    ]
    .into();
    let mut built = 0;
    for entry in fs::read_dir(&folder).unwrap() {
        let path = entry.unwrap().path();
        if path
            .extension()
            .is_some_and(|extension| extension == "toml")
        {
            let image = mkdmfs::build(&path, &defines)
                .unwrap_or_else(|error| panic!("{}: {error:#}", path.display()))
                .image;
            let parsed = Image::parse(&image).unwrap();
            assert!(parsed.capsule_count() > 0, "{}", path.display());
            built += 1;
        }
    }
    assert!(built > 0, "no manifests in {}", folder.display());
}
