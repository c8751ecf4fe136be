#![no_main]
//! Fuzz target `contact_card`: see `sremp_fuzz::contact_card` for what it covers and the input layout.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sremp_fuzz::contact_card(data));
