//! c10d's TCPStore through `csrc/store.cpp`: the rendezvous store torchrun's processes share.

use std::time::Duration;

use crate::error::Result;

/// What a wait for a key came to.
#[cfg_attr(not(icpo_c10d), allow(dead_code))] // built without c10d: never made
pub(crate) enum Got {
    /// The key's value.
    Value(Vec<u8>),
    /// The key did not appear within the timeout.
    TimedOut,
}

#[cfg(icpo_c10d)]
#[allow(unsafe_code)] // the C interface of csrc/store.cpp; every call is checked there
mod ffi {
    use std::ffi::{c_char, c_void, CStr, CString};
    use std::ptr;
    use std::time::Duration;

    use super::Got;
    use crate::error::{DistError, Result};

    extern "C" {
        fn icpo_dist_free(p: *mut c_void);
        fn icpo_store_open(
            host: *const c_char,
            port: i32,
            is_server: i32,
            world_size: i32,
            timeout_ms: i64,
            out: *mut *mut c_void,
        ) -> *mut c_char;
        fn icpo_store_close(store: *mut c_void);
        fn icpo_store_set(
            store: *mut c_void,
            key: *const c_char,
            data: *const u8,
            len: usize,
        ) -> *mut c_char;
        fn icpo_store_get(
            store: *mut c_void,
            key: *const c_char,
            timeout_ms: i64,
            data: *mut *mut u8,
            len: *mut usize,
            timed_out: *mut i32,
        ) -> *mut c_char;
        fn icpo_store_delete(store: *mut c_void, key: *const c_char) -> *mut c_char;
    }

    pub(crate) fn check(err: *mut c_char) -> Result<()> {
        if err.is_null() {
            return Ok(());
        }
        // SAFETY: a non-null return is a NUL-terminated message from malloc, freed once here.
        let msg = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
        unsafe { icpo_dist_free(err.cast()) };
        Err(DistError::Store(msg))
    }

    fn cstr(s: &str) -> Result<CString> {
        CString::new(s).map_err(|_| DistError::Store(format!("`{s}` holds a NUL byte")))
    }

    fn millis(d: Duration) -> i64 {
        i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
    }

    /// An open store; closed on drop.
    pub(crate) struct Handle(pub(crate) *mut c_void);

    // SAFETY: TCPStore is used from one thread at a time here (the owner holds `&mut` or the
    // group's lock), and c10d's TCPStore client itself serialises its socket.
    unsafe impl Send for Handle {}
    unsafe impl Sync for Handle {}

    impl Handle {
        pub(crate) fn open(
            host: &str,
            port: u16,
            server: bool,
            world: usize,
            timeout: Duration,
        ) -> Result<Self> {
            let host = cstr(host)?;
            let mut out = ptr::null_mut();
            let world = i32::try_from(world)
                .map_err(|_| DistError::Store("world size too large".into()))?;
            // SAFETY: `host` and `out` outlive the call.
            check(unsafe {
                icpo_store_open(
                    host.as_ptr(),
                    i32::from(port),
                    i32::from(server),
                    world,
                    millis(timeout),
                    &mut out,
                )
            })?;
            if out.is_null() {
                return Err(DistError::Store("the store did not open".into()));
            }
            Ok(Handle(out))
        }

        pub(crate) fn set(&self, key: &str, data: &[u8]) -> Result<()> {
            let k = cstr(key)?;
            // SAFETY: the handle is open; `k` and `data` outlive the call.
            check(unsafe { icpo_store_set(self.0, k.as_ptr(), data.as_ptr(), data.len()) })
        }

        pub(crate) fn get(&self, key: &str, timeout: Duration) -> Result<Got> {
            let k = cstr(key)?;
            let (mut data, mut len, mut timed_out) = (ptr::null_mut(), 0usize, 0i32);
            // SAFETY: as above; a returned buffer is malloc'd and freed once below.
            let err = unsafe {
                icpo_store_get(
                    self.0,
                    k.as_ptr(),
                    millis(timeout),
                    &mut data,
                    &mut len,
                    &mut timed_out,
                )
            };
            if timed_out != 0 {
                let _ = check(err);
                return Ok(Got::TimedOut);
            }
            check(err)?;
            if data.is_null() {
                return Err(DistError::Store(format!("no value read for {key}")));
            }
            // SAFETY: `data` holds `len` bytes.
            let v = unsafe { std::slice::from_raw_parts(data, len) }.to_vec();
            unsafe { icpo_dist_free(data.cast()) };
            Ok(Got::Value(v))
        }

        pub(crate) fn delete(&self, key: &str) -> Result<()> {
            let k = cstr(key)?;
            // SAFETY: as above.
            check(unsafe { icpo_store_delete(self.0, k.as_ptr()) })
        }
    }

    impl Drop for Handle {
        fn drop(&mut self) {
            // SAFETY: opened by icpo_store_open, closed once.
            unsafe { icpo_store_close(self.0) }
        }
    }
}

#[cfg(not(icpo_c10d))]
mod ffi {
    use std::time::Duration;

    use super::Got;
    use crate::error::{DistError, Result};

    pub(crate) struct Handle;

    fn unavailable<T>() -> Result<T> {
        Err(DistError::Store("built without libtorch's c10d headers: world size 1 only".into()))
    }

    impl Handle {
        pub(crate) fn open(_: &str, _: u16, _: bool, _: usize, _: Duration) -> Result<Self> {
            unavailable()
        }
        pub(crate) fn set(&self, _: &str, _: &[u8]) -> Result<()> {
            unavailable()
        }
        pub(crate) fn get(&self, _: &str, _: Duration) -> Result<Got> {
            unavailable()
        }
        pub(crate) fn delete(&self, _: &str) -> Result<()> {
            unavailable()
        }
    }
}

/// An error message from the C interface (null: success), for the NCCL shim.
#[cfg(icpo_nccl)]
pub(crate) fn ffi_check(err: *mut std::ffi::c_char) -> Result<()> {
    ffi::check(err)
}

/// A connection to the job's TCPStore (rank 0 serves it).
pub struct TcpStore {
    handle: ffi::Handle,
}

impl std::fmt::Debug for TcpStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TcpStore")
    }
}

impl TcpStore {
    /// Serves (`server`) or joins the store at `host:port` for `world` processes, waiting up to
    /// `timeout` for all of them (server) or for the server (client).
    pub fn open(
        host: &str,
        port: u16,
        server: bool,
        world: usize,
        timeout: Duration,
    ) -> Result<Self> {
        Ok(TcpStore { handle: ffi::Handle::open(host, port, server, world, timeout)? })
    }

    /// Sets `key`.
    pub fn set(&self, key: &str, data: &[u8]) -> Result<()> {
        self.handle.set(key, data)
    }

    /// The value of `key` once it is set, waiting up to `timeout`.
    pub(crate) fn get(&self, key: &str, timeout: Duration) -> Result<Got> {
        self.handle.get(key, timeout)
    }

    /// Deletes `key` (no error when absent).
    pub fn delete(&self, key: &str) -> Result<()> {
        self.handle.delete(key)
    }

    /// The C++ store, for the NCCL process group made over it.
    #[cfg(icpo_nccl)]
    pub(crate) fn raw(&self) -> *mut std::ffi::c_void {
        self.handle.0
    }
}
