//! Two threads working one training step together, at microsecond granularity.
//!
//! A training step at batch 256 is about forty kernels of a few microseconds each. Splitting one
//! of them over two cores pays only if handing half of it to the other core costs well under a
//! microsecond. `rayon::join` does not manage that: between two parallel kernels the step runs
//! serial ones for long enough that rayon's idle worker goes to sleep, and waking a sleeping
//! thread goes through the operating system, which costs about as much as the kernel it would
//! help with; a join after such a gap can be slower than running both halves serially
//! (BENCHMARKS.md has the timings).
//!
//! So the training loop runs inside [`with_helper`]: a second thread that *spins* for the
//! whole epoch, polling one job slot, and [`join`] posts the second closure there and runs the
//! first itself. A hand-off is then one cache line going from core to core and back (well
//! under a microsecond), as with OpenMP's active wait policy or PyTorch's intra-op pool. The
//! helper yields its core to the OS scheduler between polls every so often, so a rayon job
//! that needs the core still gets it.
//!
//! Outside [`with_helper`], and on the helper itself, [`join`] runs both closures on the
//! calling thread: kernels that split their work with it stay correct (and bit-identical,
//! since every split here divides independent work, never a reduction) on any thread.

use std::cell::{Cell, UnsafeCell};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicU8, Ordering};

const IDLE: u8 = 0;
const POSTED: u8 = 1;
const DONE: u8 = 2;
const QUIT: u8 = 3;

/// A type-erased pointer to the closure a [`join`] posted; it lives on the poster's stack.
struct Job(*mut (dyn FnMut() + Send));

/// The job slot shared by the posting thread and the helper.
struct Slot {
    state: AtomicU8,
    job: UnsafeCell<Option<Job>>,
}

// SAFETY: `job` is written only by the posting thread while `state` is IDLE (the helper does
// not read it then), and read only by the helper after it observes POSTED (Acquire, pairing
// with the poster's Release store). The closure behind the pointer is `Send`.
unsafe impl Sync for Slot {}

thread_local! {
    /// The slot of the [`with_helper`] this thread is inside, or null.
    static SLOT: Cell<*const Slot> = const { Cell::new(std::ptr::null()) };
    /// Whether this thread is one of a [`with_helper`] pair (the caller or the helper).
    static PAIRED: Cell<bool> = const { Cell::new(false) };
}

/// Whether a kernel running on this thread may fan out on the rayon pool. Not inside
/// [`with_helper`]: both cores are already busy there (the helper spins on one), a rayon worker
/// would have to be woken (through the OS, slow next to a kernel) and would then compete with
/// the pair for the cores; and the helper is not a pool thread, so a rayon call from it would
/// block on the pool. There the two-lane step and [`join`] are the parallelism.
pub fn rayon_ok() -> bool {
    !PAIRED.with(Cell::get)
}

/// Polls between yields of the helper's core.
const SPINS_PER_YIELD: u32 = 256;

/// Runs `f` on this thread with a helper thread spinning beside it, ready to take the second
/// closure of every [`join`] that `f` makes on this thread. The helper stops when `f` returns
/// (or panics).
pub fn with_helper<R>(f: impl FnOnce() -> R) -> R {
    let slot = Slot { state: AtomicU8::new(IDLE), job: UnsafeCell::new(None) };
    std::thread::scope(|s| {
        s.spawn(|| {
            PAIRED.with(|c| c.set(true));
            serve(&slot)
        });
        /// Tells the helper to stop and unregisters the slot, also when `f` panics (else the
        /// scope would wait for the helper forever).
        struct Stop<'a>(&'a Slot, *const Slot, bool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                SLOT.with(|c| c.set(self.1));
                PAIRED.with(|c| c.set(self.2));
                self.0.state.store(QUIT, Ordering::Release);
            }
        }
        let _stop = Stop(&slot, SLOT.with(|c| c.replace(&slot)), PAIRED.with(|c| c.replace(true)));
        f()
    })
}

/// The helper's loop: run each posted job, mark it done, until told to quit.
fn serve(slot: &Slot) {
    let mut spins = 0u32;
    loop {
        match slot.state.load(Ordering::Acquire) {
            POSTED => {
                // SAFETY: POSTED means the poster has stored the job and will not touch the
                // slot again until it sees DONE.
                let job = unsafe { (*slot.job.get()).take() };
                if let Some(Job(f)) = job {
                    // SAFETY: the closure lives on the poster's stack, and the poster waits for
                    // DONE before that frame ends (see `join`), so it is alive and ours alone.
                    unsafe { (*f)() };
                }
                slot.state.store(DONE, Ordering::Release);
                spins = 0;
            }
            QUIT => return,
            _ => {
                spins += 1;
                if spins.is_multiple_of(SPINS_PER_YIELD) {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
        }
    }
}

/// Runs `a` and `b` and returns both results: `b` on the helper thread when this thread is
/// inside [`with_helper`] and the helper is free, otherwise on this thread after `a`. A panic
/// in either is re-raised here after both have finished.
pub fn join<RA: Send, RB: Send>(a: impl FnOnce() -> RA + Send, b: impl FnOnce() -> RB + Send) -> (RA, RB) {
    let slot = SLOT.with(Cell::get);
    // SAFETY: a non-null SLOT points at the `Slot` of the `with_helper` call this thread is
    // inside; it outlives that call, and the pointer is reset before the call returns.
    let slot = match unsafe { slot.as_ref() } {
        Some(s) if s.state.load(Ordering::Acquire) == IDLE => s,
        // No helper, or it is busy with an outer join's job (a nested join): run here.
        _ => return (a(), b()),
    };
    let mut rb: Option<std::thread::Result<RB>> = None;
    let ra = {
        let mut b = Some(b);
        let mut run_b = || {
            if let Some(b) = b.take() {
                rb = Some(catch_unwind(AssertUnwindSafe(b)));
            }
        };
        let ptr: *mut (dyn FnMut() + Send + '_) = &mut run_b;
        // SAFETY: only the lifetime is erased (same fat-pointer layout). The pointer is used
        // by the helper between our POSTED store and its DONE store, and we wait for DONE
        // below before `run_b` (and what it borrows) goes out of scope; `a` cannot unwind past
        // the wait because it runs under `catch_unwind`.
        let ptr: *mut (dyn FnMut() + Send + 'static) = unsafe { std::mem::transmute(ptr) };
        // SAFETY: the state is IDLE, so the helper is not reading the job slot.
        unsafe { *slot.job.get() = Some(Job(ptr)) };
        slot.state.store(POSTED, Ordering::Release);
        let ra = catch_unwind(AssertUnwindSafe(a));
        while slot.state.load(Ordering::Acquire) != DONE {
            std::hint::spin_loop();
        }
        slot.state.store(IDLE, Ordering::Release);
        ra
    };
    match (ra, rb) {
        (Ok(ra), Some(Ok(rb))) => (ra, rb),
        (Err(p), _) | (_, Some(Err(p))) => resume_unwind(p),
        (Ok(_), None) => unreachable!("the helper marks a job done only after running it"),
    }
}

/// Whether [`join`] on this thread can hand work to a helper right now.
pub fn helper_active() -> bool {
    SLOT.with(|c| !c.get().is_null())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_runs_both_sides_with_and_without_a_helper() {
        let run = || {
            let v: Vec<u64> = (0..1000).collect();
            let (lo, hi) = v.split_at(500);
            join(|| lo.iter().sum::<u64>(), || hi.iter().sum::<u64>())
        };
        assert!(!helper_active() && rayon_ok());
        assert_eq!(run(), (124_750, 374_750));
        let on_helper = with_helper(|| {
            assert!(helper_active() && !rayon_ok());
            assert!(!join(|| 0, rayon_ok).1, "no rayon on the helper either");
            let me = std::thread::current().id();
            let (r, other) = join(run, || std::thread::current().id());
            assert_eq!(r, (124_750, 374_750), "a nested join runs on the caller");
            other != me
        });
        assert!(on_helper, "inside with_helper, the second closure runs on the helper thread");
        assert!(!helper_active() && rayon_ok(), "the helper is unregistered afterwards");
    }

    #[test]
    fn many_joins_write_disjoint_halves() {
        with_helper(|| {
            let mut buf = vec![0u32; 64];
            for round in 0..10_000u32 {
                let (x, y) = buf.split_at_mut(32);
                join(|| x.iter_mut().for_each(|v| *v += 1), || y.iter_mut().for_each(|v| *v += 2));
                assert_eq!((buf[0], buf[63]), (round + 1, 2 * (round + 1)));
            }
        });
    }

    #[test]
    fn a_panic_on_the_helper_reaches_the_caller_and_the_helper_stops() {
        let r = catch_unwind(|| with_helper(|| join(|| 1, || -> u32 { panic!("boom") })));
        assert!(r.is_err());
        // And with_helper still works afterwards.
        assert_eq!(with_helper(|| join(|| 1, || 2)), (1, 2));
    }
}
