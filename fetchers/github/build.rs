//! Records the target triple this crate is compiled for: the default `{target}` of asset names.

fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    println!("cargo:rustc-env=HANDOVER_GITHUB_TARGET={target}");
    println!("cargo:rerun-if-changed=build.rs");
}
