#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vitals_fuzz::relay_payload(data));
