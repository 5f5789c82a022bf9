//! Fuzzes the mkdmfs manifest reader: `--define` arguments, memory sizes and TOML manifests,
//! checked as far as is possible without reading any kernel or initrd.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mkdmfs::{check_manifest, parse_define, parse_manifest, parse_size, Defines};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Lines before the first empty line are `--define` arguments; the rest is the manifest.
    let (define_lines, manifest_text) = text.split_once("\n\n").unwrap_or(("", text));
    let mut defines = Defines::new();
    for line in define_lines.lines() {
        if let Ok((name, value)) = parse_define(line) {
            assert!(!name.is_empty() && format!("{name}={value}") == line);
            defines.insert(name, value);
        }
    }

    if let Ok(size) = parse_size(manifest_text) {
        // A plain number reads back as itself.
        assert_eq!(parse_size(&size.to_string()), Ok(size));
    }

    let Ok(manifest) = parse_manifest(manifest_text) else {
        return;
    };
    for entry in &manifest.capsules {
        if let Some(toml::Value::String(memory)) = &entry.memory {
            let _ = parse_size(memory);
        }
    }
    // The base directory only prefixes relative paths; nothing under it is opened.
    if let Err(error) = check_manifest(&manifest, Path::new("/nonexistent"), &defines) {
        let _ = error.to_string();
    }
});
