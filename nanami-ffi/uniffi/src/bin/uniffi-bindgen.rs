//! `uniffi-bindgen` pinned to this crate's uniffi version, so generated bindings
//! always match the scaffolding in the library. Used by `scripts/test-mobile`:
//!
//! ```sh
//! cargo run -p nanami-mobile --features bindgen-cli --bin uniffi-bindgen -- \
//!     generate --no-format --language kotlin --out-dir OUT target/debug/libnanami_mobile.so
//! ```

fn main() {
    uniffi::uniffi_bindgen_main();
}
