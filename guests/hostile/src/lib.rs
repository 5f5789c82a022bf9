//! The portable half of the hostile test guest: its modes, the RAM it may use, and the canary's and scrub test's patterns.
//!
//! Plain computation, built and unit-tested on the host; the executable (`src/main.rs`) does the accesses.
#![cfg_attr(not(test), no_std)]

/// The page size the free-RAM bounds are rounded to.
pub const PAGE_SIZE: usize = 4096;

/// What the guest does, chosen by a word of `/chosen/bootargs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Runs the attack cases and powers off.
    Hostile,
    /// Fills its RAM with a pattern and watches it and its console, forever.
    Canary,
    /// Fills its RAM with a pattern and powers off.
    ScrubWrite,
    /// Counts nonzero bytes in its RAM and powers off.
    ScrubRead,
}

impl Mode {
    /// The first word of `bootargs` that names a mode; `None` when no word does.
    pub fn from_bootargs(bootargs: &str) -> Option<Mode> {
        bootargs.split_whitespace().find_map(|word| match word {
            "hostile" => Some(Mode::Hostile),
            "canary" => Some(Mode::Canary),
            "scrub-write" => Some(Mode::ScrubWrite),
            "scrub-read" => Some(Mode::ScrubRead),
            _ => None,
        })
    }
}

/// The guest-physical RAM window the device tree's `/memory` node describes: `[base, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamWindow {
    pub base: usize,
    pub end: usize,
}

impl RamWindow {
    /// The window of `size` bytes at `base`; `None` when it is empty or wraps the address space.
    pub fn new(base: u64, size: u64) -> Option<RamWindow> {
        let base = usize::try_from(base).ok()?;
        let size = usize::try_from(size).ok()?;
        let end = base.checked_add(size)?;
        (size > 0).then_some(RamWindow { base, end })
    }

    /// Whether all of `[address, address + len)` lies inside the window.
    pub fn contains(&self, address: usize, len: usize) -> bool {
        address >= self.base && address.checked_add(len).is_some_and(|end| end <= self.end)
    }
}

/// The part of the RAM window that holds neither the guest's image (with its stack) nor the device tree:
/// `[start, end)`, both page aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FreeRam {
    pub start: usize,
    pub end: usize,
}

impl FreeRam {
    /// From the end of the image up to the device tree (or the end of RAM when the tree is not above the image).
    /// `None` when the image does not end inside RAM or nothing is left.
    pub fn new(ram: RamWindow, image_end: usize, device_tree: usize) -> Option<FreeRam> {
        if !(ram.base..ram.end).contains(&image_end) {
            return None;
        }
        let start = image_end.checked_next_multiple_of(PAGE_SIZE)?;
        let limit = if device_tree > image_end && device_tree < ram.end {
            device_tree
        } else {
            ram.end
        };
        let end = limit & !(PAGE_SIZE - 1);
        (start < end).then_some(FreeRam { start, end })
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Never true for a value [`FreeRam::new`] returned; present for completeness next to `len`.
    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }

    /// The address of every aligned 8-byte word inside it.
    pub fn words(&self) -> impl Iterator<Item = usize> {
        (self.start..self.end).step_by(8)
    }
}

/// The canary's value for the word at `address`: differs from word to word and from boot to boot (`seed`), so a
/// copy of another word, a stale page or a zeroed page all show up.
pub fn canary_word(address: usize, seed: u64) -> u64 {
    (address as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed
}

/// The scrub writer's value for the word at `address`: no byte of it is zero, so every byte the reader finds
/// unchanged counts as nonzero.
pub fn scrub_word(address: usize) -> u64 {
    let low = (address as u32) | 0x0101_0101;
    0xa5a5_5a5a_0000_0000 | u64::from(low)
}

/// How many of the eight bytes of `word` are not zero.
pub fn nonzero_bytes(word: u64) -> usize {
    word.to_le_bytes().iter().filter(|&&byte| byte != 0).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_come_from_whole_words() {
        assert_eq!(Mode::from_bootargs("canary"), Some(Mode::Canary));
        assert_eq!(
            Mode::from_bootargs("console=ttyS0 scrub-read"),
            Some(Mode::ScrubRead)
        );
        assert_eq!(
            Mode::from_bootargs("scrub-write quiet"),
            Some(Mode::ScrubWrite)
        );
        assert_eq!(Mode::from_bootargs(" hostile "), Some(Mode::Hostile));
        assert_eq!(Mode::from_bootargs("not-a-canary"), None);
        assert_eq!(Mode::from_bootargs(""), None);
    }

    #[test]
    fn ram_window_bounds() {
        let ram = RamWindow::new(0x8000_0000, 0x100_0000).unwrap();
        assert_eq!(ram.end, 0x8100_0000);
        assert!(ram.contains(0x8000_0000, 4));
        assert!(ram.contains(0x80ff_fffc, 4));
        assert!(!ram.contains(0x80ff_fffd, 4), "straddles the end");
        assert!(!ram.contains(0x7fff_fffc, 4), "below RAM");
        assert!(!ram.contains(0x8000_0000, usize::MAX), "length wraps");
        assert_eq!(RamWindow::new(0x8000_0000, 0), None);
        assert_eq!(RamWindow::new(u64::MAX, 2), None);
    }

    #[test]
    fn free_ram_stops_at_the_device_tree() {
        let ram = RamWindow::new(0x8000_0000, 0x100_0000).unwrap();
        let free = FreeRam::new(ram, 0x8025_0010, 0x80ff_e000).unwrap();
        assert_eq!(
            free,
            FreeRam {
                start: 0x8025_1000,
                end: 0x80ff_e000
            }
        );
        assert_eq!(free.len(), 0x80ff_e000 - 0x8025_1000);
        assert!(!free.is_empty());
        assert_eq!(free.words().next(), Some(0x8025_1000));
        assert_eq!(free.words().last(), Some(0x80ff_dff8));
        assert_eq!(free.words().count(), free.len() / 8);
    }

    #[test]
    fn free_ram_runs_to_the_end_when_the_tree_is_elsewhere() {
        let ram = RamWindow::new(0x8000_0000, 0x100_0000).unwrap();
        // The tree below the image, or outside RAM: free RAM runs to the end of the window.
        for tree in [0x8010_0000, 0x9000_0000, 0] {
            let free = FreeRam::new(ram, 0x8025_0000, tree).unwrap();
            assert_eq!(
                free,
                FreeRam {
                    start: 0x8025_0000,
                    end: 0x8100_0000
                }
            );
        }
        // A tree at an unaligned address: the end is rounded down, never past the tree.
        let free = FreeRam::new(ram, 0x8025_0000, 0x80ff_e123).unwrap();
        assert_eq!(free.end, 0x80ff_e000);
    }

    #[test]
    fn free_ram_rejects_an_image_outside_ram_or_nothing_left() {
        let ram = RamWindow::new(0x8000_0000, 0x100_0000).unwrap();
        assert_eq!(FreeRam::new(ram, 0x7000_0000, 0x80ff_e000), None);
        assert_eq!(FreeRam::new(ram, 0x8100_0000, 0), None);
        assert_eq!(
            FreeRam::new(ram, 0x80ff_f001, 0),
            None,
            "only part of a page is left"
        );
        assert_eq!(
            FreeRam::new(ram, 0x8025_0000, 0x8025_0800),
            None,
            "tree right after the image"
        );
    }

    #[test]
    fn canary_words_differ_by_address_and_seed() {
        let a = canary_word(0x8030_0000, 1);
        assert_ne!(a, canary_word(0x8030_0008, 1));
        assert_ne!(a, canary_word(0x8030_0000, 3));
        assert_eq!(a, canary_word(0x8030_0000, 1));
        assert_ne!(canary_word(0, 1), 0);
    }

    #[test]
    fn scrub_words_have_no_zero_byte() {
        for address in [0usize, 0x8000_0000, 0x80ff_fff8, 0x1_0000_0000] {
            assert_eq!(nonzero_bytes(scrub_word(address)), 8, "{address:#x}");
        }
    }

    #[test]
    fn counts_nonzero_bytes() {
        assert_eq!(nonzero_bytes(0), 0);
        assert_eq!(nonzero_bytes(0x0100_0000_0000_0001), 2);
        assert_eq!(nonzero_bytes(u64::MAX), 8);
    }
}
