//! Build-script helper shared by the icpo-rs crates that link libtorch.
//!
//! `cargo:rustc-link-arg` only reaches the targets of the package whose build script prints it,
//! so every crate with tests, examples or binaries on tch calls [`link_libtorch`] from its own
//! `build.rs`. It does two things torch-sys does not:
//!
//! * embeds an rpath to libtorch's `lib/` folder, so binaries run without `LD_LIBRARY_PATH`;
//! * links `libtorch_cuda` with `--no-as-needed`. Nothing in tch references a CUDA symbol, so the
//!   default `--as-needed` drops it, and then `tch::Cuda::is_available()` is false even on a GPU.
//!
//! A crate outside this workspace that depends on `icpo` does the same: `icpo-build` as a
//! build-dependency, `icpo_build::link_libtorch()` in its `build.rs`; libtorch is found from the
//! `LIBTORCH` (or `LIBTORCH_USE_PYTORCH`) setting torch-sys needs anyway (README: "Using icpo-rs
//! in your crate").
//!
//! The crates' C++ shims (icpo-policy's kernels, icpo-dist's c10d and NCCL) start from
//! [`shim_build`]: libtorch's headers, its C++ ABI, and `icpo_ffi.h` ([`ffi_include_dir`]), the
//! one copy of how errors cross a C interface.

use std::path::{Path, PathBuf};

/// libtorch's `lib/` folder, from what torch-sys itself reads, in its order of precedence:
/// `DEP_TCH_LIBTORCH_LIB` (exported by torch-sys to crates that depend on it directly), the
/// `torch` package of the active Python when `LIBTORCH_USE_PYTORCH` is set, `$LIBTORCH_LIB/lib`,
/// `$LIBTORCH/lib`. None when none applies (the `doc-only` feature, or a crate
/// built without libtorch).
pub fn libtorch_lib_dir() -> Option<PathBuf> {
    for var in ["DEP_TCH_LIBTORCH_LIB", "LIBTORCH_LIB", "LIBTORCH", "LIBTORCH_USE_PYTORCH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        return Some(lib.into());
    }
    if std::env::var_os("LIBTORCH_USE_PYTORCH").is_some() {
        // The same interpreter torch-sys asks.
        let python = if std::env::var_os("VIRTUAL_ENV").is_some() { "python" } else { "python3" };
        let out = std::process::Command::new(python)
            .args([
                "-c",
                "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))",
            ])
            .output()
            .ok()?;
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        return (out.status.success() && !dir.is_empty()).then(|| dir.into());
    }
    if let Ok(lib) = std::env::var("LIBTORCH_LIB") {
        return Some(PathBuf::from(lib).join("lib"));
    }
    if let Ok(root) = std::env::var("LIBTORCH") {
        return Some(PathBuf::from(root).join("lib"));
    }
    None
}

/// The folder of `icpo_ffi.h`, the C++ helpers every C interface of icpo-rs shares (errors as
/// malloc'd messages, never exceptions): build scripts add it to their include path.
pub fn ffi_include_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("include")
}

/// libtorch's C++ headers as a shim's build script sees them: `DEP_TCH_LIBTORCH_LIB`'s sibling
/// `include/` (torch-sys exports it to crates that depend on it directly), `None` without
/// libtorch (as with the `doc-only` feature).
pub fn libtorch_include_dir() -> Option<PathBuf> {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib = PathBuf::from(std::env::var_os("DEP_TCH_LIBTORCH_LIB")?);
    Some(lib.parent().unwrap_or(&lib).join("include"))
}

/// A C++17 build against libtorch's headers with the ABI torch-sys uses and [`ffi_include_dir`]
/// on the include path: the common ground of the crates' shims. `None`, with a cargo warning
/// saying what is lost, when libtorch or its header `required` (relative to `include/`) is
/// missing.
pub fn shim_build(required: &str, lost: &str) -> Option<cc::Build> {
    println!("cargo:rerun-if-changed={}", ffi_include_dir().join("icpo_ffi.h").display());
    let include = libtorch_include_dir()?;
    if !include.join(required).exists() {
        println!("cargo:warning=no {required} under {}: {lost}", include.display());
        return None;
    }
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .include(ffi_include_dir())
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .opt_level(2)
        .warnings(false);
    Some(build)
}

/// Emits the link arguments described in the crate docs, for libtorch found by
/// [`libtorch_lib_dir`]: inside this workspace through torch-sys, in another project through
/// the `LIBTORCH` (or `LIBTORCH_USE_PYTORCH`) setting torch-sys needs anyway. Does nothing when
/// no libtorch is configured (for example with the `doc-only` feature).
pub fn link_libtorch() {
    let Some(lib) = libtorch_lib_dir() else {
        return;
    };
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os != "linux" && target_os != "macos" {
        return;
    }
    // Resolve symlinks so the rpath stays valid however the folder was reached.
    let lib = lib.canonicalize().unwrap_or(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if target_os == "linux" && lib.join("libtorch_cuda.so").exists() {
        // Appended after rustc's own libraries; push/pop-state keeps the flag local to this lib.
        println!("cargo:rustc-link-arg=-Wl,--push-state,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{}", lib.display());
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--pop-state");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lib_dir_follows_torch_sys_precedence() {
        // One test: the environment is process-wide.
        for v in ["DEP_TCH_LIBTORCH_LIB", "LIBTORCH_LIB", "LIBTORCH", "LIBTORCH_USE_PYTORCH"] {
            std::env::remove_var(v);
        }
        assert_eq!(libtorch_lib_dir(), None);
        std::env::set_var("LIBTORCH", "/opt/libtorch");
        assert_eq!(libtorch_lib_dir(), Some(PathBuf::from("/opt/libtorch/lib")));
        std::env::set_var("LIBTORCH_LIB", "/opt/other");
        assert_eq!(libtorch_lib_dir(), Some(PathBuf::from("/opt/other/lib")));
        std::env::set_var("DEP_TCH_LIBTORCH_LIB", "/x/torch/lib");
        assert_eq!(libtorch_lib_dir(), Some(PathBuf::from("/x/torch/lib")));
        for v in ["DEP_TCH_LIBTORCH_LIB", "LIBTORCH_LIB", "LIBTORCH"] {
            std::env::remove_var(v);
        }
    }
}
