//! Link options for the `kiosk-gateway` binary.

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        // The binary is position-independent, so the loader patches every
        // pointer in its read-only data at start: 19 000 relocations of 24
        // bytes each, 0.45 MiB read at every start and kept resident.
        // Packed (DT_RELR) they take 5 KiB. Needs glibc 2.36 on the kiosk
        // (Debian 12) and binutils 2.38 to link.
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
