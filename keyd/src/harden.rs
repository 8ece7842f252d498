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

/// A heap value whose memory is locked (kept out of swap) for its lifetime and wiped when it
/// is dropped, after the value's own drop: whatever the value's type does or forgets to do
/// (polyval 0.6 never wipes AES-GCM's GHASH key), its bytes do not outlive it.
pub struct Locked<T> {
    value: std::mem::ManuallyDrop<Box<T>>,
    locked: bool,
}

impl<T> Locked<T> {
    pub fn new(value: T) -> Self {
        let value = Box::new(value);
        let ptr = (&*value as *const T).cast::<libc::c_void>();
        // SAFETY: the range is the Box's own allocation.
        let locked = unsafe { libc::mlock(ptr, std::mem::size_of::<T>()) } == 0;
        Locked {
            value: std::mem::ManuallyDrop::new(value),
            locked,
        }
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
        // SAFETY: the box is taken once, here; the value is dropped in place, then its
        // bytes (dead now, still our allocation) are overwritten before the box is freed
        // without running T's drop again (`Box<MaybeUninit<T>>`).
        unsafe {
            let boxed = std::mem::ManuallyDrop::take(&mut self.value);
            let raw = Box::into_raw(boxed);
            std::ptr::drop_in_place(raw);
            wipe(raw.cast::<u8>(), std::mem::size_of::<T>());
            if self.locked {
                libc::munlock(raw.cast::<libc::c_void>(), std::mem::size_of::<T>());
            }
            drop(Box::from_raw(raw.cast::<std::mem::MaybeUninit<T>>()));
        }
    }
}

/// Overwrites `len` bytes at `ptr` with zeros in a way the compiler keeps.
///
/// # Safety
/// `ptr` must be valid for writes of `len` bytes.
unsafe fn wipe(ptr: *mut u8, len: usize) {
    for i in 0..len {
        // SAFETY: within the `len` bytes the caller vouches for.
        unsafe { std::ptr::write_volatile(ptr.add(i), 0) };
    }
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wipe_zeroes_every_byte() {
        let mut bytes = [0xabu8; 48];
        // SAFETY: a local buffer of that size.
        unsafe { wipe(bytes.as_mut_ptr(), bytes.len()) };
        assert_eq!(bytes, [0u8; 48]);
    }

    /// The value's own drop runs exactly once, before the wipe.
    #[test]
    fn locked_values_are_dropped_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        struct Counted([u8; 32]);
        impl Drop for Counted {
            fn drop(&mut self) {
                DROPS.fetch_add(1, Ordering::SeqCst);
            }
        }
        let locked = Locked::new(Counted([7; 32]));
        assert_eq!(locked.0, [7; 32]);
        drop(locked);
        assert_eq!(DROPS.load(Ordering::SeqCst), 1);
    }
}
