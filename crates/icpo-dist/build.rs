//! Links libtorch (see icpo-build) and compiles `csrc/store.cpp`, the C interface to c10d's
//! TCPStore, against the headers beside it (cfg `icpo_c10d`; without libtorch, as with the
//! `doc-only` feature, only world size 1 is available).

use std::path::Path;

fn main() {
    icpo_build::link_libtorch();
    println!("cargo::rustc-check-cfg=cfg(icpo_c10d)");
    println!("cargo::rustc-check-cfg=cfg(icpo_nccl)");
    for f in ["csrc/store.cpp", "csrc/store.h", "csrc/nccl.cpp"] {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    let root = Path::new(&lib).parent().unwrap_or(Path::new(&lib)).to_path_buf();
    let include = root.join("include");
    if !include.join("torch/csrc/distributed/c10d/TCPStore.hpp").exists() {
        println!("cargo:warning=no c10d headers under {}: only world size 1", include.display());
        return;
    }
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .file("csrc/store.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .opt_level(2)
        .warnings(false)
        .compile("icpo_c10d");
    println!("cargo:rustc-cfg=icpo_c10d");
    // NCCL: the wheel's nccl.h and CUDA headers (with CCCL's and crt/, which
    // scripts/setup-libtorch installs), beside the torch package.
    let torch_dir = root.canonicalize().unwrap_or_else(|_| root.clone());
    let nvidia = torch_dir.parent().map(|p| p.join("nvidia")).unwrap_or_default();
    let (cuda, nccl) = (nvidia.join("cu13/include"), nvidia.join("nccl/include"));
    println!("cargo:rerun-if-changed={}", cuda.join("nv/target").display());
    if !(cuda.join("nv/target").exists()
        && cuda.join("crt/host_config.h").exists()
        && nccl.join("nccl.h").exists())
    {
        println!("cargo:warning=no CUDA/NCCL headers under {}: icpo-dist built without NCCL (scripts/setup-libtorch installs them)", nvidia.display());
        return;
    }
    cc::Build::new()
        .cpp(true)
        .file("csrc/nccl.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .include(&cuda)
        .include(&nccl)
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .opt_level(2)
        .warnings(false)
        .compile("icpo_nccl");
    println!("cargo:rustc-cfg=icpo_nccl");
}
