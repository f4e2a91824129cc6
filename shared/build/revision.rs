//! The build script of both binaries: embeds the source revision in
//! `--version`. `SPILLWAY_GIT_REVISION` set at build time wins (a Docker
//! build passes it as a build argument); otherwise `git rev-parse` of the
//! source tree; otherwise `unknown`.
fn main() {
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
