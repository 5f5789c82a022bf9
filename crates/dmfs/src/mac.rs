//! Capsule MAC addresses: how they are shown, and the rule the parser and the writer share.

use crate::error::CapsuleProblem;
use crate::layout::MAC_LEN;

/// A MAC address, shown as six lower-case two-digit hex groups separated by `:`
/// (`02:00:00:00:00:01`), the way `ip link` and most tools print one. It is the switch's own type,
/// so an address read from an image and one seen on the wire are the same thing.
pub use keel_switch::MacAddress;

/// Checks that `mac` can be a network card's own address: not all zero (which an image reads as
/// "no network card", so writing it would silently drop the card) and not a multicast or broadcast
/// address (frames to those reach every listener, so a card using one as its source would be
/// indistinguishable from a group).
pub fn check_mac(mac: [u8; MAC_LEN]) -> Result<(), CapsuleProblem> {
    let address = MacAddress(mac);
    if address.is_zero() {
        Err(CapsuleProblem::ZeroMac)
    } else if address.is_multicast() {
        Err(CapsuleProblem::MulticastMac { mac })
    } else {
        Ok(())
    }
}

/// Reads a record's MAC field: `None` when it is all zero, the address when it is a unicast one.
pub(crate) fn decode(mac: [u8; MAC_LEN]) -> Result<Option<[u8; MAC_LEN]>, CapsuleProblem> {
    if MacAddress(mac).is_zero() {
        return Ok(None);
    }
    check_mac(mac).map(|()| Some(mac))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn display_is_lower_case_colon_separated() {
        let mac = MacAddress([0x02, 0xab, 0x0c, 0xde, 0x00, 0xff]);
        assert_eq!(mac.to_string(), "02:ab:0c:de:00:ff");
        assert_eq!(std::format!("{mac:?}"), "02:ab:0c:de:00:ff");
        assert_eq!(MacAddress::default().to_string(), "00:00:00:00:00:00");
    }

    #[test]
    fn classification() {
        assert!(MacAddress([0; 6]).is_zero());
        assert!(!MacAddress([0, 0, 0, 0, 0, 1]).is_zero());
        assert!(MacAddress([0x01, 0x00, 0x5e, 0, 0, 1]).is_multicast());
        assert!(MacAddress([0x33, 0x33, 0, 0, 0, 1]).is_multicast());
        assert!(MacAddress([0xff; 6]).is_multicast() && MacAddress([0xff; 6]).is_broadcast());
        assert!(!MacAddress([0x02, 0, 0, 0, 0, 1]).is_multicast());
        assert!(!MacAddress([0xfe, 0xff, 0xff, 0xff, 0xff, 0xff]).is_broadcast());
    }

    #[test]
    fn rules() {
        assert_eq!(check_mac([0x02, 0, 0, 0, 0, 1]), Ok(()));
        // A globally administered (vendor) address is unicast too.
        assert_eq!(check_mac([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]), Ok(()));
        assert_eq!(check_mac([0; 6]), Err(CapsuleProblem::ZeroMac));
        assert_eq!(
            check_mac([0x03, 0, 0, 0, 0, 1]),
            Err(CapsuleProblem::MulticastMac {
                mac: [0x03, 0, 0, 0, 0, 1]
            })
        );
        assert_eq!(decode([0; 6]), Ok(None));
        assert_eq!(
            decode([0x02, 0, 0, 0, 0, 1]),
            Ok(Some([0x02, 0, 0, 0, 0, 1]))
        );
        assert_eq!(
            decode([0xff; 6]),
            Err(CapsuleProblem::MulticastMac { mac: [0xff; 6] })
        );
    }
}
