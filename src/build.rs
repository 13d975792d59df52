//! Build script.
// Records the target triple, which the sanity run of an upgrade compares.
fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    println!("cargo:rustc-env=HANDOVER_TARGET={target}");
    println!("cargo:rerun-if-changed=build.rs");
}
