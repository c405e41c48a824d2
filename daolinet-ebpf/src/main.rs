#![no_std]
#![no_main]
//! DaoliNet eBPF datapath (work in progress).
#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}
