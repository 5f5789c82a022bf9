//! DBCN extension (EID "DBCN"): debug console write, read and write-byte.

use sbi_spec::dbcn::{CONSOLE_READ, CONSOLE_WRITE, CONSOLE_WRITE_BYTE};

use crate::{Call, Environment, Outcome, SbiError};

/// Direction of a multi-byte console transfer.
#[derive(Clone, Copy)]
enum Transfer {
    /// Guest memory to console.
    Write,
    /// Console to guest memory.
    Read,
}

pub(crate) fn handle(call: &Call, environment: &mut impl Environment) -> Outcome {
    let [num_bytes, base_addr_lo, base_addr_hi, ..] = call.args;
    match call.fid {
        CONSOLE_WRITE => transfer(
            Transfer::Write,
            num_bytes,
            base_addr_lo,
            base_addr_hi,
            environment,
        )
        .into(),
        CONSOLE_READ => transfer(
            Transfer::Read,
            num_bytes,
            base_addr_lo,
            base_addr_hi,
            environment,
        )
        .into(),
        CONSOLE_WRITE_BYTE => {
            // `byte` is a `uint8_t`: only the low 8 bits of `a0` carry it.
            environment.console_write_byte(call.args[0] as u8);
            Outcome::success(0)
        }
        _ => Outcome::failure(SbiError::NotSupported),
    }
}

/// Joins the `base_addr_lo`/`base_addr_hi` pair into a guest-physical address.
///
/// On RV64 `base_addr_lo` already holds 64 address bits, so a non-zero `base_addr_hi` names an
/// address above 2^64 that no capsule can have; the spec's DBCN error tables answer memory that
/// does not meet the shared-memory requirements with `SBI_ERR_INVALID_PARAM`.
fn guest_address(base_addr_lo: usize, base_addr_hi: usize) -> Result<u64, SbiError> {
    if base_addr_hi != 0 {
        return Err(SbiError::InvalidParam);
    }
    // `usize` is never wider than 64 bits, so this is lossless.
    Ok(base_addr_lo as u64)
}

fn transfer(
    direction: Transfer,
    num_bytes: usize,
    base_addr_lo: usize,
    base_addr_hi: usize,
    environment: &mut impl Environment,
) -> Result<usize, SbiError> {
    let address = guest_address(base_addr_lo, base_addr_hi)?;
    if num_bytes == 0 {
        return Ok(0);
    }
    // The buffer's last byte must not lie beyond the top of the address space.
    let last_byte_offset = u64::try_from(num_bytes - 1).map_err(|_| SbiError::InvalidParam)?;
    address
        .checked_add(last_byte_offset)
        .ok_or(SbiError::InvalidParam)?;
    let transferred = match direction {
        Transfer::Write => environment.console_write(address, num_bytes)?,
        Transfer::Read => environment.console_read(address, num_bytes)?,
    };
    // Never report more bytes than the guest asked for, whatever the environment says.
    Ok(transferred.min(num_bytes))
}

#[cfg(test)]
mod tests {
    use super::guest_address;
    use crate::SbiError;

    #[test]
    fn address_halves_combine_on_rv64() {
        assert_eq!(guest_address(0x8020_0000, 0), Ok(0x8020_0000));
        assert_eq!(guest_address(usize::MAX, 0), Ok(u64::MAX));
        assert_eq!(guest_address(0, 1), Err(SbiError::InvalidParam));
        assert_eq!(
            guest_address(0x1000, usize::MAX),
            Err(SbiError::InvalidParam)
        );
    }
}
