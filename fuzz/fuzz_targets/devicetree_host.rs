//! Fuzzes host device-tree parsing: the structural pre-check must stop every blob that would make
//! the `fdt` crate panic, and `parse_host` must return an error for anything else it dislikes.
#![no_main]

use fdt::node::FdtNode;
use fdt::Fdt;
use keel_devicetree::structure::{validate, MAX_DEPTH};
use keel_devicetree::{parse_host, parse_isa_string, total_size};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(header) = data
        .get(..40)
        .and_then(|header| <&[u8; 40]>::try_from(header).ok())
    {
        let _ = total_size(header);
    }

    if let Ok(checked) = validate(data) {
        if let Some(header) = checked
            .bytes
            .get(..40)
            .and_then(|h| <&[u8; 40]>::try_from(h).ok())
        {
            assert_eq!(total_size(header), Some(checked.bytes.len()));
        }
        // Everything a walk can reach through the calls Keel makes must be safe now.
        if let Ok(tree) = Fdt::new(&checked.bytes) {
            if let Some(root) = tree.find_node("/") {
                walk(root, 0);
            }
        }
    }

    match parse_host(data) {
        Ok(platform) => {
            assert!(!platform.memory.is_empty() && platform.memory.iter().all(|r| r.size > 0));
            assert!(!platform.harts.is_empty());
            let _ = format!("{platform:?}");
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }

    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(extensions) = parse_isa_string(text) {
            assert!(extensions.iter().all(|name| !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())));
        }
    }
});

fn walk(node: FdtNode<'_, '_>, depth: usize) {
    assert!(
        depth <= MAX_DEPTH,
        "the pre-check let through a tree deeper than it allows"
    );
    let _ = node.name;
    for property in node.properties() {
        let _ = (property.name, property.value.len());
        let _ = node.property(property.name);
    }
    for child in node.children() {
        walk(child, depth + 1);
    }
}
