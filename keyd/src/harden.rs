//! Process hardening: no core dumps, not dumpable (no ptrace by peers, no /proc/PID/mem),
//! and key memory locked out of swap.

/// Turns off core dumps and makes the process non-dumpable. Call first thing.
pub fn harden_process() -> Result<(), String> {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with valid arguments.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) } != 0 {
        return Err(format!(
            "setrlimit(RLIMIT_CORE, 0): {}",
            std::io::Error::last_os_error()
        ));
    }
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(format!(
            "prctl(PR_SET_DUMPABLE, 0): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// A heap value whose memory is locked (kept out of swap) for its lifetime.
pub struct Locked<T> {
    value: Box<T>,
    locked: bool,
}

impl<T> Locked<T> {
    pub fn new(value: T) -> Self {
        let value = Box::new(value);
        let ptr = (&*value as *const T).cast::<libc::c_void>();
        // SAFETY: the range is the Box's own allocation.
        let locked = unsafe { libc::mlock(ptr, std::mem::size_of::<T>()) } == 0;
        Locked { value, locked }
    }
    pub fn is_locked(&self) -> bool {
        self.locked
    }
}

impl<T> std::ops::Deref for Locked<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> Drop for Locked<T> {
    fn drop(&mut self) {
        if self.locked {
            let ptr = (&*self.value as *const T).cast::<libc::c_void>();
            // SAFETY: unlocking the range locked in `new`. The value itself zeroizes on drop.
            unsafe { libc::munlock(ptr, std::mem::size_of::<T>()) };
        }
    }
}
