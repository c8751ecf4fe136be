#![no_main]
//! Fuzz target `rendezvous_messages`: see `sremp_fuzz::rendezvous_messages` for what it covers and the input layout.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sremp_fuzz::rendezvous_messages(data));
