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
fn main() {
    pack_relative_relocations();
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
