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
//! Spin, then park: after [`PARK_AFTER`] without a job (far longer than any gap inside a
//! training step, shorter than sampling or evaluation) the helper parks its thread, and the next
//! [`join`] unparks it. A long serial phase then leaves the core free, and on a VM whose two
//! vCPUs are not scheduled together the spinning helper does not hold a vCPU the other thread
//! could use. (The wake-up costs an OS call once per phase, not per join.)
//!
//! Claim, or take it back: the helper must *claim* a posted job (a compare-and-swap) before it
//! runs it, and the posting thread, once its own closure is done, takes back a job nobody has
//! claimed yet and runs it itself. When the helper's vCPU is not running (a busy machine, a VM
//! whose vCPUs are not scheduled together, a helper still waking from its park), the step then
//! runs at one thread's speed instead of waiting a scheduler time slice for the helper. Before
//! this, with another process busy on one of two cores, an ML-1M epoch took 24.5 s on two
//! threads against 3.4 s on one (BENCHMARKS.md). Which thread runs a closure never changes
//! what it computes, so results stay bit-identical.
//!
//! Outside [`with_helper`], and on the helper itself, [`join`] runs both closures on the
//! calling thread: kernels that split their work with it stay correct (and bit-identical,
//! since every split here divides independent work, never a reduction) on any thread.
//!
//! Near or far: two vCPUs are not always two cores next to each other. On the Zen 4 VM of
//! BENCHMARKS.md a cache line goes to the other vCPU and back in 53–64 ns most of the time and
//! in about 310–340 ns in spells that last minutes (the host has put the vCPUs on cores that share no
//! L3); two threads then ran an ML-1M epoch slower than one (3.12M samples/s against 3.37M),
//! since every step moves its dense weights, gradients and rows between the cores.
//! [`round_trip_ns`] measures that trip, [`set_solo`] makes [`join`] run both closures on the
//! calling thread while the helper parks; the CPU step ([`crate::step`]) chooses between them.

use std::cell::{Cell, UnsafeCell};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicUsize, Ordering};
use std::thread::Thread;
use std::time::{Duration, Instant};

const IDLE: u8 = 0;
/// A job is in the slot, claimed by nobody yet.
const POSTED: u8 = 1;
const DONE: u8 = 2;
const QUIT: u8 = 3;
/// The helper has claimed the posted job and is running it.
const RUNNING: u8 = 4;

/// A type-erased pointer to the closure a [`join`] posted; it lives on the poster's stack.
struct Job(*mut (dyn FnMut() + Send));

/// The job slot shared by the posting thread and the helper.
struct Slot {
    state: AtomicU8,
    job: UnsafeCell<Option<Job>>,
    /// Set by the helper just before it parks, cleared when it wakes.
    sleeping: AtomicBool,
    /// The helper's thread, to unpark it.
    helper: OnceLock<Thread>,
}

impl Slot {
    fn new() -> Self {
        Slot {
            state: AtomicU8::new(IDLE),
            job: UnsafeCell::new(None),
            sleeping: AtomicBool::new(false),
            helper: OnceLock::new(),
        }
    }

    /// Sets the state, then wakes the helper if it parked. The two sequentially consistent
    /// accesses pair with the helper's (`sleeping` stored, then `state` loaded, both SeqCst):
    /// either the helper sees the new state before parking, or this sees `sleeping` and unparks.
    fn post(&self, state: u8) {
        self.state.store(state, Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst)
            && let Some(t) = self.helper.get()
        {
            t.unpark();
        }
    }
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
    /// [`set_solo`]: this thread's joins run both closures here, though it has a helper.
    static SOLO: Cell<bool> = const { Cell::new(false) };
}

/// Whether a kernel running on this thread may fan out on the rayon pool. Not inside
/// [`with_helper`]: both cores are already busy there (the helper spins on one), a rayon worker
/// would have to be woken (through the OS, slow next to a kernel) and would then compete with
/// the pair for the cores; and the helper is not a pool thread, so a rayon call from it would
/// block on the pool. There the two-lane step and [`join`] are the parallelism.
pub fn rayon_ok() -> bool {
    !PAIRED.with(Cell::get)
}

/// Polls between yields of the helper's core (and between its looks at the clock).
const SPINS_PER_YIELD: u32 = 256;

/// How long the helper spins without a job before it parks.
pub const PARK_AFTER: Duration = Duration::from_micros(200);

/// A parked helper also wakes by itself this often (a bound on any wake-up it might miss).
const PARK_TIMEOUT: Duration = Duration::from_millis(2);

/// How many times any helper has parked (for tests and diagnostics).
pub static PARKS: AtomicUsize = AtomicUsize::new(0);

/// How many posted jobs the posting thread took back and ran itself (for tests and
/// diagnostics).
pub static TAKEN_BACK: AtomicUsize = AtomicUsize::new(0);

/// Runs `f` on this thread with a helper thread spinning beside it, ready to take the second
/// closure of every [`join`] that `f` makes on this thread. The helper stops when `f` returns
/// (or panics).
pub fn with_helper<R>(f: impl FnOnce() -> R) -> R {
    let slot = Slot::new();
    std::thread::scope(|s| {
        s.spawn(|| {
            PAIRED.with(|c| c.set(true));
            let _ = slot.helper.set(std::thread::current());
            serve(&slot)
        });
        /// Tells the helper to stop and unregisters the slot, also when `f` panics (else the
        /// scope would wait for the helper forever).
        struct Stop<'a>(&'a Slot, *const Slot, bool, bool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                SLOT.with(|c| c.set(self.1));
                PAIRED.with(|c| c.set(self.2));
                SOLO.with(|c| c.set(self.3));
                self.0.post(QUIT);
            }
        }
        let _stop = Stop(
            &slot,
            SLOT.with(|c| c.replace(&slot)),
            PAIRED.with(|c| c.replace(true)),
            SOLO.with(|c| c.replace(false)),
        );
        f()
    })
}

/// The helper's loop: run each posted job, mark it done, until told to quit; park after
/// [`PARK_AFTER`] without a job.
fn serve(slot: &Slot) {
    let mut spins = 0u32;
    let mut idle_since = Instant::now();
    loop {
        match slot.state.load(Ordering::Acquire) {
            POSTED => {
                // Claim it; the poster may have taken it back first.
                if slot.state.compare_exchange(POSTED, RUNNING, Ordering::AcqRel, Ordering::Acquire).is_err() {
                    continue;
                }
                // SAFETY: winning POSTED → RUNNING means the poster has stored the job and will
                // not touch the slot again until it sees DONE.
                let job = unsafe { (*slot.job.get()).take() };
                if let Some(Job(f)) = job {
                    // SAFETY: the closure lives on the poster's stack, and the poster waits for
                    // DONE before that frame ends (see `join`), so it is alive and ours alone.
                    unsafe { (*f)() };
                }
                slot.state.store(DONE, Ordering::Release);
                spins = 0;
                idle_since = Instant::now();
            }
            QUIT => return,
            _ => {
                spins += 1;
                if !spins.is_multiple_of(SPINS_PER_YIELD) {
                    std::hint::spin_loop();
                } else if idle_since.elapsed() < PARK_AFTER {
                    std::thread::yield_now();
                } else {
                    slot.sleeping.store(true, Ordering::SeqCst);
                    let s = slot.state.load(Ordering::SeqCst);
                    if s != POSTED && s != QUIT {
                        PARKS.fetch_add(1, Ordering::Relaxed);
                        std::thread::park_timeout(PARK_TIMEOUT);
                    }
                    slot.sleeping.store(false, Ordering::SeqCst);
                    spins = 0;
                    idle_since = Instant::now();
                }
            }
        }
    }
}

/// Runs `a` and `b` and returns both results: `b` on the helper thread when this thread is
/// inside [`with_helper`] and the helper is free and claims it while `a` runs, otherwise on
/// this thread after `a`. A panic in either is re-raised here after both have finished.
pub fn join<RA: Send, RB: Send>(a: impl FnOnce() -> RA + Send, b: impl FnOnce() -> RB + Send) -> (RA, RB) {
    let slot = if SOLO.with(Cell::get) { std::ptr::null() } else { SLOT.with(Cell::get) };
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
        slot.post(POSTED);
        let ra = catch_unwind(AssertUnwindSafe(a));
        if slot.state.compare_exchange(POSTED, IDLE, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            // Nobody claimed it: take the job back and run it here.
            TAKEN_BACK.fetch_add(1, Ordering::Relaxed);
            // SAFETY: winning POSTED → IDLE means the helper never claimed the job, and it
            // reads the slot only after winning POSTED → RUNNING, which can no longer happen.
            let job = unsafe { (*slot.job.get()).take() };
            if let Some(Job(f)) = job {
                // SAFETY: `f` points at `run_b`, alive in this frame and used by no one else.
                unsafe { (*f)() };
            }
        } else {
            // The helper claimed it: wait for it, yielding now and then in case it shares
            // this core.
            let mut spins = 0u32;
            while slot.state.load(Ordering::Acquire) != DONE {
                spins += 1;
                if spins.is_multiple_of(SPINS_PER_YIELD) {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
            slot.state.store(IDLE, Ordering::Release);
        }
        ra
    };
    match (ra, rb) {
        (Ok(ra), Some(Ok(rb))) => (ra, rb),
        (Err(p), _) | (_, Some(Err(p))) => resume_unwind(p),
        (Ok(_), None) => unreachable!("the helper marks a job done only after running it"),
    }
}

/// Whether [`join`] on this thread can hand work to a helper right now (inside
/// [`with_helper`], not [`set_solo`]).
pub fn helper_active() -> bool {
    has_helper() && !SOLO.with(Cell::get)
}

/// Whether this thread is inside [`with_helper`] (solo or not).
pub fn has_helper() -> bool {
    SLOT.with(|c| !c.get().is_null())
}

/// With `true`, this thread's [`join`]s run both closures here until `set_solo(false)`; the
/// helper, given nothing, parks after [`PARK_AFTER`]. Returns the previous setting. What the
/// closures compute never depends on the thread that runs them, so neither do the results.
/// [`with_helper`] restores the setting it found when it returns.
pub fn set_solo(solo: bool) -> bool {
    SOLO.with(|c| c.replace(solo))
}

/// A cache line of its own for [`round_trip_ns`]'s ball (128 bytes: the line and the
/// neighbour the adjacent-line prefetcher pairs it with).
#[repr(align(128))]
struct Line<A>(A);

/// How long [`round_trip_ns`] waits for the helper's answers in all. A spinning helper answers
/// 64 trips in 4–25 µs and a parked one wakes in about 50 µs; one whose vCPU is not running
/// would hold the caller up to the whole wait, every probe (with 5 ms, a run whose helper's
/// vCPU kept stopping trained at 2.0M samples/s where two threads without probes ran 2.7M).
pub const PROBE_WAIT: Duration = Duration::from_micros(250);

/// Polls between looks at the clock while a probe waits (a look costs about as much as a
/// near round trip).
const POLLS_PER_CLOCK: u32 = 1024;

/// Nanoseconds for a cache line to go from this thread's core to the helper's and back: the
/// least, over `batches` batches of `trips` trips, of a batch's time per trip (the least, so
/// that an interrupt or the helper's wake-up in one batch does not count). `None` outside
/// [`with_helper`], on the helper itself, or when the helper did not answer within
/// [`PROBE_WAIT`] (its vCPU not running). Ignores [`set_solo`]: it is how the CPU step learns
/// whether to leave it.
pub fn round_trip_ns(batches: u32, trips: u32) -> Option<f64> {
    if !has_helper() || batches == 0 || trips == 0 {
        return None;
    }
    let solo = set_solo(false);
    let ball = Line(AtomicU32::new(0));
    // Set by the caller when it is done or gives up: the helper's side then stops at once,
    // also when it runs later (taken back by the caller, or claimed late). A line of its own,
    // so that the caller's other stores do not take it from the helper's cache.
    let gone = Line(AtomicBool::new(false));
    let deadline = Instant::now() + PROBE_WAIT;
    // Waits until the ball reads `want`; false once past the deadline.
    let wait = |want: u32| {
        let mut polls = 0u32;
        while ball.0.load(Ordering::Acquire) != want {
            polls += 1;
            if polls.is_multiple_of(POLLS_PER_CLOCK) && Instant::now() > deadline {
                return false;
            }
            std::hint::spin_loop();
        }
        true
    };
    let (best, ()) = join(
        || {
            // The helper serves the ball at 1; then each trip sends the next odd number and
            // waits for the helper's even answer.
            if !wait(1) {
                gone.0.store(true, Ordering::Release);
                return None;
            }
            let (mut n, mut best) = (1u32, f64::INFINITY);
            for _ in 0..batches {
                let t = Instant::now();
                for _ in 0..trips {
                    ball.0.store(n + 1, Ordering::Release);
                    if !wait(n + 2) {
                        gone.0.store(true, Ordering::Release);
                        return None;
                    }
                    n += 2;
                }
                best = best.min(t.elapsed().as_nanos() as f64 / f64::from(trips));
            }
            gone.0.store(true, Ordering::Release);
            Some(best)
        },
        || {
            if gone.0.load(Ordering::Acquire) {
                return;
            }
            ball.0.store(1, Ordering::Release);
            let mut n = 1u32;
            while !gone.0.load(Ordering::Acquire) {
                if ball.0.load(Ordering::Acquire) == n + 1 {
                    ball.0.store(n + 2, Ordering::Release);
                    n += 2;
                } else {
                    std::hint::spin_loop();
                }
            }
        },
    );
    set_solo(solo);
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spins until `flag` is set (at most a second): a first closure that waits for the second
    /// to start, so the helper surely claims it (else the caller may take it back).
    fn wait_for(flag: &AtomicBool) {
        let t = Instant::now();
        while !flag.load(Ordering::Acquire) && t.elapsed() < Duration::from_secs(1) {
            std::hint::spin_loop();
        }
    }

    /// The thread that runs the second closure of a join whose first waits for it to start
    /// (so a free helper surely claims it).
    fn second_closure_thread() -> std::thread::ThreadId {
        let started = AtomicBool::new(false);
        join(
            || wait_for(&started),
            || {
                started.store(true, Ordering::Release);
                std::thread::current().id()
            },
        )
        .1
    }

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
            let started = AtomicBool::new(false);
            let (r, other) = join(
                || {
                    wait_for(&started);
                    run()
                },
                || {
                    started.store(true, Ordering::Release);
                    std::thread::current().id()
                },
            );
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

    /// After a pause long enough for the helper to park, the next join still runs its second
    /// closure on the helper (the post wakes it), and the halves are right.
    #[test]
    fn a_parked_helper_wakes_for_the_next_join() {
        let before = PARKS.load(Ordering::Relaxed);
        with_helper(|| {
            let me = std::thread::current().id();
            let mut buf = vec![0u32; 64];
            for round in 1..=5u32 {
                std::thread::sleep(PARK_AFTER * 20);
                let (x, y) = buf.split_at_mut(32);
                let started = AtomicBool::new(false);
                let (_, other) = join(
                    || {
                        wait_for(&started);
                        x.iter_mut().for_each(|v| *v += 1)
                    },
                    || {
                        started.store(true, Ordering::Release);
                        y.iter_mut().for_each(|v| *v += 2);
                        std::thread::current().id()
                    },
                );
                assert_ne!(other, me, "the second closure ran on the helper");
                assert_eq!((buf[0], buf[63]), (round, 2 * round));
            }
        });
        assert!(PARKS.load(Ordering::Relaxed) > before, "the helper parked during the pauses");
    }

    /// A job the helper has not claimed by the time the caller's own closure is done (here: the
    /// helper is parked and the caller's closure is empty) is taken back and run by the caller,
    /// with the same result; the helper still serves later joins.
    #[test]
    fn a_job_nobody_claimed_is_taken_back_by_the_caller() {
        with_helper(|| {
            let me = std::thread::current().id();
            let mut taken_back = false;
            for _ in 0..50 {
                std::thread::sleep(PARK_AFTER * 20);
                let before = TAKEN_BACK.load(Ordering::Relaxed);
                let (a, (sum, who)) = join(|| 1u32, || ((1..=100u32).sum::<u32>(), std::thread::current().id()));
                assert_eq!((a, sum), (1, 5050));
                if who == me {
                    assert!(TAKEN_BACK.load(Ordering::Relaxed) > before, "counted");
                    taken_back = true;
                    break;
                }
            }
            assert!(taken_back, "a parked helper is slower to wake than an empty closure: some job was taken back");
            let who = second_closure_thread();
            assert_ne!(who, me, "the helper still takes jobs afterwards");
        });
    }

    /// `set_solo(true)` runs both closures of a join on the caller, and `helper_active` says
    /// so; `set_solo(false)` hands the second to the helper again; `with_helper` clears it.
    #[test]
    fn solo_runs_both_closures_on_the_caller() {
        with_helper(|| {
            let me = std::thread::current().id();
            assert!(!set_solo(true), "off at the start");
            assert!(!helper_active() && has_helper());
            let (a, b) = join(|| std::thread::current().id(), || std::thread::current().id());
            assert_eq!((a, b), (me, me), "solo: both on the caller");
            assert!(set_solo(false));
            assert!(helper_active());
            let who = second_closure_thread();
            assert_ne!(who, me, "the helper takes jobs again");
            set_solo(true);
        });
        assert!(!set_solo(false), "with_helper restored the setting it found");
    }

    /// The probe answers inside `with_helper` only, with a time a core-to-core trip can take
    /// (over 1 ns, under the whole wait), also from a parked helper and in solo mode (which it
    /// leaves as it found); on the helper itself and outside, `None`. (With other tests'
    /// threads busy on both cores the helper may not run within the wait: it is asked again,
    /// up to 200 times.)
    #[test]
    fn round_trip_is_measured_only_with_a_helper() {
        assert_eq!(round_trip_ns(4, 8), None, "no helper");
        with_helper(|| {
            for solo in [false, true] {
                set_solo(solo);
                let mut answers = Vec::new();
                for _ in 0..200 {
                    std::thread::sleep(PARK_AFTER * 20);
                    let ns = round_trip_ns(4, 8);
                    assert_eq!(set_solo(solo), solo, "left as found");
                    answers.extend(ns);
                    if answers.len() == 3 {
                        break;
                    }
                }
                assert!(!answers.is_empty(), "the parked helper answered at least once in 200 tries (solo {solo})");
                for ns in answers {
                    assert!(ns > 1.0 && ns < PROBE_WAIT.as_nanos() as f64, "{ns} ns");
                }
            }
            set_solo(false);
            assert_eq!(round_trip_ns(0, 8), None);
            let (_, on_helper) = join(|| std::thread::sleep(Duration::from_millis(5)), || round_trip_ns(2, 2));
            assert_eq!(on_helper, None, "the helper has no helper");
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
