//! The build script of both binaries: embeds the source revision in
//! `--version`. `SPILLWAY_GIT_REVISION` set at build time wins (a Docker
//! build passes it as a build argument); otherwise `git rev-parse` of the
//! source tree; otherwise `unknown`.
//!
//! On Linux with glibc it also links the binaries with packed relative
//! relocations (`DT_RELR`, `-z pack-relative-relocs`): otherwise the binary
//! carries a 24-byte relocation entry per pointer in its tables
//! (`.rela.dyn`), which the loader reads at every start and which stay
//! resident (0.6 MiB of the agent's RSS, bench/agent-footprint.sh). Needs binutils
//! 2.38 or lld 15 to link and glibc 2.36 to run (Debian 12, Ubuntu 22.10,
//! RHEL 10); `SPILLWAY_RELR=0` builds without it for older hosts.
//!
//! The agent's binary is also linked with its functions in the order of
//! `agent/link-order.txt` (see `scripts/agent-link-order.sh`): the code a
//! running agent executes sits together, so the kernel's 64 KiB fault-around
//! maps little else. Only where rustc links with lld (its default on
//! x86_64-unknown-linux-gnu since Rust 1.90) and no other linker is
//! configured; `SPILLWAY_LINK_ORDER=0` builds without it.
fn main() {
    pack_relative_relocations();
    order_functions();
    embed_revision();
}

fn pack_relative_relocations() {
    println!("cargo:rerun-if-env-changed=SPILLWAY_RELR");
    let env = |key: &str| std::env::var(key).unwrap_or_default();
    let linux_gnu = env("CARGO_CFG_TARGET_OS") == "linux" && env("CARGO_CFG_TARGET_ENV") == "gnu";
    if linux_gnu && env("SPILLWAY_RELR") != "0" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

fn order_functions() {
    let env = |key: &str| std::env::var(key).unwrap_or_default();
    if env("CARGO_PKG_NAME") != "spillway-agent" {
        return;
    }
    println!("cargo:rerun-if-env-changed=SPILLWAY_LINK_ORDER");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER");
    let order = std::path::Path::new(&env("CARGO_MANIFEST_DIR")).join("link-order.txt");
    println!("cargo:rerun-if-changed={}", order.display());
    if env("SPILLWAY_LINK_ORDER") == "0" {
        return;
    }
    // The names are a release build's (a profile's settings are part of a
    // symbol's hash). rustc's own lld is the linker only on this target,
    // from 1.90, unless the build names another (a linker or linker flags
    // of its own).
    let lld = env("PROFILE") == "release"
        && env("TARGET") == "x86_64-unknown-linux-gnu"
        && rustc_minor().is_some_and(|minor| minor >= 90)
        && env("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_empty()
        && !env("CARGO_ENCODED_RUSTFLAGS").contains("link");
    if lld && order.is_file() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        // Names of another toolchain's build are skipped, not errors.
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}

/// The minor version of the rustc that builds this (`rustc 1.95.0 ...`).
fn rustc_minor() -> Option<u32> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let out = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()?;
    let version = String::from_utf8_lossy(&out.stdout);
    version
        .split_whitespace()
        .nth(1)?
        .split('.')
        .nth(1)?
        .parse()
        .ok()
}

fn embed_revision() {
    println!("cargo:rerun-if-env-changed=SPILLWAY_GIT_REVISION");
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/refs");
    let rev = std::env::var("SPILLWAY_GIT_REVISION")
        .ok()
        .filter(|r| !r.trim().is_empty())
        .or_else(|| {
            std::process::Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=SPILLWAY_GIT_REVISION={}", rev.trim());
}
