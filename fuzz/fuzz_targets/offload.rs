#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| nanami_fuzz::offload(data));
