//! A writer (and a checking reader) for uncompressed cpio "newc" archives, the format Linux unpacks as an initramfs.
//!
//! Writing the archive ourselves lets it hold device nodes and root-owned files without running as root.

use std::collections::BTreeSet;

/// What an archive entry is; the numbers are the file-type bits of `st_mode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Directory,
    File(Vec<u8>),
    Symlink(String),
    CharDevice { major: u32, minor: u32 },
}

impl EntryKind {
    fn type_bits(&self) -> u32 {
        match self {
            EntryKind::Directory => 0o040000,
            EntryKind::File(_) => 0o100000,
            EntryKind::Symlink(_) => 0o120000,
            EntryKind::CharDevice { .. } => 0o020000,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpioError {
    #[error(
        "archive path `{0}` must be relative, non-empty, without `.`/`..` components or NUL bytes"
    )]
    BadPath(String),
    #[error("archive path `{0}` is added twice")]
    Duplicate(String),
    #[error("archive path `{path}` is added before its parent directory `{parent}`")]
    MissingParent { path: String, parent: String },
    #[error("permission bits {0:#o} do not fit in 0o7777")]
    BadPermissions(u32),
    #[error("entry `{0}` is larger than the 4 GiB a newc header can describe")]
    TooLarge(String),
    #[error("truncated archive: {0}")]
    Truncated(&'static str),
    #[error("bad newc header at offset {offset}: {problem}")]
    BadHeader {
        offset: usize,
        problem: &'static str,
    },
    #[error("the archive ends without a TRAILER!!! entry")]
    NoTrailer,
}

/// Builds a newc archive in memory. Entries get fixed owners (root) and times (0) so the same
/// inputs always give the same bytes, which is what lets the cache key on the inputs.
pub struct CpioWriter {
    bytes: Vec<u8>,
    paths: BTreeSet<String>,
    next_inode: u32,
}

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

impl Default for CpioWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl CpioWriter {
    pub fn new() -> CpioWriter {
        CpioWriter {
            bytes: Vec::new(),
            paths: BTreeSet::new(),
            next_inode: 1,
        }
    }

    pub fn directory(&mut self, path: &str, permissions: u32) -> Result<&mut Self, CpioError> {
        self.add(path, permissions, EntryKind::Directory)
    }

    pub fn file(
        &mut self,
        path: &str,
        permissions: u32,
        data: Vec<u8>,
    ) -> Result<&mut Self, CpioError> {
        self.add(path, permissions, EntryKind::File(data))
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self, CpioError> {
        self.add(path, 0o777, EntryKind::Symlink(target.to_string()))
    }

    pub fn char_device(
        &mut self,
        path: &str,
        permissions: u32,
        major: u32,
        minor: u32,
    ) -> Result<&mut Self, CpioError> {
        self.add(path, permissions, EntryKind::CharDevice { major, minor })
    }

    /// Adds one entry; its parent directory must already be in the archive, as Linux creates entries in order.
    pub fn add(
        &mut self,
        path: &str,
        permissions: u32,
        kind: EntryKind,
    ) -> Result<&mut Self, CpioError> {
        let bad_component = path
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..");
        if bad_component || path.contains('\0') || path == TRAILER {
            return Err(CpioError::BadPath(path.to_string()));
        }
        if permissions > 0o7777 {
            return Err(CpioError::BadPermissions(permissions));
        }
        if self.paths.contains(path) {
            return Err(CpioError::Duplicate(path.to_string()));
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            if !self.paths.contains(parent) {
                return Err(CpioError::MissingParent {
                    path: path.to_string(),
                    parent: parent.to_string(),
                });
            }
        }
        let data: &[u8] = match &kind {
            EntryKind::File(data) => data,
            EntryKind::Symlink(target) => target.as_bytes(),
            _ => &[],
        };
        let size = u32::try_from(data.len()).map_err(|_| CpioError::TooLarge(path.to_string()))?;
        let (rdev_major, rdev_minor) = match kind {
            EntryKind::CharDevice { major, minor } => (major, minor),
            _ => (0, 0),
        };
        let nlink = if kind == EntryKind::Directory { 2 } else { 1 };
        let inode = self.next_inode;
        self.next_inode += 1;
        self.write_header(
            path,
            inode,
            kind.type_bits() | permissions,
            nlink,
            size,
            rdev_major,
            rdev_minor,
        );
        self.bytes.extend_from_slice(data);
        self.pad();
        self.paths.insert(path.to_string());
        Ok(self)
    }

    #[allow(clippy::too_many_arguments)] // mirrors the newc header's fields one to one
    fn write_header(
        &mut self,
        name: &str,
        inode: u32,
        mode: u32,
        nlink: u32,
        size: u32,
        rdev_major: u32,
        rdev_minor: u32,
    ) {
        let name_size = name.len() as u32 + 1; // the name is stored with its NUL terminator
                                               // Field order per the newc format: ino mode uid gid nlink mtime filesize devmajor devminor
                                               // rdevmajor rdevminor namesize check.
        let fields = [
            inode, mode, 0, 0, nlink, 0, size, 0, 0, rdev_major, rdev_minor, name_size, 0,
        ];
        self.bytes.extend_from_slice(MAGIC);
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
    }

    /// Header+name and data are each padded to 4 bytes, as the newc format requires.
    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    /// Appends the trailer entry and returns the archive.
    pub fn finish(mut self) -> Vec<u8> {
        self.write_header(TRAILER, 0, 0, 1, 0, 0, 0);
        self.bytes
    }
}

/// One entry read back from an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub mode: u32,
    pub kind: EntryKind,
}

/// Reads a newc archive back, checking every header; used to verify what was written.
pub fn read(bytes: &[u8]) -> Result<Vec<Entry>, CpioError> {
    let mut entries = Vec::new();
    let mut offset = 0usize;
    loop {
        let header = bytes
            .get(offset..offset + HEADER_LEN)
            .ok_or(CpioError::Truncated("header"))?;
        if &header[..6] != MAGIC {
            return Err(CpioError::BadHeader {
                offset,
                problem: "magic is not 070701",
            });
        }
        let mut fields = [0u32; 13];
        for (index, field) in fields.iter_mut().enumerate() {
            let text =
                std::str::from_utf8(&header[6 + index * 8..14 + index * 8]).map_err(|_| {
                    CpioError::BadHeader {
                        offset,
                        problem: "field is not ASCII",
                    }
                })?;
            *field = u32::from_str_radix(text, 16).map_err(|_| CpioError::BadHeader {
                offset,
                problem: "field is not hexadecimal",
            })?;
        }
        let [_, mode, _, _, _, _, size, _, _, rdev_major, rdev_minor, name_size, _] = fields;
        let name_start = offset + HEADER_LEN;
        let name_end = name_start
            .checked_add(name_size as usize)
            .ok_or(CpioError::Truncated("name"))?;
        let name = bytes
            .get(name_start..name_end)
            .ok_or(CpioError::Truncated("name"))?;
        let name = name.strip_suffix(&[0]).ok_or(CpioError::BadHeader {
            offset,
            problem: "name is not NUL-terminated",
        })?;
        let name = std::str::from_utf8(name).map_err(|_| CpioError::BadHeader {
            offset,
            problem: "name is not UTF-8",
        })?;
        let data_start = name_end.next_multiple_of(4);
        let data_end = data_start
            .checked_add(size as usize)
            .ok_or(CpioError::Truncated("data"))?;
        let data = bytes
            .get(data_start..data_end)
            .ok_or(CpioError::Truncated("data"))?;
        if name == TRAILER {
            return Ok(entries);
        }
        let kind = match mode & 0o170000 {
            0o040000 => EntryKind::Directory,
            0o100000 => EntryKind::File(data.to_vec()),
            0o120000 => EntryKind::Symlink(String::from_utf8(data.to_vec()).map_err(|_| {
                CpioError::BadHeader {
                    offset,
                    problem: "symlink target is not UTF-8",
                }
            })?),
            0o020000 => EntryKind::CharDevice {
                major: rdev_major,
                minor: rdev_minor,
            },
            _ => {
                return Err(CpioError::BadHeader {
                    offset,
                    problem: "unsupported file type",
                })
            }
        };
        entries.push(Entry {
            path: name.to_string(),
            mode: mode & 0o7777,
            kind,
        });
        offset = data_end.next_multiple_of(4);
        if offset >= bytes.len() {
            return Err(CpioError::NoTrailer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut writer = CpioWriter::new();
        writer
            .directory("dev", 0o755)
            .unwrap()
            .char_device("dev/console", 0o600, 5, 1)
            .unwrap()
            .directory("bin", 0o755)
            .unwrap()
            .file("bin/busybox", 0o755, b"\x7fELF12345".to_vec())
            .unwrap()
            .symlink("init", "bin/busybox")
            .unwrap();
        writer.finish()
    }

    #[test]
    fn round_trip_keeps_every_entry() {
        let entries = read(&sample()).unwrap();
        let paths: Vec<&str> = entries.iter().map(|entry| entry.path.as_str()).collect();
        assert_eq!(paths, ["dev", "dev/console", "bin", "bin/busybox", "init"]);
        assert_eq!(
            entries[1].kind,
            EntryKind::CharDevice { major: 5, minor: 1 }
        );
        assert_eq!(entries[1].mode, 0o600);
        assert_eq!(entries[3].kind, EntryKind::File(b"\x7fELF12345".to_vec()));
        assert_eq!(entries[4].kind, EntryKind::Symlink("bin/busybox".into()));
    }

    #[test]
    fn layout_matches_the_newc_format() {
        let bytes = sample();
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(&bytes[..6], b"070701");
        // First entry "dev": inode 1, directory mode 040755, nlink 2, name size 4.
        let header = std::str::from_utf8(&bytes[6..110]).unwrap();
        assert_eq!(&header[..8], "00000001");
        assert_eq!(&header[8..16], "000041ed");
        assert_eq!(&header[32..40], "00000002");
        assert_eq!(&header[88..96], "00000004");
        assert_eq!(&bytes[110..114], b"dev\0");
        let trailer = bytes
            .windows(10)
            .rposition(|window| window == b"TRAILER!!!")
            .unwrap();
        assert_eq!(&bytes[trailer - 110..trailer - 104], b"070701");
        // The same inputs give the same bytes.
        assert_eq!(bytes, sample());
    }

    #[test]
    fn bad_entries_are_refused() {
        let mut writer = CpioWriter::new();
        assert_eq!(
            writer.directory("", 0o755).err(),
            Some(CpioError::BadPath(String::new()))
        );
        assert_eq!(
            writer.directory("/etc", 0o755).err(),
            Some(CpioError::BadPath("/etc".into()))
        );
        assert_eq!(
            writer.directory("a/../b", 0o755).err(),
            Some(CpioError::BadPath("a/../b".into()))
        );
        assert_eq!(
            writer.directory("TRAILER!!!", 0o755).err(),
            Some(CpioError::BadPath("TRAILER!!!".into()))
        );
        assert_eq!(
            writer.directory("etc", 0o17777).err(),
            Some(CpioError::BadPermissions(0o17777))
        );
        assert_eq!(
            writer.file("etc/inittab", 0o644, Vec::new()).err(),
            Some(CpioError::MissingParent {
                path: "etc/inittab".into(),
                parent: "etc".into()
            })
        );
        writer.directory("etc", 0o755).unwrap();
        assert_eq!(
            writer.directory("etc", 0o755).err(),
            Some(CpioError::Duplicate("etc".into()))
        );
    }

    #[test]
    fn damaged_archives_are_reported_not_panicked_on() {
        let bytes = sample();
        assert_eq!(read(&bytes[..50]), Err(CpioError::Truncated("header")));
        let mut bad_magic = bytes.clone();
        bad_magic[0] = b'1';
        assert!(matches!(
            read(&bad_magic),
            Err(CpioError::BadHeader { offset: 0, .. })
        ));
        let mut bad_hex = bytes.clone();
        bad_hex[6] = b'z';
        assert!(matches!(
            read(&bad_hex),
            Err(CpioError::BadHeader {
                problem: "field is not hexadecimal",
                ..
            })
        ));
        let without_trailer = &bytes[..bytes.len() - 124];
        assert!(read(without_trailer).is_err());
        // Every truncation point must give an error, never a panic.
        for end in 0..bytes.len() - 1 {
            assert!(
                read(&bytes[..end]).is_err(),
                "truncated at {end} was accepted"
            );
        }
    }
}
