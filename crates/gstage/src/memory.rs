//! The interface through which page-table memory is allocated and accessed.

/// Source and accessor of the physical memory that holds page tables.
///
/// The hypervisor implements this over identity-mapped RAM; tests implement it over a `Vec`.
/// Addresses are host-physical. Implementations decide how to react to accesses outside a table
/// they handed out; the page-table code only ever touches entries of tables it allocated.
pub trait TableMemory {
    /// Allocates `bytes` (4096 or 16384) of zeroed memory aligned to `align` bytes and returns its
    /// physical address, or `None` when no memory is left.
    fn alloc_table(&mut self, bytes: usize, align: usize) -> Option<u64>;

    /// Returns a table previously obtained from [`TableMemory::alloc_table`] with the same size.
    fn free_table(&mut self, addr: u64, bytes: usize);

    /// Reads the 8-byte page-table entry at the 8-byte aligned physical address `addr`.
    fn read_pte(&self, addr: u64) -> u64;

    /// Writes the 8-byte page-table entry at the 8-byte aligned physical address `addr`.
    ///
    /// The hypervisor's implementation must make the store visible to the hardware page-table
    /// walker (a plain volatile store to coherent RAM suffices on RISC-V).
    fn write_pte(&mut self, addr: u64, pte: u64);
}
