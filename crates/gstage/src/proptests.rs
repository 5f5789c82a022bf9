//! Property tests of the G-stage tables: generated operation sequences against an exact model, bounds per mode, and `map_range` layouts.
//!
//! `tests.rs` drives map/unmap with a seeded generator over small address windows and only checks
//! whether each call succeeds. These properties go further: GPAs and HPAs anywhere in (and beyond)
//! each mode's space, every permission combination including the invalid ones, the exact error each
//! refused call must return, rollback of failed `map_range` calls, probes just outside every mapping,
//! and the table memory coming back in full once everything is unmapped.

use proptest::prelude::*;

use crate::test_support::FakeRam;
use crate::tests::{model_lookup, model_overlaps, Model};
use crate::{GStage, MapError, Mode, PageSize, Perm, Translation};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
/// One past the highest host-physical address a PTE can hold (a 44-bit PPN).
const HPA_LIMIT: u64 = 1 << 56;
const ROOT_BYTES: u64 = 16 * KIB;

/// The error `checked_perm` gives, if any: only R, W and X count, W needs R, and none is refused.
fn permission_error(perm: Perm) -> Option<MapError> {
    if perm.is_empty() {
        Some(MapError::EmptyPermission)
    } else if perm.contains(Perm::WRITE) && !perm.contains(Perm::READ) {
        Some(MapError::WriteWithoutRead)
    } else {
        None
    }
}

/// The error `map` must return before looking at the tables, in the order it checks.
fn map_argument_error(
    mode: Mode,
    gpa: u64,
    hpa: u64,
    size: PageSize,
    perm: Perm,
) -> Option<MapError> {
    let bytes = size.bytes();
    if let Some(error) = permission_error(perm) {
        return Some(error);
    }
    if gpa
        .checked_add(bytes)
        .is_none_or(|end| end > mode.gpa_limit())
    {
        return Some(MapError::GpaOutOfRange {
            gpa,
            len: bytes,
            mode,
        });
    }
    if !gpa.is_multiple_of(bytes) {
        return Some(MapError::MisalignedGpa {
            gpa,
            alignment: bytes,
        });
    }
    if !hpa.is_multiple_of(bytes) {
        return Some(MapError::MisalignedHpa {
            hpa,
            alignment: bytes,
        });
    }
    if hpa.checked_add(bytes).is_none_or(|end| end > HPA_LIMIT) {
        return Some(MapError::HpaOutOfRange { hpa, len: bytes });
    }
    None
}

fn is_overlap_error(error: &MapError) -> bool {
    matches!(
        error,
        MapError::AlreadyMapped { .. }
            | MapError::CoveredByLargerPage { .. }
            | MapError::SplitBySmallerPages { .. }
    )
}

fn mode_strategy() -> impl Strategy<Value = Mode> {
    prop_oneof![Just(Mode::Sv39x4), Just(Mode::Sv48x4)]
}

fn size_strategy() -> impl Strategy<Value = PageSize> {
    prop_oneof![
        6 => Just(PageSize::Size4K),
        3 => Just(PageSize::Size2M),
        1 => Just(PageSize::Size1G),
    ]
}

/// All eight R/W/X combinations, valid or not.
fn perm_strategy() -> impl Strategy<Value = Perm> {
    (0u64..8).prop_map(|bits| Perm::from_bits_truncate(bits << 1))
}

/// A GPA for a page of `size`: mostly aligned and crowded into a few gigabytes (low memory, just
/// below the Sv39x4 limit and just below the Sv48x4 limit) so that requests collide, sometimes
/// anywhere at all.
fn gpa_strategy(size: PageSize) -> impl Strategy<Value = u64> {
    let bytes = size.bytes();
    let windows = prop_oneof![
        Just(0u64),
        Just(GIB),
        Just((1 << 41) - GIB),
        Just((1 << 50) - GIB),
        Just(1 << 41)
    ];
    prop_oneof![
        8 => (windows, 0u64..256).prop_map(move |(window, page)| window + (page * bytes) % GIB),
        1 => any::<u64>(),
        1 => any::<u64>().prop_map(move |gpa| gpa & !(bytes - 1)),
    ]
}

/// An HPA for a page of `size`: mostly aligned and below the 56-bit limit.
fn hpa_strategy(size: PageSize) -> impl Strategy<Value = u64> {
    let bytes = size.bytes();
    prop_oneof![
        8 => (0u64..(1 << 20)).prop_map(move |frame| (frame * bytes) % HPA_LIMIT),
        1 => Just(HPA_LIMIT - bytes),
        1 => any::<u64>(),
    ]
}

#[derive(Clone, Debug)]
enum Operation {
    Map {
        gpa: u64,
        hpa: u64,
        size: PageSize,
        perm: Perm,
    },
    /// Unmap the `index % len`-th mapped page with its own size.
    UnmapExisting {
        index: usize,
    },
    /// Unmap whatever is (or is not) at `gpa`.
    Unmap {
        gpa: u64,
        size: PageSize,
    },
    /// Map `pages` 4 KiB pages; a 2 MiB-aligned GPA and HPA make the range use larger pages.
    MapRange {
        gpa: u64,
        hpa: u64,
        pages: u64,
        perm: Perm,
    },
    Reclaim,
}

fn operation_strategy() -> impl Strategy<Value = Operation> {
    let map = size_strategy().prop_flat_map(|size| {
        (gpa_strategy(size), hpa_strategy(size), perm_strategy()).prop_map(
            move |(gpa, hpa, perm)| Operation::Map {
                gpa,
                hpa,
                size,
                perm,
            },
        )
    });
    let unmap = size_strategy().prop_flat_map(|size| {
        gpa_strategy(size).prop_map(move |gpa| Operation::Unmap { gpa, size })
    });
    let map_range = (
        gpa_strategy(PageSize::Size4K),
        hpa_strategy(PageSize::Size4K),
        prop_oneof![1u64..64, Just(512u64), 500u64..1100],
        perm_strategy(),
    )
        .prop_map(|(gpa, hpa, pages, perm)| Operation::MapRange {
            gpa,
            hpa,
            pages,
            perm,
        });
    prop_oneof![
        5 => map,
        2 => any::<usize>().prop_map(|index| Operation::UnmapExisting { index }),
        1 => unmap,
        1 => map_range,
        1 => Just(Operation::Reclaim),
    ]
}

/// Every mapping translates exactly, from its first to its last byte; the bytes just before and
/// just after each mapping translate as the model says; the table memory is accounted for.
fn check_model(ram: &FakeRam, gstage: &GStage, model: &Model) -> Result<(), TestCaseError> {
    for (&gpa, &(hpa, size, perm)) in model {
        let bytes = size.bytes();
        for offset in [0, 8, bytes / 2 + 4, bytes - 1] {
            prop_assert_eq!(
                gstage.translate(ram, gpa + offset),
                Some(Translation {
                    hpa: hpa + offset,
                    perm,
                    page_size: size
                }),
                "inside the page at {:#x}",
                gpa
            );
        }
        for probe in [gpa.checked_sub(1), gpa.checked_add(bytes)]
            .into_iter()
            .flatten()
        {
            let expected = if probe < gstage.mode().gpa_limit() {
                model_lookup(model, probe)
            } else {
                None
            };
            prop_assert_eq!(
                gstage.translate(ram, probe),
                expected,
                "next to the page at {:#x}",
                gpa
            );
        }
    }
    prop_assert_eq!(gstage.table_bytes(), ram.outstanding_bytes());
    Ok(())
}

/// Applies `operation` to the tables and the model, checking the result against the model.
fn apply(
    ram: &mut FakeRam,
    gstage: &mut GStage,
    model: &mut Model,
    operation: &Operation,
) -> Result<(), TestCaseError> {
    let mode = gstage.mode();
    match *operation {
        Operation::Map {
            gpa,
            hpa,
            size,
            perm,
        } => {
            let expected_error = map_argument_error(mode, gpa, hpa, size, perm);
            let overlaps = expected_error.is_none() && model_overlaps(model, gpa, size.bytes());
            let mut result = gstage.map(ram, gpa, hpa, size, perm);
            if expected_error.is_none()
                && !overlaps
                && matches!(result, Err(MapError::SplitBySmallerPages { .. }))
            {
                // Only tables left empty by earlier unmaps may be in the way.
                gstage.reclaim_empty_tables(ram, || {});
                result = gstage.map(ram, gpa, hpa, size, perm);
            }
            match (expected_error, overlaps) {
                (Some(error), _) => prop_assert_eq!(result, Err(error)),
                (None, true) => prop_assert!(
                    result.as_ref().is_err_and(is_overlap_error),
                    "map {} at {:#x} over a mapping gave {:?}",
                    size,
                    gpa,
                    result
                ),
                (None, false) => {
                    prop_assert_eq!(result, Ok(()), "map {} at {:#x}", size, gpa);
                    model.insert(gpa, (hpa, size, perm));
                }
            }
        }
        Operation::UnmapExisting { index } => {
            if model.is_empty() {
                return Ok(());
            }
            let (&gpa, &(hpa, size, _)) = model
                .iter()
                .nth(index % model.len())
                .expect("index below len");
            prop_assert_eq!(gstage.unmap(ram, gpa, size), Ok(hpa));
            model.remove(&gpa);
            // Every byte of the page is gone, not only its first.
            for offset in [0, size.bytes() / 2, size.bytes() - 1] {
                prop_assert_eq!(gstage.translate(ram, gpa + offset), None);
            }
        }
        Operation::Unmap { gpa, size } => {
            let bytes = size.bytes();
            let result = gstage.unmap(ram, gpa, size);
            if gpa
                .checked_add(bytes)
                .is_none_or(|end| end > mode.gpa_limit())
            {
                prop_assert_eq!(
                    result,
                    Err(MapError::GpaOutOfRange {
                        gpa,
                        len: bytes,
                        mode
                    })
                );
            } else if !gpa.is_multiple_of(bytes) {
                prop_assert_eq!(
                    result,
                    Err(MapError::MisalignedGpa {
                        gpa,
                        alignment: bytes
                    })
                );
            } else {
                match model.get(&gpa) {
                    Some(&(hpa, mapped, _)) if mapped == size => {
                        prop_assert_eq!(result, Ok(hpa));
                        model.remove(&gpa);
                    }
                    _ => prop_assert!(
                        result.is_err(),
                        "unmap {} at {:#x} gave {:?}",
                        size,
                        gpa,
                        result
                    ),
                }
            }
        }
        Operation::MapRange {
            gpa,
            hpa,
            pages,
            perm,
        } => {
            let len = pages * 4 * KIB;
            let before: Vec<Option<Translation>> = (0..pages)
                .map(|page| gstage.translate(ram, gpa.wrapping_add(page * 4 * KIB)))
                .collect();
            let valid = permission_error(perm).is_none()
                && gpa.is_multiple_of(4 * KIB)
                && hpa.is_multiple_of(4 * KIB)
                && gpa
                    .checked_add(len)
                    .is_some_and(|end| end <= mode.gpa_limit())
                && hpa.checked_add(len).is_some_and(|end| end <= HPA_LIMIT);
            let overlaps = valid && model_overlaps(model, gpa, len);
            let mut result = gstage.map_range(ram, gpa, hpa, len, perm);
            if valid && !overlaps && matches!(result, Err(MapError::SplitBySmallerPages { .. })) {
                gstage.reclaim_empty_tables(ram, || {});
                result = gstage.map_range(ram, gpa, hpa, len, perm);
            }
            prop_assert_eq!(
                result.is_ok(),
                valid && !overlaps,
                "map_range {:#x}+{:#x} gave {:?}",
                gpa,
                len,
                result
            );
            if result.is_ok() {
                let mut done = 0;
                while done < len {
                    let translation = gstage
                        .translate(ram, gpa + done)
                        .expect("mapped by map_range");
                    prop_assert_eq!(translation.hpa, hpa + done);
                    prop_assert_eq!(translation.perm, perm);
                    model.insert(gpa + done, (hpa + done, translation.page_size, perm));
                    done += translation.page_size.bytes();
                }
                prop_assert_eq!(done, len, "map_range overshot its length");
            } else {
                // A refused range leaves every page as it was.
                let after: Vec<Option<Translation>> = (0..pages)
                    .map(|page| gstage.translate(ram, gpa.wrapping_add(page * 4 * KIB)))
                    .collect();
                prop_assert_eq!(before, after);
            }
        }
        Operation::Reclaim => {
            let before = gstage.table_bytes();
            let mut fenced = false;
            let released = gstage.reclaim_empty_tables(ram, || fenced = true);
            prop_assert!(fenced);
            prop_assert_eq!(gstage.table_bytes(), before - released);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Mixed 4 KiB / 2 MiB / 1 GiB pages, ranges, unmaps and reclaims agree with the model at every
    /// step; unmapping everything and reclaiming gives back every table but the root.
    #[test]
    fn operations_match_an_exact_model(
        mode in mode_strategy(),
        operations in proptest::collection::vec(operation_strategy(), 1..40),
    ) {
        let mut ram = FakeRam::new(8192);
        let mut gstage = GStage::new(&mut ram, mode).expect("root table");
        let mut model = Model::new();
        for operation in &operations {
            apply(&mut ram, &mut gstage, &mut model, operation)?;
            check_model(&ram, &gstage, &model)?;
        }
        for (&gpa, &(hpa, size, _)) in &model {
            prop_assert_eq!(gstage.unmap(&mut ram, gpa, size), Ok(hpa));
        }
        for &gpa in model.keys() {
            prop_assert_eq!(gstage.translate(&ram, gpa), None);
        }
        gstage.reclaim_empty_tables(&mut ram, || {});
        prop_assert_eq!(ram.outstanding_bytes(), ROOT_BYTES);
        prop_assert_eq!(gstage.table_bytes(), ROOT_BYTES);
        gstage.destroy(&mut ram);
        prop_assert_eq!(ram.outstanding_tables(), 0);
    }

    /// A new mapping changes the translation of its own page only: probes around it (inside
    /// neighbouring pages of every size) read the same before and after.
    #[test]
    fn a_mapping_never_aliases_its_neighbours(
        mode in mode_strategy(),
        existing in proptest::collection::vec(operation_strategy(), 0..20),
        size in size_strategy(),
        slot in 0u64..64,
        hpa_frame in 0u64..(1 << 16),
        perm in prop_oneof![Just(Perm::READ), Just(Perm::READ | Perm::WRITE), Just(Perm::all())],
    ) {
        let mut ram = FakeRam::new(8192);
        let mut gstage = GStage::new(&mut ram, mode).expect("root table");
        let mut model = Model::new();
        for operation in &existing {
            apply(&mut ram, &mut gstage, &mut model, operation)?;
        }
        let bytes = size.bytes();
        let gpa = GIB + slot * bytes % GIB;
        let hpa = hpa_frame * bytes % HPA_LIMIT;
        let probes: Vec<u64> = [4 * KIB, 2 * MIB, GIB]
            .iter()
            .flat_map(|&step| [gpa.wrapping_sub(step), gpa.wrapping_sub(1), gpa + bytes, gpa + bytes + step])
            .filter(|&probe| probe < mode.gpa_limit())
            .collect();
        let before: Vec<_> = probes.iter().map(|&probe| gstage.translate(&ram, probe)).collect();
        let mut result = gstage.map(&mut ram, gpa, hpa, size, perm);
        if matches!(result, Err(MapError::SplitBySmallerPages { .. })) && !model_overlaps(&model, gpa, bytes) {
            gstage.reclaim_empty_tables(&mut ram, || {});
            result = gstage.map(&mut ram, gpa, hpa, size, perm);
        }
        prop_assert_eq!(result.is_ok(), !model_overlaps(&model, gpa, bytes));
        let after: Vec<_> = probes.iter().map(|&probe| gstage.translate(&ram, probe)).collect();
        prop_assert_eq!(before, after);
        if result.is_ok() {
            prop_assert_eq!(
                gstage.translate(&ram, gpa + bytes - 1),
                Some(Translation { hpa: hpa + bytes - 1, perm, page_size: size })
            );
        }
    }

    /// The same aligned page maps in Sv48x4 wherever it fits below 2^50, and in Sv39x4 only below
    /// 2^41; beyond a mode's limit nothing translates.
    #[test]
    fn sv39x4_and_sv48x4_bounds(size in size_strategy(), page in any::<u64>(), offset in any::<u64>()) {
        let bytes = size.bytes();
        let gpa = (page % ((1 << 50) / bytes)) * bytes;
        for mode in [Mode::Sv39x4, Mode::Sv48x4] {
            let mut ram = FakeRam::new(64);
            let mut gstage = GStage::new(&mut ram, mode).expect("root table");
            let fits = gpa + bytes <= mode.gpa_limit();
            let result = gstage.map(&mut ram, gpa, 0, size, Perm::READ);
            if fits {
                prop_assert_eq!(result, Ok(()));
                let probe = gpa + offset % bytes;
                prop_assert_eq!(gstage.translate(&ram, probe).map(|t| t.hpa), Some(offset % bytes));
            } else {
                prop_assert_eq!(result, Err(MapError::GpaOutOfRange { gpa, len: bytes, mode }));
                prop_assert_eq!(ram.outstanding_bytes(), ROOT_BYTES);
            }
            let beyond = mode.gpa_limit().saturating_add(offset % (1 << 40));
            prop_assert_eq!(gstage.translate(&ram, beyond), None);
            prop_assert_eq!(gstage.translate(&ram, u64::MAX - offset % GIB), None);
        }
    }

    /// `map_range` covers exactly the range with the largest page each position allows, and
    /// `unmap` with those sizes removes all of it.
    #[test]
    fn map_range_layout_is_the_largest_fitting_pages(
        mode in mode_strategy(),
        gpa_page in 0u64..(1 << 19),
        hpa_page in 0u64..(1 << 19),
        same_alignment in any::<bool>(),
        pages in 1u64..2048,
    ) {
        let gpa = gpa_page * 4 * KIB;
        // Sharing the offset within 1 GiB lets large pages line up.
        let hpa = if same_alignment { 16 * GIB + gpa % GIB } else { hpa_page * 4 * KIB };
        let len = pages * 4 * KIB;
        let mut ram = FakeRam::new(8192);
        let mut gstage = GStage::new(&mut ram, mode).expect("root table");
        prop_assert_eq!(gstage.map_range(&mut ram, gpa, hpa, len, Perm::READ | Perm::EXEC), Ok(()));
        let mut done = 0;
        let mut layout = Vec::new();
        while done < len {
            let translation = gstage.translate(&ram, gpa + done).expect("mapped");
            let expected = PageSize::DESCENDING
                .into_iter()
                .find(|size| {
                    let bytes = size.bytes();
                    (gpa + done).is_multiple_of(bytes)
                        && (hpa + done).is_multiple_of(bytes)
                        && len - done >= bytes
                })
                .expect("4 KiB always fits");
            prop_assert_eq!(translation.page_size, expected, "at offset {:#x}", done);
            prop_assert_eq!(translation.hpa, hpa + done);
            layout.push((gpa + done, translation.page_size));
            done += translation.page_size.bytes();
        }
        prop_assert_eq!(done, len);
        prop_assert_eq!(gstage.translate(&ram, gpa + len), None);
        for (page, size) in layout {
            prop_assert!(gstage.unmap(&mut ram, page, size).is_ok());
        }
        prop_assert_eq!(gstage.translate(&ram, gpa), None);
        gstage.reclaim_empty_tables(&mut ram, || {});
        prop_assert_eq!(ram.outstanding_bytes(), ROOT_BYTES);
    }

    /// `hgatp` takes any 14-bit VMID and refuses anything wider; the fields land where the
    /// privileged specification puts them.
    #[test]
    fn hgatp_fields(mode in mode_strategy(), vmid in any::<u16>()) {
        let mut ram = FakeRam::new(8);
        let gstage = GStage::new(&mut ram, mode).expect("root table");
        match gstage.hgatp(vmid) {
            Ok(hgatp) => {
                prop_assert!(vmid < 1 << 14);
                prop_assert_eq!(hgatp >> 60, mode.hgatp_mode());
                prop_assert_eq!((hgatp >> 44) & 0x3fff, u64::from(vmid));
                prop_assert_eq!((hgatp & ((1 << 44) - 1)) << 12, gstage.root());
            }
            Err(error) => {
                prop_assert!(vmid >= 1 << 14);
                prop_assert_eq!(error, MapError::VmidOutOfRange { vmid });
            }
        }
    }
}
