//! Host tests of the G-stage tables against the bounds-checked fake RAM.

use std::collections::BTreeMap;

use crate::pte::{PTE_A, PTE_D, PTE_G, PTE_U, PTE_V};
use crate::test_support::FakeRam;
use crate::{GStage, MapError, Mode, PageSize, Perm, TableMemory, Translation};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const RW: Perm = Perm::READ.union(Perm::WRITE);
const RWX: Perm = Perm::all();

fn setup(mode: Mode) -> (FakeRam, GStage) {
    let mut ram = FakeRam::new(1024);
    let gstage = GStage::new(&mut ram, mode).expect("root table");
    (ram, gstage)
}

/// Raw leaf entry mapping `gpa`, found by walking the tables by hand.
fn leaf_pte(ram: &FakeRam, gstage: &GStage, gpa: u64) -> Option<u64> {
    let mode = gstage.mode();
    let mut table = gstage.root();
    for level in (0..mode.levels()).rev() {
        let index_bits = if level == mode.levels() - 1 { 11 } else { 9 };
        let index = (gpa >> (12 + 9 * level)) & ((1 << index_bits) - 1);
        let pte = ram.read_pte(table + index * 8);
        if pte & PTE_V == 0 {
            return None;
        }
        if pte & 0b1110 != 0 {
            return Some(pte);
        }
        table = (pte >> 10) << 12;
    }
    None
}

/// Raw entries of every valid non-leaf entry, root first.
fn table_ptes(ram: &FakeRam, gstage: &GStage) -> Vec<u64> {
    fn collect(ram: &FakeRam, table: u64, entries: u64, level: usize, out: &mut Vec<u64>) {
        for index in 0..entries {
            let pte = ram.read_pte(table + index * 8);
            if pte & PTE_V != 0 && pte & 0b1110 == 0 && level > 0 {
                out.push(pte);
                collect(ram, (pte >> 10) << 12, 512, level - 1, out);
            }
        }
    }
    let mut out = Vec::new();
    collect(
        ram,
        gstage.root(),
        2048,
        gstage.mode().levels() - 1,
        &mut out,
    );
    out
}

#[test]
fn new_allocates_an_aligned_16k_root() {
    let (ram, gstage) = setup(Mode::Sv39x4);
    assert_eq!(gstage.root() % (16 * KIB), 0);
    assert_eq!(gstage.table_bytes(), 16 * KIB);
    assert_eq!(ram.outstanding_tables(), 1);
    assert_eq!(ram.outstanding_bytes(), 16 * KIB);
}

#[test]
fn map_and_translate_every_page_size_with_offsets() {
    for mode in [Mode::Sv39x4, Mode::Sv48x4] {
        let (mut ram, mut gstage) = setup(mode);
        let cases = [
            (0x1000_3000, 0x9000_7000, PageSize::Size4K, Perm::READ),
            (0x4020_0000, 0x1_0060_0000, PageSize::Size2M, RW),
            (0xC000_0000, 0x2_4000_0000, PageSize::Size1G, RWX),
        ];
        for (gpa, hpa, size, perm) in cases {
            gstage.map(&mut ram, gpa, hpa, size, perm).expect("map");
            for offset in [0, 8, 0xabc, size.bytes() / 2 + 0x18, size.bytes() - 1] {
                assert_eq!(
                    gstage.translate(&ram, gpa + offset),
                    Some(Translation {
                        hpa: hpa + offset,
                        perm,
                        page_size: size
                    }),
                    "{mode} {size} page, offset {offset:#x}"
                );
            }
            assert_eq!(
                gstage.translate(&ram, gpa + size.bytes()),
                None,
                "{mode}: just past the {size} page"
            );
            assert_eq!(
                gstage.translate(&ram, gpa - 1),
                None,
                "{mode}: just before the {size} page"
            );
        }
        assert_eq!(gstage.table_bytes(), ram.outstanding_bytes());
    }
}

#[test]
fn table_count_matches_page_size() {
    // Sv39x4: a 1 GiB leaf sits in the root, a 2 MiB leaf needs one level-1 table, and a 4 KiB
    // leaf needs a level-1 and a level-0 table.
    let (mut ram, mut gstage) = setup(Mode::Sv39x4);
    gstage
        .map(&mut ram, 0, 0, PageSize::Size1G, RW)
        .expect("1G");
    assert_eq!(ram.outstanding_tables(), 1);
    gstage
        .map(&mut ram, GIB, GIB, PageSize::Size2M, RW)
        .expect("2M");
    assert_eq!(ram.outstanding_tables(), 2);
    gstage
        .map(&mut ram, 2 * GIB, 2 * GIB, PageSize::Size4K, RW)
        .expect("4K");
    assert_eq!(ram.outstanding_tables(), 4);
    // A neighbour shares both tables.
    gstage
        .map(&mut ram, 2 * GIB + 4 * KIB, 0, PageSize::Size4K, RW)
        .expect("4K neighbour");
    assert_eq!(ram.outstanding_tables(), 4);
    assert_eq!(gstage.table_bytes(), 16 * KIB + 3 * 4 * KIB);

    // Sv48x4 puts one more table above everything.
    let (mut ram, mut gstage) = setup(Mode::Sv48x4);
    gstage
        .map(&mut ram, 0, 0, PageSize::Size1G, RW)
        .expect("1G");
    assert_eq!(ram.outstanding_tables(), 2);
    gstage
        .map(&mut ram, GIB, 0, PageSize::Size4K, RW)
        .expect("4K");
    assert_eq!(ram.outstanding_tables(), 4);
}

#[test]
fn boundary_gpas() {
    for mode in [Mode::Sv39x4, Mode::Sv48x4] {
        let limit = mode.gpa_limit();
        let (mut ram, mut gstage) = setup(mode);
        gstage
            .map(&mut ram, 0, 0x8000_0000, PageSize::Size4K, RW)
            .expect("GPA 0");
        assert_eq!(gstage.translate(&ram, 0).map(|t| t.hpa), Some(0x8000_0000));

        let last_page = limit - 4 * KIB;
        gstage
            .map(&mut ram, last_page, 0x9000_0000, PageSize::Size4K, RW)
            .expect("last page");
        assert_eq!(
            gstage.translate(&ram, limit - 1).map(|t| t.hpa),
            Some(0x9000_0fff)
        );
        assert_eq!(gstage.translate(&ram, limit), None);
        assert_eq!(gstage.translate(&ram, u64::MAX), None);

        let last_gigapage = limit - GIB;
        assert_eq!(
            gstage.map(&mut ram, last_gigapage, 0, PageSize::Size1G, RW),
            Err(MapError::SplitBySmallerPages {
                gpa: last_gigapage,
                page_size: PageSize::Size1G
            })
        );
        gstage
            .unmap(&mut ram, last_page, PageSize::Size4K)
            .expect("unmap last page");
        gstage.reclaim_empty_tables(&mut ram, || {});
        gstage
            .map(&mut ram, last_gigapage, 0, PageSize::Size1G, RW)
            .expect("last 1G page");
        assert_eq!(
            gstage.translate(&ram, limit - 1).map(|t| t.hpa),
            Some(GIB - 1)
        );

        for (gpa, size) in [
            (limit, PageSize::Size4K),
            (limit, PageSize::Size1G),
            (u64::MAX - 4095, PageSize::Size4K),
        ] {
            assert_eq!(
                gstage.map(&mut ram, gpa, 0, size, RW),
                Err(MapError::GpaOutOfRange {
                    gpa,
                    len: size.bytes(),
                    mode
                }),
                "{mode} map at {gpa:#x}"
            );
            assert_eq!(
                gstage.unmap(&mut ram, gpa, size),
                Err(MapError::GpaOutOfRange {
                    gpa,
                    len: size.bytes(),
                    mode
                })
            );
        }
        assert_eq!(
            gstage.map_range(&mut ram, limit - 4 * KIB, 0, 8 * KIB, RW),
            Err(MapError::GpaOutOfRange {
                gpa: limit - 4 * KIB,
                len: 8 * KIB,
                mode
            })
        );
        assert_eq!(gstage.table_bytes(), ram.outstanding_bytes());
    }
    assert_eq!(Mode::Sv39x4.gpa_limit(), 1 << 41);
    assert_eq!(Mode::Sv48x4.gpa_limit(), 1 << 50);
}

#[test]
fn host_address_limits() {
    let (mut ram, mut gstage) = setup(Mode::Sv39x4);
    let top = 1u64 << 56;
    gstage
        .map(&mut ram, 0, top - GIB, PageSize::Size1G, RW)
        .expect("highest 1 GiB of host space");
    assert_eq!(
        gstage.translate(&ram, GIB - 1).map(|t| t.hpa),
        Some(top - 1)
    );
    assert_eq!(
        gstage.map(&mut ram, GIB, top, PageSize::Size4K, RW),
        Err(MapError::HpaOutOfRange {
            hpa: top,
            len: 4 * KIB
        })
    );
    assert_eq!(
        gstage.map_range(&mut ram, GIB, u64::MAX - 4095, 8 * KIB, RW),
        Err(MapError::HpaOutOfRange {
            hpa: u64::MAX - 4095,
            len: 8 * KIB
        })
    );
}

#[test]
fn misaligned_addresses_are_rejected() {
    let (mut ram, mut gstage) = setup(Mode::Sv39x4);
    let cases = [
        (
            0x1234,
            0,
            PageSize::Size4K,
            MapError::MisalignedGpa {
                gpa: 0x1234,
                alignment: 4 * KIB,
            },
        ),
        (
            0,
            0x800,
            PageSize::Size4K,
            MapError::MisalignedHpa {
                hpa: 0x800,
                alignment: 4 * KIB,
            },
        ),
        (
            0x1000,
            0,
            PageSize::Size2M,
            MapError::MisalignedGpa {
                gpa: 0x1000,
                alignment: 2 * MIB,
            },
        ),
        (
            0,
            0x10_0000,
            PageSize::Size2M,
            MapError::MisalignedHpa {
                hpa: 0x10_0000,
                alignment: 2 * MIB,
            },
        ),
        (
            0x20_0000,
            0,
            PageSize::Size1G,
            MapError::MisalignedGpa {
                gpa: 0x20_0000,
                alignment: GIB,
            },
        ),
        (
            0,
            0x20_0000,
            PageSize::Size1G,
            MapError::MisalignedHpa {
                hpa: 0x20_0000,
                alignment: GIB,
            },
        ),
    ];
    for (gpa, hpa, size, expected) in cases {
        assert_eq!(gstage.map(&mut ram, gpa, hpa, size, RW), Err(expected));
    }
    assert_eq!(
        gstage.unmap(&mut ram, 0x1000, PageSize::Size2M),
        Err(MapError::MisalignedGpa {
            gpa: 0x1000,
            alignment: 2 * MIB
        })
    );
    assert_eq!(
        gstage.map_range(&mut ram, 0x1001, 0, 4 * KIB, RW),
        Err(MapError::MisalignedGpa {
            gpa: 0x1001,
            alignment: 4 * KIB
        })
    );
    assert_eq!(
        gstage.map_range(&mut ram, 0, 0x10, 4 * KIB, RW),
        Err(MapError::MisalignedHpa {
            hpa: 0x10,
            alignment: 4 * KIB
        })
    );
    assert_eq!(
        gstage.map_range(&mut ram, 0, 0, 4097, RW),
        Err(MapError::MisalignedLength { len: 4097 })
    );
    // None of the refused requests allocated a table.
    assert_eq!(ram.outstanding_tables(), 1);
}

#[test]
fn overlapping_maps_are_rejected_both_ways() {
    let (mut ram, mut gstage) = setup(Mode::Sv39x4);

    // Small inside huge: every smaller page inside an existing 1 GiB or 2 MiB page.
    gstage
        .map(&mut ram, GIB, 0, PageSize::Size1G, RW)
        .expect("1G");
    for (gpa, size) in [
        (GIB + 0x20_0000, PageSize::Size2M),
        (GIB + 0x3000, PageSize::Size4K),
        (GIB, PageSize::Size1G),
    ] {
        assert_eq!(
            gstage.map(&mut ram, gpa, 0, size, RW),
            Err(MapError::AlreadyMapped {
                gpa,
                existing_gpa: GIB,
                existing_size: PageSize::Size1G
            }),
            "{size} inside 1 GiB page"
        );
    }
    gstage
        .map(&mut ram, 0x40_0000, 0, PageSize::Size2M, RW)
        .expect("2M");
    assert_eq!(
        gstage.map(&mut ram, 0x40_1000, 0, PageSize::Size4K, RW),
        Err(MapError::AlreadyMapped {
            gpa: 0x40_1000,
            existing_gpa: 0x40_0000,
            existing_size: PageSize::Size2M
        })
    );
    gstage
        .map(&mut ram, 0x80_5000, 0, PageSize::Size4K, RW)
        .expect("4K");
    assert_eq!(
        gstage.map(&mut ram, 0x80_5000, 0x1000, PageSize::Size4K, Perm::READ),
        Err(MapError::AlreadyMapped {
            gpa: 0x80_5000,
            existing_gpa: 0x80_5000,
            existing_size: PageSize::Size4K
        })
    );

    // Huge over small: a larger page where smaller pages already live.
    assert_eq!(
        gstage.map(&mut ram, 0x80_0000, 0, PageSize::Size2M, RW),
        Err(MapError::SplitBySmallerPages {
            gpa: 0x80_0000,
            page_size: PageSize::Size2M
        })
    );
    assert_eq!(
        gstage.map(&mut ram, 0, 0, PageSize::Size1G, RW),
        Err(MapError::SplitBySmallerPages {
            gpa: 0,
            page_size: PageSize::Size1G
        })
    );

    // The refused requests left the existing mappings untouched.
    assert_eq!(
        gstage.translate(&ram, 0x80_5000).map(|t| (t.hpa, t.perm)),
        Some((0, RW))
    );
    assert_eq!(
        gstage.translate(&ram, GIB + 0x3000).map(|t| t.page_size),
        Some(PageSize::Size1G)
    );
    assert_eq!(
        gstage.translate(&ram, 0x40_1000).map(|t| t.hpa),
        Some(0x1000)
    );
}

#[test]
fn unmap_then_translate_is_none() {
    let (mut ram, mut gstage) = setup(Mode::Sv39x4);
    let pages = [
        (0x1000, 0xa000_1000, PageSize::Size4K),
        (0x20_0000, 0xa020_0000, PageSize::Size2M),
        (GIB, 0x1_4000_0000, PageSize::Size1G),
    ];
    for (gpa, hpa, size) in pages {
        gstage.map(&mut ram, gpa, hpa, size, RW).expect("map");
    }
    for (gpa, hpa, size) in pages {
        assert_eq!(gstage.unmap(&mut ram, gpa, size), Ok(hpa));
        assert_eq!(gstage.translate(&ram, gpa), None);
        assert_eq!(gstage.translate(&ram, gpa + size.bytes() - 1), None);
        assert_eq!(
            gstage.unmap(&mut ram, gpa, size),
            Err(MapError::NotMapped { gpa }),
            "second unmap"
        );
    }
    // Same page can be mapped again after being unmapped.
    gstage
        .map(&mut ram, 0x1000, 0xb000_0000, PageSize::Size4K, Perm::READ)
        .expect("remap");
    assert_eq!(
        gstage.translate(&ram, 0x1000).map(|t| t.hpa),
        Some(0xb000_0000)
    );
}

#[test]
fn unmap_with_the_wrong_size_is_rejected() {
    let (mut ram, mut gstage) = setup(Mode::Sv39x4);
    gstage
        .map(&mut ram, GIB, 0, PageSize::Size1G, RW)
        .expect("1G");
    gstage
        .map(&mut ram, 0x20_0000, 0, PageSize::Size2M, RW)
        .expect("2M");
    gstage
        .map(&mut ram, 0x40_0000, 0, PageSize::Size4K, RW)
        .expect("4K");

    assert_eq!(
        gstage.unmap(&mut ram, GIB + 0x20_0000, PageSize::Size2M),
        Err(MapError::CoveredByLargerPage {
            gpa: GIB + 0x20_0000,
            requested: PageSize::Size2M,
            existing_gpa: GIB,
            existing_size: PageSize::Size1G,
        })
    );
    assert_eq!(
        gstage.unmap(&mut ram, 0x20_1000, PageSize::Size4K),
        Err(MapError::CoveredByLargerPage {
            gpa: 0x20_1000,
            requested: PageSize::Size4K,
            existing_gpa: 0x20_0000,
            existing_size: PageSize::Size2M,
        })
    );
    assert_eq!(
        gstage.unmap(&mut ram, 0x40_0000, PageSize::Size2M),
        Err(MapError::SplitBySmallerPages {
            gpa: 0x40_0000,
            page_size: PageSize::Size2M
        })
    );
    assert_eq!(
        gstage.unmap(&mut ram, 0, PageSize::Size1G),
        Err(MapError::SplitBySmallerPages {
            gpa: 0,
            page_size: PageSize::Size1G
        })
    );
    assert_eq!(
        gstage.unmap(&mut ram, 0x40_1000, PageSize::Size4K),
        Err(MapError::NotMapped { gpa: 0x40_1000 })
    );
    assert_eq!(
        gstage.unmap(&mut ram, 3 * GIB, PageSize::Size4K),
        Err(MapError::NotMapped { gpa: 3 * GIB })
    );
    // Everything is still mapped.
    assert!(gstage.translate(&ram, GIB).is_some());
    assert!(gstage.translate(&ram, 0x20_0000).is_some());
    assert!(gstage.translate(&ram, 0x40_0000).is_some());
}

#[test]
fn map_range_picks_the_largest_pages() {
    let (mut ram, mut gstage) = setup(Mode::Sv39x4);
    // GPA and HPA share alignment; the range starts 2 MiB + 4 KiB below a 1 GiB boundary.
    let gpa = 3 * GIB - 2 * MIB - 4 * KIB;
    let hpa = 0x10_0000_0000 - 2 * MIB - 4 * KIB;
    let len = 4 * KIB + 2 * MIB + GIB + 2 * MIB + 4 * KIB;
    gstage
        .map_range(&mut ram, gpa, hpa, len, RW)
        .expect("map_range");

    let expected = [
        (0, PageSize::Size4K),
        (4 * KIB, PageSize::Size2M),
        (4 * KIB + 2 * MIB, PageSize::Size1G),
        (4 * KIB + 2 * MIB + GIB, PageSize::Size2M),
        (4 * KIB + 4 * MIB + GIB, PageSize::Size4K),
    ];
    for (offset, size) in expected {
        for probe in [offset, offset + size.bytes() - 8] {
            assert_eq!(
                gstage.translate(&ram, gpa + probe),
                Some(Translation {
                    hpa: hpa + probe,
                    perm: RW,
                    page_size: size
                }),
                "offset {probe:#x}"
            );
        }
    }
    assert_eq!(gstage.translate(&ram, gpa - 1), None);
    assert_eq!(gstage.translate(&ram, gpa + len), None);
    // Root, plus one level-1 and one level-0 table at each end.
    assert_eq!(ram.outstanding_tables(), 5);
    assert_eq!(gstage.table_bytes(), 16 * KIB + 4 * 4 * KIB);
}

#[test]
fn map_range_falls_back_to_small_pages_when_alignment_differs() {
    let (mut ram, mut gstage) = setup(Mode::Sv39x4);
    // GPA is 2 MiB aligned but HPA is only 4 KiB aligned, so nothing larger than 4 KiB fits.
    let gpa = 0x20_0000;
    let hpa = 0x8000_1000;
    let len = 4 * MIB;
    gstage
        .map_range(&mut ram, gpa, hpa, len, Perm::READ | Perm::EXEC)
        .expect("map_range");
    for offset in (0..len).step_by(4096) {
        let translation = gstage.translate(&ram, gpa + offset).expect("mapped");
        assert_eq!(translation.page_size, PageSize::Size4K);
        assert_eq!(translation.hpa, hpa + offset);
    }
    // 1024 pages span two level-0 tables below one level-1 table.
    assert_eq!(ram.outstanding_tables(), 1 + 1 + 2);
}

#[test]
fn map_range_zero_length_and_rollback() {
    let (mut ram, mut gstage) = setup(Mode::Sv39x4);
    gstage
        .map_range(&mut ram, 0x1000, 0x1000, 0, RW)
        .expect("zero length");
    assert_eq!(ram.outstanding_tables(), 1);

    // A page in the middle of the range is taken: the call fails and maps nothing.
    gstage
        .map(&mut ram, 0x60_0000, 0x5000, PageSize::Size4K, Perm::READ)
        .expect("blocker");
    assert_eq!(
        gstage.map_range(&mut ram, 0x20_0000, 0x20_0000, 8 * MIB, RW),
        Err(MapError::SplitBySmallerPages {
            gpa: 0x60_0000,
            page_size: PageSize::Size2M
        })
    );
    for gpa in [0x20_0000, 0x40_0000, 0x5f_f000, 0x80_0000, 0x9f_f000] {
        assert_eq!(gstage.translate(&ram, gpa), None, "rolled back at {gpa:#x}");
    }
    assert_eq!(
        gstage.translate(&ram, 0x60_0000).map(|t| t.hpa),
        Some(0x5000)
    );

    // Rollback also happens when table memory runs out part-way.
    ram.set_allocation_budget(Some(2));
    assert_eq!(
        gstage.map_range(&mut ram, GIB - 8 * KIB, GIB - 8 * KIB, 16 * KIB, RW),
        Err(MapError::OutOfTableMemory { bytes: 4096 })
    );
    ram.set_allocation_budget(None);
    assert_eq!(gstage.translate(&ram, GIB - 8 * KIB), None);
    assert_eq!(gstage.translate(&ram, GIB - 4 * KIB), None);
    assert_eq!(gstage.table_bytes(), ram.outstanding_bytes());
}

#[test]
fn permission_checks() {
    let (mut ram, mut gstage) = setup(Mode::Sv39x4);
    assert_eq!(
        gstage.map(&mut ram, 0, 0, PageSize::Size4K, Perm::WRITE),
        Err(MapError::WriteWithoutRead)
    );
    assert_eq!(
        gstage.map(&mut ram, 0, 0, PageSize::Size4K, Perm::WRITE | Perm::EXEC),
        Err(MapError::WriteWithoutRead)
    );
    assert_eq!(
        gstage.map(&mut ram, 0, 0, PageSize::Size4K, Perm::empty()),
        Err(MapError::EmptyPermission)
    );
    assert_eq!(
        gstage.map_range(&mut ram, 0, 0, 4 * KIB, Perm::WRITE),
        Err(MapError::WriteWithoutRead)
    );
    // Bits outside R/W/X are dropped, so they count as no permission at all.
    assert_eq!(
        gstage.map(
            &mut ram,
            0,
            0,
            PageSize::Size4K,
            Perm::from_bits_retain(PTE_V | PTE_G)
        ),
        Err(MapError::EmptyPermission)
    );
    assert_eq!(
        ram.outstanding_tables(),
        1,
        "refused requests allocate nothing"
    );

    gstage
        .map(&mut ram, 0, 0, PageSize::Size4K, Perm::EXEC)
        .expect("execute-only is allowed");
    assert_eq!(gstage.translate(&ram, 0).map(|t| t.perm), Some(Perm::EXEC));
}

#[test]
fn pte_bits_follow_the_g_stage_rules() {
    let (mut ram, mut gstage) = setup(Mode::Sv39x4);
    let smuggled = Perm::READ | Perm::from_bits_retain(PTE_G | (1 << 63) | (0xfff << 10));
    gstage
        .map(&mut ram, 0x5000, 0x1234_5000, PageSize::Size4K, smuggled)
        .expect("4K");
    gstage
        .map(&mut ram, 0x20_0000, 0x4020_0000, PageSize::Size2M, RW)
        .expect("2M");
    gstage
        .map(&mut ram, GIB, 0x8000_0000, PageSize::Size1G, RWX)
        .expect("1G");

    let cases = [
        (0x5000, 0x1234_5000, Perm::READ),
        (0x20_0000, 0x4020_0000, RW),
        (GIB, 0x8000_0000, RWX),
    ];
    for (gpa, hpa, perm) in cases {
        let pte = leaf_pte(&ram, &gstage, gpa).expect("leaf");
        let required = PTE_V | PTE_U | PTE_A | PTE_D;
        assert_eq!(pte & required, required, "V, U, A, D set in {pte:#x}");
        assert_eq!(pte & PTE_G, 0, "G clear in {pte:#x}");
        assert_eq!(pte & 0b1110, perm.bits(), "R/W/X in {pte:#x}");
        assert_eq!(pte >> 54, 0, "reserved, PBMT and N clear in {pte:#x}");
        assert_eq!((pte >> 10) << 12, hpa, "PPN in {pte:#x}");
    }
    // Non-leaf entries carry only V and the PPN: D, A and U are reserved there.
    let tables = table_ptes(&ram, &gstage);
    assert_eq!(
        tables.len(),
        2,
        "one level-1 table for both small pages, one level-0 table"
    );
    for pte in tables {
        assert_eq!(pte & 0x3ff, PTE_V, "non-leaf flags in {pte:#x}");
        assert!(
            ram.is_allocated((pte >> 10) << 12),
            "non-leaf points to a table"
        );
    }
}

#[test]
fn hgatp_encoding() {
    let (_ram, gstage) = setup(Mode::Sv39x4);
    let hgatp = gstage.hgatp(0x2a5).expect("hgatp");
    assert_eq!(hgatp >> 60, 8);
    assert_eq!((hgatp >> 44) & 0x3fff, 0x2a5);
    assert_eq!((hgatp >> 58) & 0b11, 0, "bits 59:58 are zero");
    assert_eq!((hgatp & ((1 << 44) - 1)) << 12, gstage.root());
    assert_eq!(
        gstage.hgatp(0x3fff).map(|value| (value >> 44) & 0x3fff),
        Ok(0x3fff)
    );
    assert_eq!(
        gstage.hgatp(0x4000),
        Err(MapError::VmidOutOfRange { vmid: 0x4000 })
    );
    assert_eq!(
        gstage.hgatp(u16::MAX),
        Err(MapError::VmidOutOfRange { vmid: u16::MAX })
    );

    let (_ram, gstage) = setup(Mode::Sv48x4);
    let hgatp = gstage.hgatp(0).expect("hgatp");
    assert_eq!(hgatp, (9 << 60) | (gstage.root() >> 12));
}

#[test]
fn destroy_frees_every_table() {
    for mode in [Mode::Sv39x4, Mode::Sv48x4] {
        let (mut ram, mut gstage) = setup(mode);
        gstage
            .map_range(&mut ram, 0x1000, 0x1000, 3 * GIB, RW)
            .expect("range");
        gstage
            .map(&mut ram, mode.gpa_limit() - 4096, 0, PageSize::Size4K, RW)
            .expect("top page");
        gstage
            .map(&mut ram, 0x1_0000_0000, 0, PageSize::Size2M, RW)
            .expect("2M");
        assert!(ram.outstanding_tables() > 4);
        assert_eq!(gstage.table_bytes(), ram.outstanding_bytes());
        gstage.destroy(&mut ram);
        assert_eq!(ram.outstanding_tables(), 0, "{mode}");
        assert_eq!(ram.outstanding_bytes(), 0, "{mode}");
    }
}

#[test]
fn reclaim_frees_only_empty_tables_after_the_fence() {
    let (mut ram, mut gstage) = setup(Mode::Sv39x4);
    gstage
        .map(&mut ram, 0x1000, 0, PageSize::Size4K, RW)
        .expect("a");
    gstage
        .map(&mut ram, 0x40_0000, 0, PageSize::Size4K, RW)
        .expect("b");
    gstage
        .map(&mut ram, GIB + 0x1000, 0, PageSize::Size4K, RW)
        .expect("c");
    // Root; for GiB 0 a level-1 table and two level-0 tables; for GiB 1 one of each.
    assert_eq!(ram.outstanding_tables(), 1 + 3 + 2);

    // Nothing empty yet: nothing freed, the fence still runs.
    let mut fenced = false;
    assert_eq!(gstage.reclaim_empty_tables(&mut ram, || fenced = true), 0);
    assert!(fenced);

    gstage
        .unmap(&mut ram, 0x1000, PageSize::Size4K)
        .expect("unmap a");
    gstage
        .unmap(&mut ram, GIB + 0x1000, PageSize::Size4K)
        .expect("unmap c");
    assert_eq!(ram.outstanding_tables(), 6, "unmap frees no table");
    let released = gstage.reclaim_empty_tables(&mut ram, || {});
    // a's level-0 table, c's level-0 and level-1 tables.
    assert_eq!(released, 3 * 4096);
    assert_eq!(ram.outstanding_tables(), 3);
    assert_eq!(gstage.table_bytes(), ram.outstanding_bytes());
    assert_eq!(gstage.translate(&ram, 0x40_0000).map(|t| t.hpa), Some(0));
    // The freed range can now take a gigapage.
    gstage
        .map(&mut ram, GIB, 0, PageSize::Size1G, RW)
        .expect("1G after reclaim");
    gstage.destroy(&mut ram);
    assert_eq!(ram.outstanding_tables(), 0);
}

#[test]
fn tables_at_physical_address_zero_work() {
    // Zero is a legitimate table address; nothing may treat it as "no table".
    let mut ram = FakeRam::with_base(0, 64);
    let mut gstage = GStage::new(&mut ram, Mode::Sv39x4).expect("root");
    assert_eq!(gstage.root(), 0);
    assert_eq!(gstage.hgatp(1), Ok((8 << 60) | (1 << 44)));
    for gpa in [0x1000, 0x20_0000, GIB] {
        gstage
            .map(&mut ram, gpa, gpa, PageSize::Size4K, RW)
            .expect("map");
    }
    for gpa in [0x1000, 0x20_0000, GIB] {
        gstage
            .unmap(&mut ram, gpa, PageSize::Size4K)
            .expect("unmap");
    }
    // Two level-1 tables and three level-0 tables, all empty now.
    assert_eq!(gstage.reclaim_empty_tables(&mut ram, || {}), 5 * 4096);
    assert_eq!(ram.outstanding_tables(), 1);
    gstage.destroy(&mut ram);
    assert_eq!(ram.outstanding_tables(), 0);
}

#[test]
fn fence_observes_tables_unhooked_but_not_freed() {
    // Capture the table memory state at fence time by sharing the RAM through a cell.
    use std::cell::RefCell;
    struct Shared<'a>(&'a RefCell<FakeRam>);
    impl TableMemory for Shared<'_> {
        fn alloc_table(&mut self, bytes: usize, align: usize) -> Option<u64> {
            self.0.borrow_mut().alloc_table(bytes, align)
        }
        fn free_table(&mut self, addr: u64, bytes: usize) {
            self.0.borrow_mut().free_table(addr, bytes)
        }
        fn read_pte(&self, addr: u64) -> u64 {
            self.0.borrow().read_pte(addr)
        }
        fn write_pte(&mut self, addr: u64, pte: u64) {
            self.0.borrow_mut().write_pte(addr, pte)
        }
    }
    let ram = RefCell::new(FakeRam::new(64));
    let mut memory = Shared(&ram);
    let mut gstage = GStage::new(&mut memory, Mode::Sv39x4).expect("root");
    gstage
        .map(&mut memory, 0x1000, 0, PageSize::Size4K, RW)
        .expect("map");
    gstage
        .unmap(&mut memory, 0x1000, PageSize::Size4K)
        .expect("unmap");
    let root = gstage.root();
    let mut seen = None;
    gstage.reclaim_empty_tables(&mut memory, || {
        let ram = ram.borrow();
        // The root no longer points anywhere, yet both tables are still allocated.
        seen = Some((ram.read_pte(root), ram.outstanding_tables()));
    });
    assert_eq!(seen, Some((0, 3)));
    assert_eq!(ram.borrow().outstanding_tables(), 1);
}

#[test]
fn out_of_table_memory_is_an_error() {
    let mut ram = FakeRam::new(64);
    ram.set_allocation_budget(Some(0));
    assert_eq!(
        GStage::new(&mut ram, Mode::Sv39x4).err(),
        Some(MapError::OutOfTableMemory { bytes: 16384 })
    );

    let mut small = FakeRam::new(3);
    assert_eq!(
        GStage::new(&mut small, Mode::Sv39x4).err(),
        Some(MapError::OutOfTableMemory { bytes: 16384 }),
        "three frames cannot hold a 16 KiB root"
    );

    ram.set_allocation_budget(Some(2));
    let mut gstage = GStage::new(&mut ram, Mode::Sv39x4).expect("root");
    assert_eq!(
        gstage.map(&mut ram, 0x1000, 0, PageSize::Size4K, RW),
        Err(MapError::OutOfTableMemory { bytes: 4096 })
    );
    assert_eq!(gstage.translate(&ram, 0x1000), None);
    assert_eq!(
        gstage.table_bytes(),
        ram.outstanding_bytes(),
        "the level-1 table is accounted"
    );
    ram.set_allocation_budget(None);
    gstage
        .map(&mut ram, 0x1000, 0, PageSize::Size4K, RW)
        .expect("map once memory is back");
    gstage.destroy(&mut ram);
    assert_eq!(ram.outstanding_tables(), 0);
}

#[test]
fn unusable_table_addresses_are_handed_back() {
    /// Returns a fixed address for every allocation and records frees.
    struct Broken {
        addr: u64,
        freed: Vec<(u64, usize)>,
    }
    impl TableMemory for Broken {
        fn alloc_table(&mut self, _bytes: usize, _align: usize) -> Option<u64> {
            Some(self.addr)
        }
        fn free_table(&mut self, addr: u64, bytes: usize) {
            self.freed.push((addr, bytes));
        }
        fn read_pte(&self, _addr: u64) -> u64 {
            panic!("no entry may be read from an unusable table");
        }
        fn write_pte(&mut self, _addr: u64, _pte: u64) {
            panic!("no entry may be written to an unusable table");
        }
    }
    for addr in [0x8000_1000, 1 << 56, !0x3fff] {
        let mut memory = Broken {
            addr,
            freed: Vec::new(),
        };
        assert_eq!(
            GStage::new(&mut memory, Mode::Sv39x4).err(),
            Some(MapError::BadTableAddress { addr, bytes: 16384 })
        );
        assert_eq!(memory.freed, vec![(addr, 16384)]);
    }
}

#[test]
fn error_messages_name_the_problem() {
    let cases = [
        (
            MapError::MisalignedGpa {
                gpa: 0x1234,
                alignment: 0x1000,
            },
            "guest-physical address 0x1234 is not aligned to 0x1000 bytes",
        ),
        (
            MapError::MisalignedHpa {
                hpa: 0x10,
                alignment: 0x200000,
            },
            "host-physical address 0x10 is not aligned to 0x200000 bytes",
        ),
        (
            MapError::GpaOutOfRange {
                gpa: 1 << 41,
                len: 4096,
                mode: Mode::Sv39x4,
            },
            "guest-physical range 0x20000000000 + 0x1000 exceeds the Sv39x4 limit of 0x20000000000",
        ),
        (
            MapError::AlreadyMapped {
                gpa: 0x1000,
                existing_gpa: 0,
                existing_size: PageSize::Size2M,
            },
            "guest-physical address 0x1000 is already mapped by the 2 MiB page at 0x0",
        ),
        (
            MapError::NotMapped { gpa: 0x5000 },
            "guest-physical address 0x5000 is not mapped",
        ),
        (
            MapError::WriteWithoutRead,
            "write permission without read permission is a reserved PTE encoding",
        ),
        (
            MapError::OutOfTableMemory { bytes: 4096 },
            "out of memory for a 4096-byte page table",
        ),
        (
            MapError::VmidOutOfRange { vmid: 0x4000 },
            "VMID 0x4000 does not fit in the 14-bit hgatp.VMID field",
        ),
    ];
    for (error, message) in cases {
        assert_eq!(error.to_string(), message);
    }
    let split = MapError::SplitBySmallerPages {
        gpa: 0,
        page_size: PageSize::Size1G,
    }
    .to_string();
    assert!(
        split.contains("1 GiB page") && split.contains("lower-level table"),
        "{split}"
    );
}

/// Deterministic xorshift64 generator, so failures reproduce from the seed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// Reference model: mapping start GPA to (HPA, size, permission). `proptests.rs` checks against it too.
pub(crate) type Model = BTreeMap<u64, (u64, PageSize, Perm)>;

/// What the model says `gpa` translates to.
pub(crate) fn model_lookup(model: &Model, gpa: u64) -> Option<Translation> {
    let (&start, &(hpa, page_size, perm)) = model.range(..=gpa).next_back()?;
    (gpa - start < page_size.bytes()).then_some(Translation {
        hpa: hpa + (gpa - start),
        perm,
        page_size,
    })
}

/// Whether any byte of `len` bytes at `gpa` is mapped in the model.
pub(crate) fn model_overlaps(model: &Model, gpa: u64, len: u64) -> bool {
    model_lookup(model, gpa).is_some() || model.range(gpa..gpa.saturating_add(len)).next().is_some()
}

/// A GPA in a small window (near 0 and near the top of the space) so random requests collide.
fn random_gpa(rng: &mut XorShift, mode: Mode, size: PageSize) -> u64 {
    let gigabyte_region = match rng.below(5) {
        4 => mode.gpa_limit() - GIB,
        region => region * GIB,
    };
    let offset = match size {
        PageSize::Size1G => 0,
        PageSize::Size2M => rng.below(8) * 2 * MIB,
        PageSize::Size4K => rng.below(8) * 2 * MIB + rng.below(16) * 4 * KIB,
    };
    gigabyte_region + offset
}

fn random_size(rng: &mut XorShift) -> PageSize {
    match rng.below(10) {
        0 => PageSize::Size1G,
        1..=3 => PageSize::Size2M,
        _ => PageSize::Size4K,
    }
}

fn random_perm(rng: &mut XorShift) -> Perm {
    [Perm::READ, RW, RWX, Perm::EXEC, Perm::READ | Perm::EXEC][rng.below(5) as usize]
}

fn check_against_model(ram: &FakeRam, gstage: &GStage, model: &Model, rng: &mut XorShift) {
    for (&gpa, &(hpa, size, perm)) in model {
        let last = gpa + size.bytes() - 1;
        assert_eq!(
            gstage.translate(ram, gpa),
            Some(Translation {
                hpa,
                perm,
                page_size: size
            })
        );
        assert_eq!(
            gstage.translate(ram, last).map(|t| t.hpa),
            Some(hpa + size.bytes() - 1)
        );
    }
    for _ in 0..64 {
        let gpa = random_gpa(rng, gstage.mode(), PageSize::Size4K) + rng.below(4096);
        assert_eq!(
            gstage.translate(ram, gpa),
            model_lookup(model, gpa),
            "translate {gpa:#x}"
        );
    }
    assert_eq!(gstage.table_bytes(), ram.outstanding_bytes());
}

fn run_random_operations(mode: Mode, seed: u64, steps: usize) {
    let mut rng = XorShift(seed);
    let mut ram = FakeRam::new(4096);
    let mut gstage = GStage::new(&mut ram, mode).expect("root");
    let mut model = Model::new();

    for step in 0..steps {
        match rng.below(10) {
            // Map a random page.
            0..=4 => {
                let size = random_size(&mut rng);
                let gpa = random_gpa(&mut rng, mode, size);
                let hpa = rng.below(1 << 20) * size.bytes() % (1 << 56);
                let perm = random_perm(&mut rng);
                let overlaps = model_overlaps(&model, gpa, size.bytes());
                let mut result = gstage.map(&mut ram, gpa, hpa, size, perm);
                if !overlaps && matches!(result, Err(MapError::SplitBySmallerPages { .. })) {
                    // Only tables left empty by earlier unmaps may be in the way.
                    gstage.reclaim_empty_tables(&mut ram, || {});
                    result = gstage.map(&mut ram, gpa, hpa, size, perm);
                }
                assert_eq!(
                    result.is_ok(),
                    !overlaps,
                    "step {step}: map {size} at {gpa:#x} gave {result:?}"
                );
                if !overlaps {
                    model.insert(gpa, (hpa, size, perm));
                }
            }
            // Unmap an existing page.
            5..=6 if !model.is_empty() => {
                let index = rng.below(model.len() as u64) as usize;
                let (&gpa, &(hpa, size, _)) = model.iter().nth(index).expect("index in range");
                assert_eq!(
                    gstage.unmap(&mut ram, gpa, size),
                    Ok(hpa),
                    "step {step}: unmap {gpa:#x}"
                );
                model.remove(&gpa);
            }
            // Unmap at a random place: succeeds exactly when a page of that size starts there.
            7 => {
                let size = random_size(&mut rng);
                let gpa = random_gpa(&mut rng, mode, size);
                let expected = match model.get(&gpa) {
                    Some(&(hpa, mapped_size, _)) if mapped_size == size => Some(hpa),
                    _ => None,
                };
                let result = gstage.unmap(&mut ram, gpa, size);
                assert_eq!(
                    result.ok(),
                    expected,
                    "step {step}: unmap {size} at {gpa:#x} gave {result:?}"
                );
                if expected.is_some() {
                    model.remove(&gpa);
                }
            }
            // Map a short range of mixed alignment.
            8 => {
                let gpa = random_gpa(&mut rng, mode, PageSize::Size4K);
                let len = (1 + rng.below(600)) * 4 * KIB;
                let hpa = rng.below(1 << 24) * 4 * KIB;
                let fits = gpa + len <= mode.gpa_limit();
                let overlaps =
                    (0..len / 4096).any(|page| model_lookup(&model, gpa + page * 4096).is_some());
                let mut result = gstage.map_range(&mut ram, gpa, hpa, len, RW);
                if fits && !overlaps && matches!(result, Err(MapError::SplitBySmallerPages { .. }))
                {
                    gstage.reclaim_empty_tables(&mut ram, || {});
                    result = gstage.map_range(&mut ram, gpa, hpa, len, RW);
                }
                assert_eq!(
                    result.is_ok(),
                    fits && !overlaps,
                    "step {step}: map_range {gpa:#x}+{len:#x} gave {result:?}"
                );
                if result.is_ok() {
                    let mut offset = 0;
                    while offset < len {
                        let page_size = gstage
                            .translate(&ram, gpa + offset)
                            .expect("just mapped")
                            .page_size;
                        model.insert(gpa + offset, (hpa + offset, page_size, RW));
                        offset += page_size.bytes();
                    }
                }
            }
            _ => {
                if rng.below(2) == 0 {
                    gstage.reclaim_empty_tables(&mut ram, || {});
                }
            }
        }
        if step.is_multiple_of(50) {
            check_against_model(&ram, &gstage, &model, &mut rng);
        }
    }
    check_against_model(&ram, &gstage, &model, &mut rng);

    // Unmapping everything and reclaiming returns the tables to just the root.
    let mappings: Vec<_> = model
        .iter()
        .map(|(&gpa, &(hpa, size, _))| (gpa, hpa, size))
        .collect();
    for (gpa, hpa, size) in mappings {
        assert_eq!(gstage.unmap(&mut ram, gpa, size), Ok(hpa));
    }
    gstage.reclaim_empty_tables(&mut ram, || {});
    assert_eq!(ram.outstanding_tables(), 1);
    assert_eq!(gstage.table_bytes(), 16 * KIB);
    gstage.destroy(&mut ram);
    assert_eq!(ram.outstanding_tables(), 0);
}

#[test]
fn random_operations_match_the_model_sv39x4() {
    for seed in [0x9e37_79b9_7f4a_7c15, 0x2545_f491_4f6c_dd1d, 7] {
        run_random_operations(Mode::Sv39x4, seed, 1500);
    }
}

#[test]
fn random_operations_match_the_model_sv48x4() {
    run_random_operations(Mode::Sv48x4, 0xdead_beef_cafe_f00d, 1500);
}
