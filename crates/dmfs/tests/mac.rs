//! Capsule MAC addresses (format version 3): round trips, older versions, and every MAC rule the
//! writer and the parser enforce.

mod common;

use common::{build, parse_changed, record_base, reseal, XorShift, MIB};
use keel_dmfs::layout::{header, record, MAX_CAPSULES};
use keel_dmfs::{
    check_mac, BuildError, CapsuleProblem, CapsuleSpec, FormatError, Image, MacAddress,
};

const ALPHA_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
const CHARLIE_MAC: [u8; 6] = [0x02, 0x4b, 0x45, 0x45, 0x4c, 0xff];

fn spec(name: &str, mac: Option<[u8; 6]>) -> CapsuleSpec {
    CapsuleSpec {
        name: name.into(),
        kernel: name.as_bytes().repeat(50),
        memory: 16 * MIB,
        mac,
        ..CapsuleSpec::default()
    }
}

/// Three capsules: the first and the last with a network card, the middle one without.
fn valid_image() -> Vec<u8> {
    build(vec![
        spec("alpha", Some(ALPHA_MAC)),
        spec("bravo", None),
        spec("charlie", Some(CHARLIE_MAC)),
    ])
    .expect("valid capsules build")
}

/// Offset of capsule `capsule`'s MAC field.
fn mac_at(image: &[u8], capsule: usize) -> usize {
    record_base(image, capsule) + record::MAC
}

/// Applies `change` to the valid image, reseals it and returns the parse result.
fn corrupt(change: impl FnOnce(&mut Vec<u8>)) -> Result<(), FormatError> {
    parse_changed(valid_image(), change)
}

#[test]
fn round_trip_keeps_the_mac() {
    let bytes = valid_image();
    let image = Image::parse(&bytes).expect("written image parses");
    assert_eq!(image.version(), 3);
    let macs: Vec<Option<[u8; 6]>> = image.capsules().map(|capsule| capsule.mac).collect();
    assert_eq!(macs, [Some(ALPHA_MAC), None, Some(CHARLIE_MAC)]);

    // The bytes sit at record offset 0x52, in order; no network card is six zero bytes.
    assert_eq!(record::MAC, 0x52);
    assert_eq!(bytes[mac_at(&bytes, 0)..][..6], ALPHA_MAC);
    assert_eq!(bytes[mac_at(&bytes, 1)..][..6], [0; 6]);
    assert_eq!(bytes[mac_at(&bytes, 2)..][..6], CHARLIE_MAC);

    let text = format!("{:?}", image.capsule("charlie").unwrap());
    assert!(text.contains("mac: Some(02:4b:45:45:4c:ff)"), "{text}");
    let text = format!("{:?}", image.capsule("bravo").unwrap());
    assert!(text.contains("mac: None"), "{text}");

    // Parsed capsules convert back into specs that build the same image.
    let rebuilt = build(
        image
            .capsules()
            .map(|capsule| CapsuleSpec {
                mac: capsule.mac,
                ..spec(capsule.name, None)
            })
            .collect(),
    )
    .unwrap();
    assert_eq!(rebuilt, bytes);
}

#[test]
fn an_image_without_any_mac_parses_with_none() {
    let bytes = build(vec![spec("alpha", None), spec("bravo", None)]).unwrap();
    let image = Image::parse(&bytes).unwrap();
    assert_eq!(image.version(), 3);
    assert!(image.capsules().all(|capsule| capsule.mac.is_none()));
}

#[test]
fn version_2_images_have_no_mac_and_reserve_its_bytes() {
    let mut bytes = build(vec![spec("alpha", None), spec("bravo", None)]).unwrap();
    bytes[header::VERSION] = 2;
    reseal(&mut bytes);
    let image = Image::parse(&bytes).expect("a version 2 image without a mac parses");
    assert_eq!(image.version(), 2);
    assert!(image.capsules().all(|capsule| capsule.mac.is_none()));

    // In version 2 the MAC bytes are reserved: a version 3 image relabelled as 2 is refused, at
    // the first non-zero byte.
    let mut relabelled = valid_image();
    relabelled[header::VERSION] = 2;
    reseal(&mut relabelled);
    let error = Image::parse(&relabelled).unwrap_err();
    assert_eq!(
        error,
        FormatError::Capsule {
            capsule: 0,
            problem: CapsuleProblem::ReservedNotZero {
                offset: record::VERSION_2_RESERVED
            }
        }
    );
    assert_eq!(
        error.to_string(),
        "DMFS capsule #0: reserved record byte at offset 0x52 is not zero"
    );
    // Every byte of the range is checked.
    for position in 0..6 {
        let mut bytes = build(vec![spec("alpha", None)]).unwrap();
        bytes[header::VERSION] = 2;
        let at = mac_at(&bytes, 0) + position;
        bytes[at] = 0x80;
        reseal(&mut bytes);
        assert_eq!(
            Image::parse(&bytes).err(),
            Some(FormatError::Capsule {
                capsule: 0,
                problem: CapsuleProblem::ReservedNotZero {
                    offset: record::VERSION_2_RESERVED + position
                }
            })
        );
    }
}

#[test]
fn version_1_images_reserve_the_mac_bytes_too() {
    let mut bytes = build(vec![spec("alpha", None)]).unwrap();
    bytes[header::VERSION] = 1;
    reseal(&mut bytes);
    let image = Image::parse(&bytes).unwrap();
    assert_eq!(image.capsule("alpha").unwrap().mac, None);

    let mut with_mac = build(vec![spec("alpha", Some(ALPHA_MAC))]).unwrap();
    with_mac[header::VERSION] = 1;
    reseal(&mut with_mac);
    assert_eq!(
        Image::parse(&with_mac).err(),
        Some(FormatError::Capsule {
            capsule: 0,
            problem: CapsuleProblem::ReservedNotZero {
                offset: record::MAC
            }
        })
    );
}

#[test]
fn parser_refuses_a_multicast_mac() {
    let error = corrupt(|i| {
        let at = mac_at(i, 2);
        i[at] = 0x03;
    })
    .unwrap_err();
    let mac = [0x03, 0x4b, 0x45, 0x45, 0x4c, 0xff];
    assert_eq!(
        error,
        FormatError::Capsule {
            capsule: 2,
            problem: CapsuleProblem::MulticastMac { mac }
        }
    );
    assert_eq!(
        error.to_string(),
        "DMFS capsule #2: mac 03:4b:45:45:4c:ff is a multicast address; a network card needs a unicast one"
    );

    // A card in a capsule that had none, with the broadcast address.
    let error = corrupt(|i| {
        let at = mac_at(i, 1);
        i[at..at + 6].fill(0xff);
    })
    .unwrap_err();
    assert_eq!(
        error,
        FormatError::Capsule {
            capsule: 1,
            problem: CapsuleProblem::MulticastMac { mac: [0xff; 6] }
        }
    );
    assert_eq!(
        error.to_string(),
        "DMFS capsule #1: mac ff:ff:ff:ff:ff:ff is the broadcast address; a network card needs a unicast one"
    );

    // Only the individual/group bit matters: other bits of the first byte are fine.
    assert_eq!(
        corrupt(|i| {
            let at = mac_at(i, 1);
            i[at..at + 6].copy_from_slice(&[0xfe, 0, 0, 0, 0, 0]);
        }),
        Ok(())
    );
}

#[test]
fn parser_refuses_two_capsules_with_one_mac() {
    let error = corrupt(|i| {
        let at = mac_at(i, 2);
        i[at..at + 6].copy_from_slice(&ALPHA_MAC);
    })
    .unwrap_err();
    assert_eq!(
        error,
        FormatError::DuplicateMac {
            mac: ALPHA_MAC,
            first: 0,
            second: 2,
        }
    );
    assert_eq!(
        error.to_string(),
        "DMFS capsules #0 and #2 both have mac 02:00:00:00:00:01"
    );

    // The capsule without a card takes the MAC of the one after it.
    let error = corrupt(|i| {
        let at = mac_at(i, 1);
        i[at..at + 6].copy_from_slice(&CHARLIE_MAC);
    })
    .unwrap_err();
    assert!(
        matches!(
            error,
            FormatError::DuplicateMac {
                first: 1,
                second: 2,
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn builder_refuses_unusable_macs() {
    let error = build(vec![spec("alpha", Some([0x01, 0, 0x5e, 0, 0, 0xfb]))]).unwrap_err();
    assert_eq!(
        error,
        BuildError::Capsule {
            name: "alpha".into(),
            problem: CapsuleProblem::MulticastMac {
                mac: [0x01, 0, 0x5e, 0, 0, 0xfb]
            }
        }
    );
    assert_eq!(
        error.to_string(),
        "capsule \"alpha\": mac 01:00:5e:00:00:fb is a multicast address; a network card needs a unicast one"
    );

    // All zeros would be written as "no network card": refused rather than silently dropped.
    let error = build(vec![spec("alpha", Some([0; 6]))]).unwrap_err();
    assert_eq!(
        error,
        BuildError::Capsule {
            name: "alpha".into(),
            problem: CapsuleProblem::ZeroMac
        }
    );
    assert!(
        error
            .to_string()
            .starts_with("capsule \"alpha\": mac 00:00:00:00:00:00 is not a usable address"),
        "{error}"
    );
}

#[test]
fn builder_refuses_a_mac_used_by_an_earlier_capsule() {
    let error = build(vec![
        spec("alpha", Some(ALPHA_MAC)),
        spec("bravo", None),
        spec("charlie", Some(ALPHA_MAC)),
    ])
    .unwrap_err();
    assert_eq!(
        error,
        BuildError::DuplicateMac {
            mac: ALPHA_MAC,
            first: "alpha".into(),
            second: "charlie".into(),
        }
    );
    assert_eq!(
        error.to_string(),
        "capsules \"alpha\" and \"charlie\" both have mac 02:00:00:00:00:01"
    );
    // Any number of capsules may go without a card.
    assert!(build(vec![
        spec("alpha", None),
        spec("bravo", None),
        spec("charlie", None)
    ])
    .is_ok());
}

#[test]
fn the_fullest_image_checks_every_pair() {
    let mac = |index: u32| {
        let [high, low] = (index as u16).to_be_bytes();
        [0x02, 0, 0, 0, high, low]
    };
    let capsules = (0..MAX_CAPSULES)
        .map(|index| CapsuleSpec {
            name: format!("c{index}"),
            kernel: vec![1],
            memory: 2 * MIB,
            mac: Some(mac(index)),
            ..CapsuleSpec::default()
        })
        .collect();
    let mut bytes = build(capsules).unwrap();
    let image = Image::parse(&bytes).unwrap();
    assert_eq!(image.capsule("c255").unwrap().mac, Some(mac(255)));

    // The last capsule given the first one's address is still found.
    let at = mac_at(&bytes, 255);
    bytes[at..at + 6].copy_from_slice(&mac(0));
    reseal(&mut bytes);
    assert!(matches!(
        Image::parse(&bytes),
        Err(FormatError::DuplicateMac {
            first: 0,
            second: 255,
            ..
        })
    ));
}

#[test]
fn public_helpers_agree_with_the_parser() {
    assert_eq!(MacAddress(ALPHA_MAC).to_string(), "02:00:00:00:00:01");
    assert_eq!(check_mac(ALPHA_MAC), Ok(()));
    assert_eq!(check_mac([0; 6]), Err(CapsuleProblem::ZeroMac));
    assert!(MacAddress([0x33, 0x33, 0, 0, 0, 1]).is_multicast());
}

#[test]
fn random_mac_corruption_never_yields_an_unusable_or_shared_mac() {
    let original = valid_image();
    let mut random = XorShift(0x3ac0_ffee_0000_0003);
    let mut accepted = 0;
    for _ in 0..2000 {
        let mut bytes = original.clone();
        for _ in 0..=random.below(3) {
            let at = mac_at(&bytes, random.below(3)) + random.below(6);
            bytes[at] ^= 1 << random.below(8);
        }
        // Sometimes copy one capsule's MAC bytes over another's.
        if random.below(4) == 0 {
            let from = mac_at(&bytes, random.below(3));
            let to = mac_at(&bytes, random.below(3));
            let field: [u8; 6] = bytes[from..from + 6].try_into().unwrap();
            bytes[to..to + 6].copy_from_slice(&field);
        }
        reseal(&mut bytes);
        let Ok(image) = Image::parse(&bytes) else {
            continue;
        };
        accepted += 1;
        let macs: Vec<[u8; 6]> = image.capsules().filter_map(|capsule| capsule.mac).collect();
        for (index, mac) in macs.iter().enumerate() {
            assert!(*mac != [0; 6] && mac[0] & 1 == 0, "unusable mac {mac:02x?}");
            assert!(!macs[..index].contains(mac), "shared mac {mac:02x?}");
        }
    }
    // Flips in the later bytes keep an address unicast, so some images must pass.
    assert!(accepted > 0);
}
