//! The multithread suite (`OfxMultiThreadSuiteV1`): host thread pools and host mutexes.
use crate::error::{Error, Result, Status};
use crate::host::{func, host};
use openfx::sys::image_effect_v1::multi_thread::{OfxMultiThreadSuiteV1, OfxMutexHandle};
use std::ffi::{c_uint, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

fn suite() -> Result<&'static OfxMultiThreadSuiteV1> {
    host()?.multithread.ok_or(Error::MissingSuite {
        name: "OfxMultiThreadSuite",
        version: 1,
    })
}

/// Number of CPUs the host lets plug-ins use.
pub fn num_cpus() -> Result<u32> {
    let f = func(suite()?.multiThreadNumCPUs, "multiThreadNumCPUs")?;
    let mut n: c_uint = 0;
    // SAFETY: valid out-pointer.
    Status::check(unsafe { f(&mut n) }, "multiThreadNumCPUs")?;
    Ok(n)
}

/// Index of the calling thread inside a [`run`] call.
pub fn thread_index() -> Result<u32> {
    let f = func(suite()?.multiThreadIndex, "multiThreadIndex")?;
    let mut n: c_uint = 0;
    // SAFETY: valid out-pointer.
    Status::check(unsafe { f(&mut n) }, "multiThreadIndex")?;
    Ok(n)
}

/// Whether the caller is a thread spawned by [`run`].
pub fn is_spawned_thread() -> Result<bool> {
    let f = func(
        suite()?.multiThreadIsSpawnedThread,
        "multiThreadIsSpawnedThread",
    )?;
    // SAFETY: plain call.
    Ok(unsafe { f() } != 0)
}

struct Job<'a> {
    work: &'a (dyn Fn(u32, u32) + Sync),
    panicked: std::sync::atomic::AtomicBool,
}

unsafe extern "C" fn trampoline(index: c_uint, max: c_uint, arg: *mut c_void) {
    // SAFETY: `arg` is the `Job` that `run` keeps alive until `multiThread` returns.
    let job = unsafe { &*arg.cast::<Job<'_>>() };
    // A panic must not unwind into the host's thread pool.
    if catch_unwind(AssertUnwindSafe(|| (job.work)(index, max))).is_err() {
        job.panicked
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Run `work(index, count)` on `threads` host threads and wait for all of them. A panic in
/// `work` is caught and reported as `kOfxStatFailed`.
pub fn run(threads: u32, work: &(dyn Fn(u32, u32) + Sync)) -> Result<()> {
    let f = func(suite()?.multiThread, "multiThread")?;
    let job = Job {
        work,
        panicked: std::sync::atomic::AtomicBool::new(false),
    };
    // SAFETY: `job` outlives the call, which returns only after all threads finished.
    let raw = unsafe {
        f(
            Some(trampoline),
            threads,
            (&job as *const Job<'_>).cast_mut().cast(),
        )
    };
    Status::check(raw, "multiThread")?;
    if job.panicked.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(Error::Status {
            call: "multiThread worker",
            status: Status::Failed,
        });
    }
    Ok(())
}

/// A host mutex, destroyed on drop.
#[derive(Debug)]
pub struct HostMutex {
    handle: OfxMutexHandle,
}

// SAFETY: a host mutex exists to be shared between threads.
unsafe impl Send for HostMutex {}
unsafe impl Sync for HostMutex {}

impl HostMutex {
    /// Create a mutex with an initial lock count.
    pub fn new(lock_count: i32) -> Result<Self> {
        let f = func(suite()?.mutexCreate, "mutexCreate")?;
        let mut h: OfxMutexHandle = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        Status::check(unsafe { f(&mut h, lock_count) }, "mutexCreate")?;
        Ok(Self { handle: h })
    }

    /// Lock (blocking); the returned guard unlocks on drop.
    pub fn lock(&self) -> Result<HostMutexGuard<'_>> {
        let f = func(suite()?.mutexLock, "mutexLock")?;
        // SAFETY: a handle from mutexCreate.
        Status::check(unsafe { f(self.handle) }, "mutexLock")?;
        Ok(HostMutexGuard { mutex: self })
    }

    /// Try to lock without blocking; `Ok(None)` when it is held elsewhere.
    pub fn try_lock(&self) -> Result<Option<HostMutexGuard<'_>>> {
        let f = func(suite()?.mutexTryLock, "mutexTryLock")?;
        // SAFETY: a handle from mutexCreate.
        match Status::from_raw(unsafe { f(self.handle) }) {
            Status::Ok => Ok(Some(HostMutexGuard { mutex: self })),
            Status::Failed => Ok(None),
            status => Err(Error::Status {
                call: "mutexTryLock",
                status,
            }),
        }
    }
}

impl Drop for HostMutex {
    fn drop(&mut self) {
        if let Ok(Some(f)) = suite().map(|s| s.mutexDestroy) {
            // SAFETY: destroys the mutex this value created, once.
            unsafe { f(self.handle) };
        }
    }
}

/// A held [`HostMutex`]; unlocks on drop.
#[derive(Debug)]
pub struct HostMutexGuard<'a> {
    mutex: &'a HostMutex,
}

impl Drop for HostMutexGuard<'_> {
    fn drop(&mut self) {
        if let Ok(Some(f)) = suite().map(|s| s.mutexUnLock) {
            // SAFETY: unlocks the lock this guard holds.
            unsafe { f(self.mutex.handle) };
        }
    }
}
