//! The `mac` key of `[[capsule]]`: what builds, how it is summarised, and what every MAC mistake is
//! reported as.

mod common;

use common::{build_next_to_kernel, check, refusal};
use keel_dmfs::{CapsuleProblem, Image};
use mkdmfs::{parse_mac, parse_manifest, CapsuleError, ManifestError};

/// Three capsules, "alpha" (the boot capsule), "beta" and "gamma", with the given `mac` lines
/// (empty for none).
fn manifest(alpha: &str, beta: &str, gamma: &str) -> String {
    format!(
        "[[capsule]]\nname = \"alpha\"\nkernel = \"Image\"\nmemory = \"64M\"\nboot = true\n{alpha}\n\
         [[capsule]]\nname = \"beta\"\nkernel = \"Image\"\nmemory = \"64M\"\n{beta}\n\
         [[capsule]]\nname = \"gamma\"\nkernel = \"Image\"\nmemory = \"64M\"\n{gamma}\n"
    )
}

/// The refusal of a manifest whose capsule "beta" has `mac = <value>`.
fn mac_refusal(value: &str) -> String {
    refusal(&manifest("", &format!("mac = {value}"), ""))
}

#[test]
fn macs_build_into_the_image_and_the_summary() {
    // Lower case, upper case and mixed case all read the same way.
    let text = manifest(
        "mac = \"02:00:00:00:00:01\"",
        "",
        "mac = \"02:AB:cd:Ef:00:0F\"",
    );
    let built = build_next_to_kernel(&text);

    let summaries: Vec<String> = built.capsules.iter().map(ToString::to_string).collect();
    assert!(
        summaries[0].ends_with(", restart never, mac 02:00:00:00:00:01"),
        "{}",
        summaries[0]
    );
    assert!(
        summaries[1].ends_with(", restart never"),
        "{}",
        summaries[1]
    );
    assert!(
        summaries[2].ends_with(", mac 02:ab:cd:ef:00:0f"),
        "{}",
        summaries[2]
    );
    assert_eq!(
        built.capsules[2].mac,
        Some([0x02, 0xab, 0xcd, 0xef, 0x00, 0x0f])
    );

    let image = Image::parse(&built.image).unwrap();
    assert_eq!(image.version(), 3);
    let macs: Vec<Option<[u8; 6]>> = image.capsules().map(|capsule| capsule.mac).collect();
    assert_eq!(
        macs,
        [
            Some([0x02, 0, 0, 0, 0, 0x01]),
            None,
            Some([0x02, 0xab, 0xcd, 0xef, 0x00, 0x0f])
        ]
    );
}

#[test]
fn the_summary_puts_the_mac_before_the_disks() {
    let text = manifest(
        "mac = \"02:00:00:00:00:01\"\n[[capsule.disk]]\nname = \"data\"\nstart = 0\nsize = \"4K\"",
        "",
        "",
    );
    let built = build_next_to_kernel(&text);
    let summary = built.capsules[0].to_string();
    assert!(
        summary.ends_with(", mac 02:00:00:00:00:01, disk data 4 KiB at 0 bytes"),
        "{summary}"
    );
}

#[test]
fn parse_mac_reads_either_case() {
    assert_eq!(
        parse_mac("02:00:00:00:00:01").unwrap(),
        [0x02, 0, 0, 0, 0, 0x01]
    );
    assert_eq!(
        parse_mac("FE:DC:BA:98:76:54").unwrap(),
        [0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54]
    );
    assert_eq!(
        parse_mac("0a:Bc:dE:f0:12:34").unwrap(),
        [0x0a, 0xbc, 0xde, 0xf0, 0x12, 0x34]
    );
    // A globally administered (vendor) unicast address is accepted too.
    assert_eq!(
        parse_mac("52:54:00:12:34:56").unwrap(),
        [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]
    );
}

#[test]
fn a_mac_without_six_groups_is_refused() {
    assert_eq!(
        mac_refusal("\"02:00:00:00:01\""),
        "capsule \"beta\": mac \"02:00:00:00:01\" has 5 groups; expected six two-digit hex groups separated by ':', such as \"02:00:00:00:00:01\""
    );
    assert!(mac_refusal("\"02:00:00:00:00:01:02\"").contains("has 7 groups"));
    assert!(mac_refusal("\"02:00:00:00:00:01:\"").contains("has 7 groups"));
    assert!(mac_refusal("\"020000000001\"").contains("has 1 group;"));
    assert!(mac_refusal("\"\"").contains("mac \"\" has 1 group;"));
    // Other separators are not groups.
    assert!(mac_refusal("\"02-00-00-00-00-01\"").contains("has 1 group;"));
    assert!(matches!(
        parse_mac("02.00.00.00.00.01"),
        Err(CapsuleError::MacNotSixGroups { groups: 1, .. })
    ));
}

#[test]
fn a_group_that_is_not_two_hex_digits_is_refused() {
    assert_eq!(
        mac_refusal("\"02:0g:00:00:00:01\""),
        "capsule \"beta\": mac \"02:0g:00:00:00:01\": group 2 (\"0g\") is not two hex digits"
    );
    assert!(mac_refusal("\"02:00:00:00:00:1\"").ends_with("group 6 (\"1\") is not two hex digits"));
    assert!(
        mac_refusal("\"02:00:00:00:000:01\"").ends_with("group 5 (\"000\") is not two hex digits")
    );
    assert!(mac_refusal("\"02::00:00:00:01\"").ends_with("group 2 (\"\") is not two hex digits"));
    // What `u8::from_str_radix` would let through, and characters beyond ASCII.
    assert!(
        mac_refusal("\"+2:00:00:00:00:01\"").ends_with("group 1 (\"+2\") is not two hex digits")
    );
    assert!(
        mac_refusal("\" 2:00:00:00:00:01\"").ends_with("group 1 (\" 2\") is not two hex digits")
    );
    assert!(mac_refusal("\"02:00:00:00:00:\u{e9}\"")
        .ends_with("group 6 (\"\u{e9}\") is not two hex digits"));
    // Surrounding spaces are not trimmed away.
    assert!(matches!(
        parse_mac("02:00:00:00:00:01 "),
        Err(CapsuleError::MacBadGroup { position: 6, .. })
    ));
}

#[test]
fn a_multicast_mac_is_refused() {
    assert_eq!(
        mac_refusal("\"03:00:00:00:00:01\""),
        "capsule \"beta\": mac 03:00:00:00:00:01 is a multicast address; a network card needs a unicast one"
    );
    // Written in upper case, shown in lower case.
    assert_eq!(
        mac_refusal("\"01:00:5E:00:00:FB\""),
        "capsule \"beta\": mac 01:00:5e:00:00:fb is a multicast address; a network card needs a unicast one"
    );
    assert_eq!(
        mac_refusal("\"FF:FF:FF:FF:FF:FF\""),
        "capsule \"beta\": mac ff:ff:ff:ff:ff:ff is the broadcast address; a network card needs a unicast one"
    );
    assert!(matches!(
        parse_mac("33:33:00:00:00:01"),
        Err(CapsuleError::Format(CapsuleProblem::MulticastMac { .. }))
    ));
}

#[test]
fn an_all_zero_mac_is_refused() {
    let message = mac_refusal("\"00:00:00:00:00:00\"");
    assert!(
        message.starts_with("capsule \"beta\": mac 00:00:00:00:00:00 is not a usable address"),
        "{message}"
    );
    assert!(message.contains("leave mac out"), "{message}");
}

#[test]
fn a_mac_that_is_not_a_string_is_refused_by_the_parser() {
    let error = parse_manifest(&manifest("", "mac = 2", "")).expect_err("an integer mac");
    let message = error.to_string();
    assert!(
        message.contains("mac") && message.contains("string"),
        "{message}"
    );
}

#[test]
fn two_capsules_with_one_mac_are_refused() {
    let text = manifest(
        "mac = \"02:00:00:00:00:07\"",
        "",
        "mac = \"02:00:00:00:00:07\"",
    );
    assert!(matches!(
        check(&text),
        Err(ManifestError::DuplicateMac { mac, .. }) if mac == [0x02, 0, 0, 0, 0, 0x07]
    ));
    assert_eq!(
        refusal(&text),
        "capsule \"gamma\" has the same mac 02:00:00:00:00:07 as capsule \"alpha\""
    );
    // The same address in another case is the same address.
    assert_eq!(
        refusal(&manifest(
            "",
            "mac = \"02:AB:00:00:00:01\"",
            "mac = \"02:ab:00:00:00:01\"",
        )),
        "capsule \"gamma\" has the same mac 02:ab:00:00:00:01 as capsule \"beta\""
    );
    // Capsules without a card do not clash with each other.
    assert!(check(&manifest("", "", "mac = \"02:00:00:00:00:01\"")).is_ok());
}
