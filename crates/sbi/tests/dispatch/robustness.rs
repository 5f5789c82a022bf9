//! Arbitrary register contents never panic and never break the environment's guarantees.

use keel_sbi::{dispatch, extension_name, Call, CallStats, Extension, Outcome, SbiError};

use crate::mock::MockEnvironment;

/// A small deterministic generator (SplitMix64) so failures are reproducible.
struct Generator(u64);

impl Generator {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut value = self.0;
        value = (value ^ (value >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        value = (value ^ (value >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        value ^ (value >> 31)
    }

    /// A register value biased towards the edges argument validation cares about.
    fn register(&mut self) -> usize {
        const INTERESTING: [usize; 12] = [
            0,
            1,
            2,
            3,
            63,
            64,
            0x8000_0000,
            0xFFFF_FFFF,
            usize::MAX,
            usize::MAX - 1,
            1 << 63,
            0x8020_0000,
        ];
        let choice = self.next();
        if choice.is_multiple_of(3) {
            self.next() as usize
        } else {
            INTERESTING[(choice / 3) as usize % INTERESTING.len()]
        }
    }
}

const EIDS: [usize; 16] = [
    0x00,
    0x02,
    0x04,
    0x06,
    0x07,
    0x08,
    0x09,
    0x10,
    0x5449_4D45,
    0x0073_5049,
    0x5246_4E43,
    0x0048_534D,
    0x5352_5354,
    0x4442_434E,
    0x0050_4D55,
    0x4B45_4C00,
];

#[test]
fn random_calls_keep_every_invariant() {
    let mut generator = Generator(0x4B45_454C);
    let mut stats = CallStats::new();
    for vcpu_count in [0, 1, 3, 64, 65] {
        let mut environment = MockEnvironment::new(vcpu_count);
        environment.guest_memory.insert(0x1000, usize::MAX);
        environment.guest_memory.insert(0x2000, 0b1);
        for _ in 0..4000 {
            let eid = EIDS[generator.next() as usize % EIDS.len()];
            let fid = (generator.next() % 9) as usize;
            let mut args = [0; 6];
            for arg in &mut args {
                *arg = generator.register();
            }
            if generator.next().is_multiple_of(4) {
                args[0] = [0x1000, 0x2000][generator.next() as usize % 2];
            }
            stats.record(eid);
            let outcome = dispatch(&Call::new(eid, fid, args), &mut environment);
            if let Outcome::Return { error, value } = outcome {
                if error != 0 {
                    assert!(
                        SbiError::from_code(error).is_some(),
                        "undefined error {error} from {}",
                        extension_name(eid)
                    );
                    assert_eq!(value, 0);
                }
            }
            if Extension::from_eid(eid).is_none() {
                assert_eq!(outcome.error(), Some(SbiError::NotSupported));
            }
        }
    }
    assert_eq!(stats.total(), 5 * 4000);
    assert!(stats.unsupported() > 0);
    assert!(stats.count(Extension::Legacy) > 0);
}
