//! TIME extension: set_timer.

use keel_sbi::SbiError;

use crate::mock::{Event, MockEnvironment};
use crate::{call, err, ok};

const TIME: usize = 0x5449_4D45;

#[test]
fn set_timer_programs_the_absolute_time() {
    let mut environment = MockEnvironment::new(1);
    assert_eq!(call(&mut environment, TIME, 0, &[1_000_000]), ok(0));
    assert_eq!(call(&mut environment, TIME, 0, &[usize::MAX]), ok(0));
    assert_eq!(
        environment.events,
        vec![Event::SetTimer(1_000_000), Event::SetTimer(u64::MAX)]
    );
}

#[test]
fn other_time_functions_are_not_supported() {
    let mut environment = MockEnvironment::new(1);
    assert_eq!(
        call(&mut environment, TIME, 1, &[5]),
        err(SbiError::NotSupported)
    );
    assert!(environment.events.is_empty());
}
