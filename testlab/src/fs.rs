//! Directory and bpffs guards.

use std::ffi::CString;
use std::path::{Path, PathBuf};

/// A directory removed (with everything in it) on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Create `path` (it must not exist yet), world-readable (0755) so that
    /// tests may run copies of binaries in it as another user.
    #[track_caller]
    pub fn create(path: PathBuf) -> TempDir {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir { path }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Copy the executable `src` to `dst`, mode 0755, in a child process
/// (`install`), so that `dst` can be executed at once. Copied in this
/// process, the file's write descriptor would be inherited by any child
/// another test thread forks meanwhile, and held open until that child
/// execs: exec of `dst` then fails with ETXTBSY ("Text file busy"), as
/// refusals.rs did once in a whole-suite run.
#[track_caller]
pub fn copy_executable(src: &Path, dst: &Path) {
    let st = std::process::Command::new("install")
        .args(["-m", "0755"])
        .arg(src)
        .arg(dst)
        .status()
        .unwrap_or_else(|e| panic!("cannot run install: {e}"));
    assert!(
        st.success(),
        "install {} {}: {st}",
        src.display(),
        dst.display()
    );
}

/// A private bpffs instance mounted on a directory of our own (outside
/// `/sys`, which `ip netns exec` replaces), unmounted and removed on drop.
/// Every `mount -t bpf` is a fresh instance, so the pins of one lab never
/// meet another's, and unmounting drops them all.
#[derive(Debug)]
pub struct Bpffs {
    path: PathBuf,
}

impl Bpffs {
    /// Mount a new bpffs on `path` (created; it must not exist yet).
    #[track_caller]
    pub fn mount(path: PathBuf) -> Bpffs {
        std::fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        let fs = Bpffs { path };
        let target = CString::new(fs.path.as_os_str().as_encoded_bytes())
            .unwrap_or_else(|_| panic!("NUL in {}", fs.path.display()));
        let bpf = c"bpf";
        // SAFETY: valid NUL-terminated strings, no data argument.
        let rc = unsafe {
            libc::mount(
                bpf.as_ptr(),
                target.as_ptr(),
                bpf.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            panic!(
                "mount -t bpf on {}: {}",
                fs.path.display(),
                std::io::Error::last_os_error()
            );
        }
        fs
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        if let Ok(target) = CString::new(self.path.as_os_str().as_encoded_bytes()) {
            // SAFETY: valid NUL-terminated path. Lazy: a process still in a
            // copy of this mount namespace must not keep it busy here.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}
