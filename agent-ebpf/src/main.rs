//! Kernel programs. One file per sensor; every kernel struct read goes through `kernel`.
#![no_std]
#![no_main]
#![expect(
    clippy::inline_always,
    reason = "inlined helpers keep programs free of BPF-to-BPF calls"
)]
#![expect(
    clippy::needless_pass_by_value,
    reason = "program entry points take their context by value"
)]

mod emit;
mod enforce;
mod exec;
mod kernel;
mod task;
mod tty;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that can reach this loop, so a panic path in the
    // code fails at load time instead of hanging at run time.
    loop {}
}
