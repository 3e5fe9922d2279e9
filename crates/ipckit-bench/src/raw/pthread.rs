//! A process-shared, robust pthread mutex: the C library's answer to a cross-process mutex that
//! survives its owner's death (`PTHREAD_PROCESS_SHARED` + `PTHREAD_MUTEX_ROBUST`), the baseline
//! for ipckit's named mutex.

use std::io;

use super::page::{PAGE, ShmPage};

/// A robust mutex living in a [`ShmPage`] (which must outlive it).
#[derive(Debug)]
pub struct RobustMutex {
    m: *mut libc::pthread_mutex_t,
}

// SAFETY: a process-shared pthread mutex may be used from any thread of any process.
unsafe impl Send for RobustMutex {}
// SAFETY: as above.
unsafe impl Sync for RobustMutex {}

fn check(rc: libc::c_int, what: &str) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{what}: {}",
            io::Error::from_raw_os_error(rc)
        )))
    }
}

impl RobustMutex {
    /// Initialises a mutex in `page` (at its object area).
    pub fn init_in(page: &ShmPage) -> io::Result<RobustMutex> {
        const { assert!(64 + size_of::<libc::pthread_mutex_t>() <= PAGE) };
        let m = page.object_ptr().cast::<libc::pthread_mutex_t>();
        // SAFETY: `attr` is initialised by pthread_mutexattr_init before use and destroyed after;
        // `m` points to suitably aligned (page offset 64), writable shared memory that nothing
        // else uses yet.
        unsafe {
            let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
            check(
                libc::pthread_mutexattr_init(&mut attr),
                "pthread_mutexattr_init",
            )?;
            check(
                libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED),
                "setpshared",
            )?;
            check(
                libc::pthread_mutexattr_setrobust(&mut attr, libc::PTHREAD_MUTEX_ROBUST),
                "setrobust",
            )?;
            let rc = libc::pthread_mutex_init(m, &attr);
            libc::pthread_mutexattr_destroy(&mut attr);
            check(rc, "pthread_mutex_init")?;
        }
        Ok(RobustMutex { m })
    }

    /// Uses the mutex another process initialised in `page`.
    pub fn attach(page: &ShmPage) -> RobustMutex {
        RobustMutex {
            m: page.object_ptr().cast(),
        }
    }

    /// Locks; an owner's death (EOWNERDEAD) is accepted and the mutex made consistent.
    pub fn lock(&self) {
        // SAFETY: `m` is an initialised process-shared mutex in a live mapping.
        let rc = unsafe { libc::pthread_mutex_lock(self.m) };
        if rc == libc::EOWNERDEAD {
            // SAFETY: as above; we own it now.
            unsafe { libc::pthread_mutex_consistent(self.m) };
        }
    }

    /// Unlocks.
    pub fn unlock(&self) {
        // SAFETY: `m` is initialised and owned by this thread (locked by `lock`).
        unsafe { libc::pthread_mutex_unlock(self.m) };
    }
}
