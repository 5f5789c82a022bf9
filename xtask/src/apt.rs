//! Fetching Debian packages with apt into private directories, without touching the machine's apt setup.
//!
//! The mirror is whatever this machine's apt already uses: its URIs are read from the machine's own
//! sources, so no mirror host name is written into the repository.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _, Result};

use crate::cache::{self, Cache};
use crate::shell;

/// How old a private package index may get before `apt-get update` refreshes it.
const INDEX_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// Where this machine fetches Debian packages from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub uris: Vec<String>,
    pub signed_by: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SourcesError {
    #[error("no Debian main archive (a `deb` source whose suites are not *-security) in the machine's apt sources")]
    NoMainArchive,
}

/// Finds the machine's main Debian archive in deb822 `.sources` text (security archives are skipped:
/// they only hold updates of the release they belong to).
pub fn mirror_from_deb822(text: &str) -> Result<Mirror, SourcesError> {
    for stanza in text.split("\n\n").map(parse_stanza) {
        let field = |name: &str| {
            stanza
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.as_str())
        };
        let is_deb =
            field("Types").is_some_and(|types| types.split_whitespace().any(|kind| kind == "deb"));
        let enabled = field("Enabled").is_none_or(|value| !value.eq_ignore_ascii_case("no"));
        let suites = field("Suites").unwrap_or("");
        let security = suites
            .split_whitespace()
            .any(|suite| suite.ends_with("-security"));
        if let (true, true, false, Some(uris)) = (is_deb, enabled, security, field("URIs")) {
            let uris: Vec<String> = uris.split_whitespace().map(str::to_string).collect();
            if !uris.is_empty() {
                let signed_by = field("Signed-By")
                    .filter(|value| !value.contains('\n'))
                    .map(str::to_string);
                return Ok(Mirror { uris, signed_by });
            }
        }
    }
    Err(SourcesError::NoMainArchive)
}

/// Splits one deb822 stanza into fields, joining continuation lines and dropping comments.
fn parse_stanza(stanza: &str) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in stanza.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push('\n');
                value.push_str(line.trim());
            }
        } else if let Some((key, value)) = line.split_once(':') {
            fields.push((key.trim().to_string(), value.trim().to_string()));
        }
    }
    fields
}

/// Finds the main Debian archive in one-line-style `sources.list` text (`deb [options] URI suite components`).
pub fn mirror_from_one_line(text: &str) -> Result<Mirror, SourcesError> {
    for line in text.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let mut rest = rest.trim_start();
        let mut signed_by = None;
        if let Some(options) = rest.strip_prefix('[') {
            let Some((options, after)) = options.split_once(']') else {
                continue;
            };
            signed_by = options
                .split_whitespace()
                .find_map(|option| option.strip_prefix("signed-by="))
                .map(str::to_string);
            rest = after.trim_start();
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        if !suite.ends_with("-security") {
            return Ok(Mirror {
                uris: vec![uri.to_string()],
                signed_by,
            });
        }
    }
    Err(SourcesError::NoMainArchive)
}

/// Reads this machine's apt configuration for the Debian mirror it uses.
pub fn machine_mirror() -> Result<Mirror> {
    let deb822 = Path::new("/etc/apt/sources.list.d/debian.sources");
    if let Ok(text) = fs::read_to_string(deb822) {
        if let Ok(mirror) = mirror_from_deb822(&text) {
            return Ok(mirror);
        }
    }
    let one_line = Path::new("/etc/apt/sources.list");
    if let Ok(text) = fs::read_to_string(one_line) {
        if let Ok(mirror) = mirror_from_one_line(&text) {
            return Ok(mirror);
        }
    }
    bail!(
        "cannot find this machine's Debian mirror: neither {} nor {} names a main Debian archive",
        deb822.display(),
        one_line.display()
    )
}

/// The deb822 sources file for a private apt directory.
pub fn sources_text(mirror: &Mirror, suites: &[&str], architecture: &str) -> String {
    let signed_by = mirror
        .signed_by
        .as_deref()
        .unwrap_or("/usr/share/keyrings/debian-archive-keyring.gpg");
    format!(
        "Types: deb\nURIs: {}\nSuites: {}\nComponents: main\nArchitectures: {architecture}\nSigned-By: {signed_by}\n",
        mirror.uris.join(" "),
        suites.join(" "),
    )
}

/// One package as the apt index describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageRecord {
    pub package: String,
    pub version: String,
    pub architecture: String,
    pub filename: String,
    pub sha256: String,
    pub depends: Vec<Dependency>,
}

/// One `Depends:` entry (the first of any alternatives), with its minimum version if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub name: String,
    pub min_version: Option<String>,
}

fn parse_dependency(text: &str) -> Option<Dependency> {
    let first = text.split('|').next()?.trim();
    let (name, constraint) = match first.split_once('(') {
        Some((name, rest)) => (name.trim(), Some(rest.trim_end_matches(')').trim())),
        None => (first, None),
    };
    if name.is_empty() {
        return None;
    }
    let name = name.split(':').next().unwrap_or(name).to_string();
    // Only lower bounds matter for "is the installed library new enough"; `=` pins tie packages of
    // one source together and are satisfied by fetching them as a set.
    let min_version = constraint
        .and_then(|constraint| {
            constraint
                .strip_prefix(">=")
                .or_else(|| constraint.strip_prefix(">>"))
        })
        .map(|version| version.trim().to_string());
    Some(Dependency { name, min_version })
}

impl PackageRecord {
    /// The .deb's file name in the archive, e.g. `busybox-static_1.37.0-6_riscv64.deb`.
    pub fn deb_name(&self) -> &str {
        self.filename.rsplit('/').next().unwrap_or(&self.filename)
    }

    /// Cache entry name: the file name plus the start of its verified hash.
    pub fn cache_name(&self) -> String {
        let stem = self.deb_name().trim_end_matches(".deb");
        format!("{stem}-{}", &self.sha256[..16.min(self.sha256.len())])
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("the apt record has no `{0}` field")]
    MissingField(&'static str),
    #[error("the apt record's SHA256 `{0}` is not 64 hex digits")]
    BadHash(String),
}

/// Parses the first record of `apt-cache show` output.
pub fn parse_record(text: &str) -> Result<PackageRecord, RecordError> {
    let stanza = text.split("\n\n").next().unwrap_or("");
    let fields = parse_stanza(stanza);
    let field = |name: &'static str| {
        fields
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
            .ok_or(RecordError::MissingField(name))
    };
    let sha256 = field("SHA256")?;
    if sha256.len() != 64 || !sha256.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(RecordError::BadHash(sha256));
    }
    let depends = field("Depends")
        .map(|text| text.split(',').filter_map(parse_dependency).collect())
        .unwrap_or_default();
    Ok(PackageRecord {
        package: field("Package")?,
        version: field("Version")?,
        architecture: field("Architecture")?,
        filename: field("Filename")?,
        sha256: sha256.to_ascii_lowercase(),
        depends,
    })
}

/// The first `Depends:` target of `apt-cache depends` output that starts with `prefix`.
pub fn first_dependency_with_prefix(text: &str, prefix: &str) -> Option<String> {
    text.lines()
        .filter_map(|line| line.trim().trim_start_matches('|').strip_prefix("Depends:"))
        .map(str::trim)
        .find(|name| name.starts_with(prefix))
        .map(str::to_string)
}

/// An apt state directory of our own in the cache, for one architecture and set of suites.
pub struct PrivateApt {
    dir: PathBuf,
    architecture: String,
}

impl PrivateApt {
    /// Writes the sources file and refreshes the index when it is missing, stale or its sources changed.
    pub fn prepare(
        cache: &Cache,
        name: &str,
        architecture: &str,
        suites: &[&str],
    ) -> Result<PrivateApt> {
        let dir = cache.dir(&format!("apt/{name}"))?;
        for sub in [
            "lists/partial",
            "cache/archives/partial",
            "sources.list.d",
            "preferences.d",
        ] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
        }
        let apt = PrivateApt {
            dir,
            architecture: architecture.to_string(),
        };
        let mirror = machine_mirror()?;
        let sources = sources_text(&mirror, suites, architecture);
        let sources_path = apt.dir.join("sources.list.d/keel.sources");
        let sources_changed =
            fs::read_to_string(&sources_path).ok().as_deref() != Some(sources.as_str());
        if sources_changed {
            cache::write_atomically(&sources_path, sources.as_bytes())?;
        }
        let stamp = apt.dir.join("updated");
        let stale = sources_changed
            || fs::metadata(&stamp)
                .and_then(|meta| meta.modified())
                .map(|time| {
                    SystemTime::now().duration_since(time).unwrap_or_default() > INDEX_MAX_AGE
                })
                .unwrap_or(true);
        if stale {
            shell::step(&format!(
                "updating the package index for {} ({architecture})",
                suites.join(", ")
            ));
            let mut command = apt.command("apt-get");
            command.args(["-q", "update"]);
            match shell::output(command) {
                Ok(_) => cache::write_atomically(&stamp, b"")?,
                // An old index still names packages that can be fetched or are already cached.
                Err(error) if apt.has_index() && !sources_changed => {
                    println!("    warning: keeping the previous package index: {error:#}");
                }
                Err(error) => return Err(error),
            }
        }
        Ok(apt)
    }

    fn has_index(&self) -> bool {
        fs::read_dir(self.dir.join("lists"))
            .map(|entries| {
                entries
                    .flatten()
                    .any(|entry| entry.file_name().to_string_lossy().ends_with("_Packages"))
            })
            .unwrap_or(false)
    }

    /// An apt command that reads and writes only this private directory.
    fn command(&self, program: &str) -> Command {
        let dir = self.dir.display();
        let mut command = Command::new(program);
        for option in [
            format!("APT::Architecture={}", self.architecture),
            format!("APT::Architectures={}", self.architecture),
            "Dir::Etc::SourceList=/dev/null".to_string(),
            format!("Dir::Etc::SourceParts={dir}/sources.list.d"),
            format!("Dir::Etc::PreferencesParts={dir}/preferences.d"),
            format!("Dir::State::Lists={dir}/lists"),
            format!("Dir::Cache={dir}/cache"),
            // Downloads land in our own cache directory, which apt's unprivileged user may not reach.
            "APT::Sandbox::User=root".to_string(),
        ] {
            command.arg("-o").arg(option);
        }
        command.env("LC_ALL", "C");
        command
    }

    /// `apt-cache depends PACKAGE` output.
    pub fn depends(&self, package: &str) -> Result<String> {
        let mut command = self.command("apt-cache");
        command.args(["depends", package]);
        shell::output(command)
    }

    /// The index record apt would fetch for a package specification (`name`, `name/suite` or `name=version`).
    pub fn show(&self, spec: &str) -> Result<PackageRecord> {
        let mut command = self.command("apt-cache");
        command.args(["show", "--no-all-versions", spec]);
        let text = shell::output(command)?;
        parse_record(&text).with_context(|| format!("cannot read apt's record for {spec}"))
    }

    /// Downloads a package into the cache, unless a copy whose hash matches the index is already there.
    pub fn fetch(&self, cache: &Cache, record: &PackageRecord) -> Result<PathBuf> {
        let debs = cache.dir("debs")?;
        let destination = debs.join(format!("{}.deb", record.cache_name()));
        if destination.is_file() && cache::sha256_file(&destination)? == record.sha256 {
            return Ok(destination);
        }
        let staging = cache::staging_dir(&destination)?;
        let mut command = self.command("apt-get");
        command
            .current_dir(&staging)
            .args(["-q", "download"])
            .arg(format!("{}={}", record.package, record.version));
        shell::output(command)?;
        let downloaded = staging.join(record.deb_name());
        // apt escapes ':' in epochs as %3a in downloaded file names.
        let downloaded = if downloaded.is_file() {
            downloaded
        } else {
            fs::read_dir(&staging)?
                .flatten()
                .map(|entry| entry.path())
                .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
                .with_context(|| {
                    format!(
                        "apt-get download left no .deb for {} in {}",
                        record.package,
                        staging.display()
                    )
                })?
        };
        let actual = cache::sha256_file(&downloaded)?;
        if actual != record.sha256 {
            bail!(
                "{} has SHA256 {actual}, but the package index says {}",
                record.deb_name(),
                record.sha256
            );
        }
        fs::rename(&downloaded, &destination).with_context(|| {
            format!(
                "cannot move {} to {}",
                downloaded.display(),
                destination.display()
            )
        })?;
        cache::remove_any(&staging)?;
        Ok(destination)
    }
}

/// Where [`extract`] unpacks a package.
pub fn extracted_dir(cache: &Cache, record: &PackageRecord) -> Result<PathBuf> {
    Ok(cache.dir("packages")?.join(record.cache_name()))
}

/// Unpacks a .deb (`dpkg -x`) into a cache entry keyed by the package file and its hash.
pub fn extract(cache: &Cache, deb: &Path, record: &PackageRecord) -> Result<PathBuf> {
    let destination = extracted_dir(cache, record)?;
    if destination.is_dir() {
        return Ok(destination);
    }
    let staging = cache::staging_dir(&destination)?;
    let mut command = Command::new("dpkg");
    command.arg("-x").arg(deb).arg(&staging);
    shell::output(command)?;
    cache::publish(&staging, &destination)?;
    Ok(destination)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "Types: deb\n# a comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n";

    #[test]
    fn deb822_main_archive_is_found_and_security_skipped() {
        let mirror = mirror_from_deb822(DEB822).unwrap();
        assert_eq!(
            mirror.uris,
            vec!["http://mirror.example/debian".to_string()]
        );
        assert_eq!(
            mirror.signed_by.as_deref(),
            Some("/usr/share/keyrings/debian-archive-keyring.gpg")
        );

        let security_only = DEB822.split("\n\n").nth(1).unwrap();
        assert_eq!(
            mirror_from_deb822(security_only),
            Err(SourcesError::NoMainArchive)
        );
        assert_eq!(mirror_from_deb822(""), Err(SourcesError::NoMainArchive));
        let disabled = DEB822.replacen("Types: deb\n", "Types: deb\nEnabled: no\n", 1);
        assert_eq!(
            mirror_from_deb822(&disabled),
            Err(SourcesError::NoMainArchive)
        );
        let sources_only = DEB822.replace("Types: deb\n", "Types: deb-src\n");
        assert_eq!(
            mirror_from_deb822(&sources_only),
            Err(SourcesError::NoMainArchive)
        );
    }

    #[test]
    fn deb822_inline_key_is_not_copied_as_a_path() {
        let inline = "Types: deb\nURIs: http://m/debian\nSuites: trixie\nSigned-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n";
        assert_eq!(mirror_from_deb822(inline).unwrap().signed_by, None);
    }

    #[test]
    fn one_line_sources_are_understood() {
        let text = "# comment\ndeb http://m/debian-security bookworm-security main\ndeb [arch=amd64 signed-by=/k.gpg] http://m/debian bookworm main\n";
        let mirror = mirror_from_one_line(text).unwrap();
        assert_eq!(mirror.uris, vec!["http://m/debian".to_string()]);
        assert_eq!(mirror.signed_by.as_deref(), Some("/k.gpg"));
        assert_eq!(
            mirror_from_one_line("deb [broken http://m/debian bookworm main"),
            Err(SourcesError::NoMainArchive)
        );
        assert_eq!(
            mirror_from_one_line("deb-src http://m/debian bookworm main"),
            Err(SourcesError::NoMainArchive)
        );
    }

    #[test]
    fn sources_text_copies_the_mirror() {
        let mirror = Mirror {
            uris: vec!["http://m/debian".into()],
            signed_by: None,
        };
        let text = sources_text(&mirror, &["trixie"], "riscv64");
        assert!(text.contains("URIs: http://m/debian\n"));
        assert!(text.contains("Suites: trixie\n"));
        assert!(text.contains("Architectures: riscv64\n"));
        assert!(text.contains("Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"));
    }

    const RECORD: &str = "Package: busybox-static\nVersion: 1:1.37.0-6\nArchitecture: riscv64\nDepends: libc6 (>= 2.38), libfoo1:any | libbar2\nFilename: pool/main/b/busybox/busybox-static_1.37.0-6_riscv64.deb\nSHA256: 0123456789abcdef0123456789ABCDEF0123456789abcdef0123456789abcdef\nDescription: x\n continued\n\nPackage: busybox-static\nVersion: 0\n";

    #[test]
    fn records_are_parsed_from_apt_cache_show() {
        let record = parse_record(RECORD).unwrap();
        assert_eq!(record.package, "busybox-static");
        assert_eq!(record.version, "1:1.37.0-6");
        assert_eq!(record.deb_name(), "busybox-static_1.37.0-6_riscv64.deb");
        assert_eq!(
            record.sha256,
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
        );
        assert_eq!(
            record.depends,
            vec![
                Dependency {
                    name: "libc6".into(),
                    min_version: Some("2.38".into())
                },
                Dependency {
                    name: "libfoo1".into(),
                    min_version: None
                },
            ]
        );
        assert_eq!(
            record.cache_name(),
            "busybox-static_1.37.0-6_riscv64-0123456789abcdef"
        );
    }

    #[test]
    fn dependencies_keep_lower_bounds_only() {
        let parse = |text| parse_dependency(text).unwrap();
        assert_eq!(
            parse("libfdt1 (>= 1.7.0)").min_version.as_deref(),
            Some("1.7.0")
        );
        assert_eq!(parse("qemu-system-common (= 1:10.0.2)").min_version, None);
        assert_eq!(
            parse("qemu-system-data (>> 1:10.0~)")
                .min_version
                .as_deref(),
            Some("1:10.0~")
        );
        assert_eq!(parse(" libaio1t64 | libaio1 ").name, "libaio1t64");
        assert_eq!(parse_dependency("  "), None);
    }

    #[test]
    fn malformed_records_are_rejected() {
        assert_eq!(parse_record(""), Err(RecordError::MissingField("SHA256")));
        let short_hash = RECORD.replace("0123456789abcdef0123456789ABCDEF", "00");
        assert!(matches!(
            parse_record(&short_hash),
            Err(RecordError::BadHash(_))
        ));
        let no_file = RECORD.replace("Filename:", "Filenome:");
        assert_eq!(
            parse_record(&no_file),
            Err(RecordError::MissingField("Filename"))
        );
    }

    #[test]
    fn kernel_dependency_is_picked_from_apt_cache_depends() {
        let text = "linux-image-riscv64\n  Depends: linux-image-6.12.48+deb13-riscv64\n |Depends: something-else\n";
        assert_eq!(
            first_dependency_with_prefix(text, "linux-image-").as_deref(),
            Some("linux-image-6.12.48+deb13-riscv64")
        );
        assert_eq!(
            first_dependency_with_prefix("linux-image-riscv64\n", "linux-image-"),
            None
        );
    }
}
