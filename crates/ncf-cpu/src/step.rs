//! The CPU's fast training step: two lanes side by side on two cores.
//!
//! The reference step ([`ncf_model::train_step`]) runs the model's forward and backward once
//! over the whole batch. At batch 256 that is about forty kernels of 1–20 µs each, too small
//! to split one by one across cores. So this step splits the *batch*: the halves of an even
//! batch run forward, loss and backward side by side, lane 0 on the calling thread and lane 1
//! on the spinning helper of [`crate::team`], each with its own activations (and lane 1 with
//! its own dense gradients). Then the optimizer's two halves run side by side
//! ([`ncf_model::Optimizer::step_halves_after`], [`ncf_model::optim::half_of`]): the users'
//! tables and some dense tensors on one thread, the items' tables and the other dense tensors
//! on the other. Each half first sums its side's rows' gradients and adds lane 1's dense
//! gradients into lane 0's for the tensors it updates, then updates them, with no join between
//! the sums and the update (each half only reads what it wrote itself). Where a side's tables
//! are all lazy Adam, the rows are summed into a compact `(K, D)` gradient over the batch's `K`
//! distinct ids, which the update reads (`compact_tables`); otherwise into the tables'
//! gradients, as the reference does.
//!
//! ## What it gives, against the reference
//!
//! Each lane's loss is the mean over its `h` rows, so the batch's mean is their average and
//! `∂L/∂z = (σ(z) − y)/h · ½`: scaling by ½ is exact, so the logits' gradients are bit for bit
//! those of the reference step. So are the per-row gradients and the embedding gradients (lane
//! 0's rows are scattered first, then lane 1's: the batch's row order), and every optimizer
//! update. Only the dense weights' and biases' gradients differ in rounding: they are summed
//! per half, then added. The split depends on the batch alone, never on the thread count.
//! MF (no head: too little work per row to share), odd batches and batches under
//! [`MIN_LANE_BATCH`] rows run the reference forward and backward.
//! `tests` below hold the step to the reference.
//!
//! ## Where the time goes
//!
//! With `NCF_STEP_TIMES=1` ([`STEP_TIMES_ENV`]) the step sums the wall time of its two
//! phases (the lanes' forward and backward; the scatter with the optimizer) and
//! the time each phase's two halves were busy, and `ncf train` prints them after each epoch:
//! what a profiler cannot show, since it counts a thread's wait for the other as time spent.

use crate::backend::CpuBackend;
use crate::lane::{CpuLane, check_rows};
use crate::ops::embedding::{compact_slots, embedding_backward_compact};
use crate::ops::gemm::CpuFloat;
use crate::ops::optim::adam_step_rows_compact;
use crate::team;
use ncf_core::OptimKind;
use ncf_core::{Backend, Result};
use ncf_model::params::{SideTables, Tensor};
use ncf_model::split::{LaneActs, LaneParts, lane_parts};
use ncf_model::{
    AnyModel, Batch, FastStep, Fork, GmfActs, HalfGrads, IdSource, MlpActs, NeuMfActs, Optimizer, ParamSet, PhaseTime,
    Role, StepScratch, TableStep,
};
use std::time::{Duration, Instant};

/// Below this many rows a batch is not split into lanes: each half would be too small to pay
/// for the hand-off.
pub const MIN_LANE_BATCH: usize = 64;

/// One lane's rows (copied out of the batch so each lane reads from the start of a buffer),
/// its `∂L/∂logits` and its loss accumulator.
struct Lane<T> {
    users: Vec<u32>,
    items: Vec<u32>,
    labels: Vec<T>,
    dlogits: Vec<T>,
    loss: Vec<T>,
}

/// Lane 1's activations and dense gradients, made the first time a model splits. Built once
/// per run, so the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Second<T: CpuFloat> {
    None,
    Gmf(GmfActs<CpuBackend<T>>, ParamSet<CpuBackend<T>>),
    Mlp(MlpActs<CpuBackend<T>>, ParamSet<CpuBackend<T>>),
    NeuMf(NeuMfActs<CpuBackend<T>>, ParamSet<CpuBackend<T>>),
}

/// The environment variable that keeps every step on two threads (`NCF_PACE=fixed`), turning
/// [`Pace`]'s choice off.
pub const PACE_ENV: &str = "NCF_PACE";

/// Chooses whether a step's halves run on two threads or both on the calling thread
/// ([`team::set_solo`]). Two threads are the rule; but on a VM whose two vCPUs the host has put
/// on cores far apart (no shared L3: a cache line's round trip about 310–340 ns instead of 53–64 ns
/// on the Zen 4 VM of BENCHMARKS.md) every step's exchange of weights, gradients and rows
/// between the cores costs more than the second core gives: two threads ran an ML-1M epoch at
/// 3.12M samples/s where one ran 3.37M. The results are the same bits either way (the lanes
/// and the optimizer's halves compute the same on whichever thread runs them), so only the
/// speed is at stake.
///
/// Every [`Pace::PROBE_EVERY`] steps it measures the round trip ([`team::round_trip_ns`]: 64
/// trips, about 4 µs when near): *far* when over [`Pace::FAR_NS`] or unanswered within
/// [`team::PROBE_WAIT`] (the helper's vCPU not running), else *near*. Near at the first probe,
/// the steps stay on two threads. Far at the first probe, and when two probes in a row
/// disagree with the last choice's, a trial runs [`Pace::WARM`] +
/// [`Pace::TRIAL`] steps on one thread, then as many on two, timing each of the last `TRIAL`
/// of each. The first `WARM` move the tables' rows into the caches of the cores that now
/// update them: on ML-1M a step touches about 4% of the users and 6% of the items, so 96 steps
/// reach about 98% of the rows; with 32, two threads far apart timed about 6% faster in the
/// trial than over the epoch that followed (the items still in the caller's cache from the
/// steps on one thread), and the trial chose them where one thread was faster. The means over
/// all but the [`Pace::TRIM`] slowest steps of each (so that an interrupt in a step does not
/// decide) are compared: far, two threads must be faster by more than [`Pace::CLOSE`] to be
/// kept; near, one thread must be. The means alone were not enough: far apart the two stay
/// within 5–10% of each other, the trial's pick of two threads more than once ran its epoch
/// slower than one thread would have (3.22M samples/s against 3.37M), and one-thread runs with
/// the cores far apart were faster than the two-thread runs beside them or level with them
/// (3.19–3.30M against 3.16–3.22M), never clearly slower. Two threads
/// whose steps have taken twice as long as the one-thread half's are cut short (a helper
/// whose vCPU stops mid-step makes the step wait a scheduler slice: 1–2 ms).
///
/// A close call is put to trial again after [`Pace::RECHECK`] probes, twice as many after
/// each recheck that keeps the choice (up to [`Pace::RECHECK_MAX`]: far apart, with every
/// close call rechecked after 16 probes, the trials and the moves of the tables' rows after
/// them kept the steps about 7% slower than one thread alone); a clear one (near: 40 µs
/// a step on two threads, 71 µs on one) is not, so a machine whose cores stay near runs no
/// trial at all, only the probes (about 1 ms per ML-1M epoch). Asking for two probes in a row
/// keeps a busy machine, whose probes alternate between answered and not, from running trial
/// after trial (which made an epoch 1.5M samples/s where two threads throughout ran 2.6M,
/// before it was asked).
struct Pace {
    adaptive: bool,
    /// `NCF_PACE=trace`: each trial's times and choice go to stderr.
    trace: bool,
    /// The current step runs on the calling thread alone.
    solo: bool,
    /// Steps before the next probe.
    until_probe: u32,
    /// Whether the cores were far apart at the last choice; `None` before the first.
    far: Option<bool>,
    /// Probes in a row that disagree with `far`.
    disagree: u32,
    /// Probes since the last choice.
    probes: u32,
    /// The last choice was a close call ([`Pace::CLOSE`]).
    close: bool,
    /// Probes before a close call or a choice of one thread is tried again: [`Pace::RECHECK`],
    /// doubled (up to [`Pace::RECHECK_MAX`]) each time a recheck keeps the choice.
    recheck: u32,
    /// The trial under way.
    trial: Option<Trial>,
    /// The last probe's round trip (ns; infinite when the helper did not answer).
    last_rt: Option<f64>,
    step_start: Instant,
    /// `trace`: probes, unanswered probes, and seconds spent probing since the last report.
    probe_stats: [f64; 3],
    /// Steps run on one thread by choice since the last [`Pace::take`].
    solo_steps: u64,
}

/// A [`Pace`] trial under way: the round trip that started it, the choice before it, its
/// steps so far, their seconds on one thread and on two (warm-up included), and each timed
/// step's seconds on one thread, then on two.
struct Trial {
    rt: f64,
    was_solo: bool,
    steps: usize,
    total: [f64; 2],
    one: Vec<f64>,
    two: Vec<f64>,
}

impl Pace {
    const PROBE_EVERY: u32 = 128;
    /// Steps before the first probe: the first steps fault in their buffers.
    const FIRST_PROBE: u32 = 64;
    const WARM: usize = 96;
    const TRIAL: usize = 48;
    const TRIM: usize = 6;
    const CLOSE: f64 = 0.15;
    const FAR_NS: f64 = 200.0;
    const RECHECK: u32 = 16;
    const RECHECK_MAX: u32 = 256;

    fn new(adaptive: bool) -> Pace {
        Pace {
            adaptive,
            trace: adaptive && std::env::var(PACE_ENV).is_ok_and(|v| v.trim() == "trace"),
            solo: false,
            until_probe: Self::FIRST_PROBE,
            far: None,
            disagree: 0,
            probes: 0,
            close: false,
            recheck: Self::RECHECK,
            trial: None,
            last_rt: None,
            step_start: Instant::now(),
            probe_stats: [0.0; 3],
            solo_steps: 0,
        }
    }

    /// At a step's start: whether it runs on one thread (probing first when due).
    fn begin(&mut self) -> bool {
        if !self.adaptive || !team::has_helper() {
            return false;
        }
        if self.trial.is_none() {
            if self.until_probe > 0 {
                self.until_probe -= 1;
            } else {
                self.until_probe = Self::PROBE_EVERY;
                let t = Instant::now();
                let rt = team::round_trip_ns(8, 8).unwrap_or(f64::INFINITY);
                if self.trace {
                    let s = &mut self.probe_stats;
                    (s[0], s[1], s[2]) =
                        (s[0] + 1.0, s[1] + f64::from(u8::from(rt.is_infinite())), s[2] + t.elapsed().as_secs_f64());
                }
                self.probed(rt);
            }
        }
        if let Some(t) = &self.trial {
            self.solo = t.steps < Self::WARM + Self::TRIAL;
            self.step_start = Instant::now();
        }
        self.solo
    }

    /// A probe measured `rt` ns (infinite: no answer): starts a trial if the choice is due.
    fn probed(&mut self, rt: f64) {
        self.last_rt = Some(rt);
        self.probes += 1;
        let far = rt > Self::FAR_NS;
        if self.far.is_none() && !far {
            // Near at the first probe: two threads, with no trial (it costs a calm run about
            // 1.5% of a one-epoch ML-1M run, for nothing).
            (self.far, self.probes) = (Some(false), 0);
            return;
        }
        self.disagree = if self.far.is_some_and(|f| f != far) { self.disagree + 1 } else { 0 };
        // A close call, and any choice of one thread, is tried again after `recheck` probes: one
        // thread wrongly kept costs up to half the speed, and the probes alone may never say so.
        let recheck = (self.close || self.solo) && self.probes >= self.recheck;
        if self.far.is_none() || self.disagree >= 2 || recheck {
            let (one, two) = (Vec::with_capacity(Self::TRIAL), Vec::with_capacity(Self::TRIAL));
            self.trial = Some(Trial { rt, was_solo: self.solo, steps: 0, total: [0.0; 2], one, two });
        }
    }

    /// At a step's end.
    fn end(&mut self) {
        if !self.adaptive {
            return;
        }
        self.solo_steps += u64::from(self.solo);
        if self.trial.is_some() {
            let d = self.step_start.elapsed().as_secs_f64();
            self.timed(d);
        }
    }

    /// A trial's step took `secs`: the choice, once both halves of the trial are in (or the
    /// two-thread half has run twice as long as the whole one-thread half).
    fn timed(&mut self, secs: f64) {
        let Some(t) = &mut self.trial else { return };
        let half = Self::WARM + Self::TRIAL;
        let second = t.steps >= half;
        t.total[usize::from(second)] += secs;
        match t.steps {
            k if k < Self::WARM || (half..half + Self::WARM).contains(&k) => {}
            k if k < half => t.one.push(secs),
            _ => t.two.push(secs),
        }
        t.steps += 1;
        let cut = second && t.total[1] > 2.0 * t.total[0];
        if t.steps < 2 * half && !cut {
            return;
        }
        let far = t.rt > Self::FAR_NS;
        let (was, again) = (t.was_solo, self.far == Some(far));
        let (one, two) = (trimmed_mean(&mut t.one, Self::TRIM), trimmed_mean(&mut t.two, Self::TRIM));
        if cut {
            (self.solo, self.close) = (true, false);
        } else {
            // The round trip sets the default; the trial overturns it when clear.
            self.solo = if far { two * (1.0 + Self::CLOSE) >= one } else { one * (1.0 + Self::CLOSE) < two };
            self.close = (one - two).abs() < Self::CLOSE * one.min(two);
        }
        if self.trace {
            eprintln!(
                "pace: round trip {:.0} ns ({}); mean step {:.1} us on one thread, {:.1} us on two{}: {}",
                t.rt,
                if far { "far" } else { "near" },
                one * 1e6,
                two * 1e6,
                if cut { " (cut short)" } else { "" },
                if self.solo { "one" } else { "two" }
            );
        }
        // A recheck that keeps the choice waits twice as long for the next.
        self.recheck =
            if again && was == self.solo { (2 * self.recheck).min(Self::RECHECK_MAX) } else { Self::RECHECK };
        (self.far, self.disagree, self.probes) = (Some(far), 0, 0);
        self.trial = None;
    }

    /// The steps run on one thread since the last call, and the last round trip.
    fn take(&mut self) -> (u64, Option<f64>) {
        if self.trace {
            let [n, lost, wait] = std::mem::take(&mut self.probe_stats);
            eprintln!("pace: {n} probes since the last report, {lost} unanswered, {:.1} ms in probes", wait * 1e3);
        }
        (std::mem::take(&mut self.solo_steps), self.last_rt)
    }
}

/// The mean of `v` without its `trim` largest values (`v` sorted in place).
fn trimmed_mean(v: &mut [f64], trim: usize) -> f64 {
    v.sort_by(f64::total_cmp);
    let kept = &v[..v.len().saturating_sub(trim)];
    kept.iter().sum::<f64>() / kept.len() as f64
}

/// The environment variable that turns on the phase times (`NCF_STEP_TIMES=1`).
pub const STEP_TIMES_ENV: &str = "NCF_STEP_TIMES";

/// The phases [`Laps`] times, in step order.
const PHASES: [&str; 2] = ["forward+backward", "scatter+optimizer"];

/// Time per phase, summed over steps: `lap(k)` adds the wall time since the last lap (or
/// `start`) to phase `k`; [`Laps::join`] and [`TeamFork`] add each half's busy time. Costs
/// nothing when off.
struct Laps {
    on: bool,
    last: Instant,
    wall: [Duration; 2],
    busy: [[Duration; 2]; 2],
}

impl Laps {
    fn start(&mut self) {
        if self.on {
            self.last = Instant::now();
        }
    }

    /// Ends phase `k`: adds the wall time since the last lap to it, and returns that time.
    fn lap(&mut self, phase: usize) -> Duration {
        if !self.on {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let d = now - self.last;
        self.wall[phase] += d;
        self.last = now;
        d
    }

    /// [`team::join`] of phase `k`'s two halves, timing each when on.
    fn join<RA: Send, RB: Send>(
        &mut self,
        phase: usize,
        a: impl FnOnce() -> RA + Send,
        b: impl FnOnce() -> RB + Send,
    ) -> (RA, RB) {
        join_timed(self.on, &mut self.busy[phase], a, b)
    }
}

/// [`team::join`], adding each closure's run time to `busy` when `on`.
fn join_timed<RA: Send, RB: Send>(
    on: bool,
    busy: &mut [Duration; 2],
    a: impl FnOnce() -> RA + Send,
    b: impl FnOnce() -> RB + Send,
) -> (RA, RB) {
    if !on {
        return team::join(a, b);
    }
    let ((ra, ta), (rb, tb)) = team::join(|| timed(a), || timed(b));
    busy[0] += ta;
    busy[1] += tb;
    (ra, rb)
}

/// `f()` and how long it took.
fn timed<R>(f: impl FnOnce() -> R) -> (R, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

/// The two-lane step (see the module docs).
pub struct TwoLaneStep<T: CpuFloat> {
    lanes: [Lane<T>; 2],
    second: Second<T>,
    laps: Laps,
    pace: Pace,
    /// Each optimizer half's compact gradients ([`compact_tables`]): users', items'.
    compact: [Compact<T>; 2],
}

/// One side's scratch for [`compact_tables`]: the batch's distinct ids of the side, each id's
/// row among them, and a compact gradient `(K, D)`.
struct Compact<T> {
    uniq: Vec<u32>,
    slot: Vec<u32>,
    /// The compact gradient's storage, as long as the largest `K·D` so far and all zeros
    /// between steps (the update zeroes what it reads).
    gc: Vec<T>,
    /// Steps whose half updated its tables here (what the tests check was taken).
    steps: u64,
}

impl<T> Default for Compact<T> {
    fn default() -> Self {
        Compact { uniq: Vec::new(), slot: Vec::new(), gc: Vec::new(), steps: 0 }
    }
}

/// [`Fork`] on the helper thread of [`team::with_helper`], summing each half's busy time into
/// `busy` when `timed` (the optimizer's halves, for [`Laps`]).
struct TeamFork {
    timed: bool,
    busy: std::cell::Cell<[Duration; 2]>,
}

impl Fork for TeamFork {
    fn fork<RA: Send, RB: Send>(&self, a: impl FnOnce() -> RA + Send, b: impl FnOnce() -> RB + Send) -> (RA, RB) {
        let mut busy = self.busy.get();
        let r = join_timed(self.timed, &mut busy, a, b);
        self.busy.set(busy);
        r
    }
}

impl<T: CpuFloat> TwoLaneStep<T> {
    /// The step for batches of up to `max_batch` rows, timing its phases when
    /// [`STEP_TIMES_ENV`] is `1`.
    pub fn new(max_batch: usize) -> Self {
        Self::with_times(max_batch, std::env::var(STEP_TIMES_ENV).is_ok_and(|v| v.trim() == "1"))
    }

    /// [`TwoLaneStep::new`], with the phase times on or off whatever the environment says.
    pub fn with_times(max_batch: usize, times: bool) -> Self {
        let h = max_batch / 2;
        let lane = || Lane {
            users: vec![0; h],
            items: vec![0; h],
            labels: vec![T::ZERO; h],
            dlogits: vec![T::ZERO; h],
            loss: vec![T::ZERO; 1],
        };
        let laps = Laps { on: times, last: Instant::now(), wall: [Duration::ZERO; 2], busy: [[Duration::ZERO; 2]; 2] };
        let adaptive = std::env::var(PACE_ENV).map_or(true, |v| v.trim() != "fixed");
        TwoLaneStep {
            lanes: [lane(), lane()],
            second: Second::None,
            laps,
            pace: Pace::new(adaptive),
            compact: Default::default(),
        }
    }

    /// [`Pace`] on (`true`) or off, whatever the environment says.
    pub fn with_pace(mut self, adaptive: bool) -> Self {
        self.pace = Pace::new(adaptive);
        self
    }

    /// Forward, loss and backward of `batch` in two lanes, then the scatter and the step of
    /// `opt` by side; with no `opt`, the scatter alone, leaving the summed gradients in the
    /// model's grads (what the tests compare with the reference's). Returns `false`, having
    /// done nothing, when the batch does not split.
    fn lanes_then(
        &mut self,
        be: &CpuBackend<T>,
        model: &mut AnyModel<CpuBackend<T>>,
        opt: Option<&mut Optimizer<CpuBackend<T>>>,
        batch: &Batch<CpuBackend<T>>,
    ) -> Result<bool> {
        let n = batch.len;
        if !n.is_multiple_of(2) || n < MIN_LANE_BATCH || n / 2 > self.lanes[0].users.len() {
            return Ok(false);
        }
        let Some(parts) = lane_parts(model, n)? else { return Ok(false) };
        let h = n / 2;
        // Lane 1's activations and gradients live in `self.second`, in the variant of the
        // model's kind; made (or remade, for a larger batch) on first use.
        macro_rules! run_lanes {
            ($kind:ident, $p:ident, $g:ident, $acts:ident) => {{
                if !matches!(&self.second, Second::$kind(a, _) if a.head.logits.len() >= h) {
                    self.second = Second::$kind(LaneActs::like($acts, be, h)?, $p.zeros_like(be)?);
                }
                let Second::$kind(acts1, g1) = &mut self.second else { unreachable!("set above") };
                two_lanes(be, $p, $g, $acts, acts1, g1, &mut self.lanes, batch, &mut self.laps)?;
                let acts = [&*$acts, &*acts1];
                match opt {
                    Some(opt) => {
                        let (lanes, compact) = (&self.lanes, &mut self.compact);
                        scatter_and_update(be, opt, $p, $g, acts, g1, lanes, compact, batch, &mut self.laps)?
                    }
                    None => scatter_only(be, $g, acts, g1, &self.lanes, h)?,
                }
            }};
        }
        match parts {
            LaneParts::Gmf(p, g, acts) => run_lanes!(Gmf, p, g, acts),
            LaneParts::Mlp(p, g, acts) => run_lanes!(Mlp, p, g, acts),
            LaneParts::NeuMf(p, g, acts) => run_lanes!(NeuMf, p, g, acts),
        }
        Ok(true)
    }
}

/// Lane 0 takes rows `[0, h)` of the batch into the model's own activations and gradients `g`,
/// lane 1 rows `[h, 2h)` into `acts1` and `g1`, each first copying its rows into its [`Lane`]
/// on its own core: lap 0 of `laps`.
#[allow(clippy::too_many_arguments)]
fn two_lanes<T: CpuFloat, A: CpuLane<T>>(
    be: &CpuBackend<T>,
    p: &ParamSet<CpuBackend<T>>,
    g: &mut ParamSet<CpuBackend<T>>,
    acts0: &mut A,
    acts1: &mut A,
    g1: &mut ParamSet<CpuBackend<T>>,
    lanes: &mut [Lane<T>; 2],
    batch: &Batch<CpuBackend<T>>,
    laps: &mut Laps,
) -> Result<()> {
    let (half, h) = (T::from_f64(0.5), batch.len / 2);
    let run = |acts: &mut A, g: &mut ParamSet<CpuBackend<T>>, lane: &mut Lane<T>, k: usize| -> Result<()> {
        let r = k * h..(k + 1) * h;
        lane.users[..h].copy_from_slice(&batch.users[r.clone()]);
        lane.items[..h].copy_from_slice(&batch.items[r.clone()]);
        lane.labels[..h].copy_from_slice(&batch.labels[r]);
        acts.lane_forward(be, p, &lane.users, &lane.items, h)?;
        be.bce_with_logits(acts.logits(), &lane.labels, h, &mut lane.loss, &mut lane.dlogits)?;
        be.scale(&mut lane.dlogits, h, half)?;
        acts.lane_backward_rows(be, p, g, &lane.dlogits, h)
    };
    let [l0, l1] = lanes;
    let (r0, r1) = laps.join(0, || run(acts0, g, l0, 0), || run(acts1, g1, l1, 1));
    r0?;
    r1?;
    laps.lap(0);
    Ok(())
}

/// The optimizer's two halves ([`Optimizer::step_halves_after`]), each first taking its side's
/// rows into the tables' gradients (lane 0's rows, then lane 1's: the batch's row order) and
/// summing `g += g1` (then `g1 = 0`) for the dense tensors it updates, so those lines are in
/// its cache when the update reads them, and no join separates the scatter from the update:
/// lap 1 of `laps`.
#[allow(clippy::too_many_arguments)]
fn scatter_and_update<T: CpuFloat, A: CpuLane<T>>(
    be: &CpuBackend<T>,
    opt: &mut Optimizer<CpuBackend<T>>,
    p: &mut ParamSet<CpuBackend<T>>,
    g: &mut ParamSet<CpuBackend<T>>,
    acts: [&A; 2],
    g1: &mut ParamSet<CpuBackend<T>>,
    lanes: &[Lane<T>; 2],
    compact: &mut [Compact<T>; 2],
    batch: &Batch<CpuBackend<T>>,
    laps: &mut Laps,
) -> Result<()> {
    let h = batch.len / 2;
    // Lane 1's dense gradients, by the half that updates them (the optimizer's own rule). The
    // lists are sized once: grown a push at a time, they reallocated on every step's serial
    // path, while the helper waited.
    let n = g1.tensors.len();
    let (mut lane1, mut dense) = ([Vec::with_capacity(n), Vec::with_capacity(n)], [0usize; 2]);
    for t in g1.tensors.iter_mut().filter(|t| !matches!(t.role, Role::Embedding(_))) {
        lane1[ncf_model::optim::half_of(t.role, t.numel(), &mut dense)].push(t);
    }
    let [g1_users, g1_items] = lane1;
    let [l0, l1] = lanes;
    let [cu, ci] = compact;
    let fork = TeamFork { timed: laps.on, busy: Default::default() };
    let before = (
        scatter_then(be, IdSource::User, acts, [&l0.users, &l1.users], &batch.users, h, g1_users, cu),
        scatter_then(be, IdSource::Item, acts, [&l0.items, &l1.items], &batch.items, h, g1_items, ci),
    );
    opt.step_halves_after(be, p, g, &batch.users, &batch.items, batch.len, &fork, before)?;
    laps.lap(1);
    let [u, i] = fork.busy.get();
    laps.busy[1][0] += u;
    laps.busy[1][1] += i;
    Ok(())
}

/// One optimizer half's prelude: its side's tables summed compactly and updated
/// ([`compact_tables`]) where it can, else [`scatter_and_sum`]'s scatter into the tables'
/// gradients; then the dense sums.
#[allow(clippy::too_many_arguments)]
fn scatter_then<'x, T: CpuFloat, A: CpuLane<T>>(
    be: &'x CpuBackend<T>,
    side: IdSource,
    acts: [&'x A; 2],
    ids: [&'x Vec<u32>; 2],
    batch_ids: &'x Vec<u32>,
    h: usize,
    mut g1: Vec<&'x mut Tensor<CpuBackend<T>>>,
    compact: &'x mut Compact<T>,
) -> impl FnOnce(HalfGrads<'_, '_, CpuBackend<T>>) -> Result<()> + Send + 'x {
    move |mut half| {
        let done = compact_tables(be, side, acts, ids, batch_ids, h, compact, &mut half)?;
        let (mut tables, rest) = half.tables_and_rest()?;
        scatter_and_sum(be, side, acts, ids, h, (!done).then_some(&mut tables), rest, &mut g1)
    }
}

/// Lazy Adam on the half's tables with compact gradients: the side's distinct ids `K` of the
/// batch, each lane's rows summed into a `(K, D)` gradient in row order (lane 0's, then lane
/// 1's), and [`adam_step_rows_compact`] on it, a table at a time. The sums and the update are
/// those of the table-gradient path bit for bit; what changes is where the sums live: a few
/// dozen KiB in this core's cache instead of table rows that come from memory. Returns
/// `false`, having done nothing, unless every table of the half is lazy Adam and both lanes
/// hold its rows' gradients ([`CpuLane::row_grads`]).
#[allow(clippy::too_many_arguments)]
fn compact_tables<T: CpuFloat, A: CpuLane<T>>(
    be: &CpuBackend<T>,
    side: IdSource,
    acts: [&A; 2],
    ids: [&Vec<u32>; 2],
    batch_ids: &Vec<u32>,
    h: usize,
    c: &mut Compact<T>,
    half: &mut HalfGrads<'_, '_, CpuBackend<T>>,
) -> Result<bool> {
    let (mut tables, t) = half.tables();
    let Some(n) = tables.first().map(|ts| ts.p.rows()) else { return Ok(false) };
    let fits = |ts: &TableStep<'_, CpuBackend<T>>| {
        ts.group.lazy
            && matches!(ts.group.rule, OptimKind::Adam(_))
            && ts.p.rows() == n
            && acts.iter().all(|a| a.row_grads(side, ts.idx).is_some())
    };
    if !tables.iter().all(fits) {
        return Ok(false);
    }
    // The batch's ids of the side are lane 0's then lane 1's: the lanes' rows, unsplit.
    be.unique_ids(batch_ids, 2 * h, n, &mut c.uniq)?;
    c.slot.resize(n, 0);
    compact_slots(&c.uniq, &mut c.slot);
    let t = u64::from(t.first().copied().unwrap_or(0));
    for ts in tables.iter_mut() {
        let OptimKind::Adam(hp) = ts.group.rule else { unreachable!("checked above") };
        let d = ts.p.row_width();
        // Every check before the first sum: `c.gc` is all zeros between calls (the update
        // zeroes the rows it reads), so it is never zeroed here, and no error may leave sums
        // behind in it.
        for (field, len) in [("p", ts.p.buf.len()), ("s1", ts.s1.len()), ("s2", ts.s2.len())] {
            check_rows("compact_tables", field, len, n, d)?;
        }
        for a in acts {
            let (buf, cols, col0) = a.row_grads(side, ts.idx).expect("checked above");
            if col0 + d > cols {
                return Err(ncf_core::Error::invalid(
                    "compact_tables",
                    "row grads",
                    format!("columns {col0}+{d} of {cols}"),
                ));
            }
            check_rows("compact_tables", "row grads", buf.len(), h, cols)?;
        }
        let kd = c.uniq.len() * d;
        if c.gc.len() < kd {
            c.gc.resize(kd, T::ZERO);
        }
        let gc = &mut c.gc[..kd];
        for (a, ids) in acts.iter().zip(ids) {
            let (buf, cols, col0) = a.row_grads(side, ts.idx).expect("checked above");
            embedding_backward_compact(&buf[..h * cols], cols, col0, d, &ids[..h], &c.slot, gc);
        }
        adam_step_rows_compact(
            &mut ts.p.buf[..n * d],
            gc,
            &mut ts.s1[..n * d],
            &mut ts.s2[..n * d],
            &c.uniq,
            d,
            &hp,
            t,
        );
        ts.done();
    }
    c.steps += 1;
    Ok(true)
}

/// With `tables`, the `side` rows of both lanes into that side's tables, lane 0's then lane
/// 1's (the batch's row order); then each of lane 1's dense gradients `g1` added into lane 0's
/// in `rest` (the same tensors, in the same order) and zeroed.
#[allow(clippy::too_many_arguments)]
fn scatter_and_sum<T: CpuFloat, A: CpuLane<T>>(
    be: &CpuBackend<T>,
    side: IdSource,
    acts: [&A; 2],
    ids: [&Vec<u32>; 2],
    h: usize,
    tables: Option<&mut SideTables<'_, CpuBackend<T>>>,
    rest: Vec<&mut Tensor<CpuBackend<T>>>,
    g1: &mut [&mut Tensor<CpuBackend<T>>],
) -> Result<()> {
    if let Some(tables) = tables {
        for (a, ids) in acts.into_iter().zip(ids) {
            a.lane_scatter_side(be, side, tables, ids, h)?;
        }
    }
    if rest.len() != g1.len() || rest.iter().zip(g1.iter()).any(|(t, t1)| t.numel() != t1.numel()) {
        return Err(ncf_core::Error::invalid("two_lanes", "g1", "lane 1's gradients are not laid out like lane 0's"));
    }
    for (t, t1) in rest.into_iter().zip(g1.iter_mut()) {
        let n = t.numel();
        be.add_assign(&mut t.buf, &t1.buf, n)?;
        be.fill(&mut t1.buf, n, T::ZERO)?;
    }
    Ok(())
}

/// [`scatter_and_sum`] for both sides on this thread, with no optimizer step after it.
fn scatter_only<T: CpuFloat, A: CpuLane<T>>(
    be: &CpuBackend<T>,
    g: &mut ParamSet<CpuBackend<T>>,
    acts: [&A; 2],
    g1: &mut ParamSet<CpuBackend<T>>,
    lanes: &[Lane<T>; 2],
    h: usize,
) -> Result<()> {
    let mut dense = [[0usize; 2]; 2];
    let mut rest: [Vec<&mut Tensor<CpuBackend<T>>>; 2] = [Vec::new(), Vec::new()];
    let [tu, ti] =
        g.side_tables_and_rest_mut(|_, t| rest[ncf_model::optim::half_of(t.role, t.numel(), &mut dense[0])].push(t))?;
    let mut lane1: [Vec<&mut Tensor<CpuBackend<T>>>; 2] = [Vec::new(), Vec::new()];
    for t in g1.tensors.iter_mut().filter(|t| !matches!(t.role, Role::Embedding(_))) {
        lane1[ncf_model::optim::half_of(t.role, t.numel(), &mut dense[1])].push(t);
    }
    let [l0, l1] = lanes;
    let sides = [(IdSource::User, [&l0.users, &l1.users], tu), (IdSource::Item, [&l0.items, &l1.items], ti)];
    for (((side, ids, mut tables), rest), g1) in sides.into_iter().zip(rest).zip(&mut lane1) {
        scatter_and_sum(be, side, acts, ids, h, Some(&mut tables), rest, g1)?;
    }
    Ok(())
}

impl<T: CpuFloat> ncf_model::Step<CpuBackend<T>> for TwoLaneStep<T> {
    fn name(&self) -> &'static str {
        "cpu-two-lane"
    }

    /// With two or more threads in the current rayon pool, a helper thread spins beside the
    /// steps: it runs lane 1, and half of each kernel that splits ([`crate::team`]).
    fn around_steps<R>(f: impl FnOnce() -> R) -> R {
        if rayon::current_num_threads() >= 2 { team::with_helper(f) } else { f() }
    }

    fn step(
        &mut self,
        be: &CpuBackend<T>,
        model: &mut AnyModel<CpuBackend<T>>,
        opt: &mut Optimizer<CpuBackend<T>>,
        batch: &Batch<CpuBackend<T>>,
        scratch: &mut StepScratch<CpuBackend<T>>,
    ) -> Result<()> {
        let solo = self.pace.begin();
        if self.pace.adaptive {
            team::set_solo(solo);
        }
        let r = self.step_inner(be, model, opt, batch, scratch);
        self.pace.end();
        r
    }

    fn take_phase_times(&mut self) -> Vec<PhaseTime> {
        if !self.laps.on {
            return Vec::new();
        }
        let wall = std::mem::replace(&mut self.laps.wall, [Duration::ZERO; 2]);
        let busy = std::mem::replace(&mut self.laps.busy, [[Duration::ZERO; 2]; 2]);
        let (solo_steps, round_trip_ns) = self.pace.take();
        PHASES
            .iter()
            .zip(wall.iter().zip(busy))
            .map(|(&name, (w, [a, b]))| PhaseTime {
                name: name.to_string(),
                wall_s: w.as_secs_f64(),
                busy_s: [a.as_secs_f64(), b.as_secs_f64()],
                solo_steps,
                round_trip_ns,
            })
            .collect()
    }
    /// The reference accumulator, plus half of each lane's (each lane's loss is the mean over
    /// its half of the batch).
    fn take_loss(&mut self, be: &CpuBackend<T>, scratch: &mut StepScratch<CpuBackend<T>>) -> Result<f64> {
        let mut l = scratch.take_loss(be)?;
        for lane in &mut self.lanes {
            l += 0.5 * lane.loss[0].to_f64();
            lane.loss[0] = T::ZERO;
        }
        Ok(l)
    }
}

impl<T: CpuFloat> TwoLaneStep<T> {
    /// One step, on the threads [`team::set_solo`] leaves this thread.
    fn step_inner(
        &mut self,
        be: &CpuBackend<T>,
        model: &mut AnyModel<CpuBackend<T>>,
        opt: &mut Optimizer<CpuBackend<T>>,
        batch: &Batch<CpuBackend<T>>,
        scratch: &mut StepScratch<CpuBackend<T>>,
    ) -> Result<()> {
        use ncf_model::Model;
        let b = batch.len;
        self.laps.start();
        if self.lanes_then(be, model, Some(opt), batch)? {
            return Ok(());
        }
        model.forward(be, &batch.users, &batch.items, b)?;
        be.bce_with_logits(model.logits(), &batch.labels, b, &mut scratch.loss, &mut scratch.dlogits)?;
        model.backward(be, &batch.users, &batch.items, &scratch.dlogits, b)?;
        let d = self.laps.lap(0);
        self.laps.busy[0][0] += d;
        let (params, grads) = model.params_and_grads();
        let fork = TeamFork { timed: self.laps.on, busy: Default::default() };
        opt.step_halves(be, params, grads, &batch.users, &batch.items, b, &fork)?;
        self.laps.lap(1);
        let [u, i] = fork.busy.get();
        self.laps.busy[1][0] += u;
        self.laps.busy[1][1] += i;
        Ok(())
    }
}

impl<T: CpuFloat> FastStep for CpuBackend<T> {
    type Step = TwoLaneStep<T>;
    fn fast_step(&self, max_batch: usize) -> Result<TwoLaneStep<T>> {
        Ok(TwoLaneStep::new(max_batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ncf_model::{AnyStep, InitConfig, Model, ModelConfig, ModelKind, OptimConfig, Step, StepKind, train_step};

    type Be = CpuBackend<f64>;

    /// A batch of `b` rows over `users × items`, a fifth of them positive.
    fn rows(b: usize, users: u32, items: u32, salt: u32) -> (Vec<u32>, Vec<u32>, Vec<f64>) {
        let u = (0..b as u32).map(|k| (k * 7 + 3 + salt) % users).collect();
        let i = (0..b as u32).map(|k| (k * 13 + 5 + 3 * salt) % items).collect();
        let y = (0..b).map(|k| if (k + salt as usize).is_multiple_of(5) { 1.0 } else { 0.0 }).collect();
        (u, i, y)
    }

    /// Each tensor's name, whether it is an embedding table, and its values.
    type Named = Vec<(String, bool, Vec<f64>)>;

    fn tensors(ps: &ParamSet<Be>) -> Named {
        ps.tensors.iter().map(|t| (t.name.clone(), matches!(t.role, Role::Embedding(_)), t.buf.clone())).collect()
    }

    /// Largest relative difference between two tensors, and the first few differing values.
    fn evidence(a: &[f64], b: &[f64]) -> (f64, Vec<(usize, f64, f64)>) {
        let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs() / x.abs().max(1e-300)).fold(0.0, f64::max);
        let first = a.iter().zip(b).enumerate().filter(|(_, (x, y))| x != y).take(4).map(|(k, (x, y))| (k, *x, *y));
        (worst, first.collect())
    }

    /// One forward/loss/backward, by the reference path or by the two lanes (in a pool of
    /// `threads` threads, inside the step's `around_steps`), of a model with `feats` side
    /// features per side (0: none; a hybrid's multi-hot tables get a pattern of zeros and
    /// ones); returns the grads and the loss.
    fn gradients_with(kind: ModelKind, feats: usize, b: usize, lanes: Option<usize>) -> (Named, f64, bool) {
        let be = Be::default();
        let mut cfg = ModelConfig::new(kind, 40, 30);
        cfg.init = InitConfig::for_gradcheck();
        (cfg.user_features, cfg.item_features) = (feats, feats);
        let mut model = AnyModel::new(&be, &cfg, b, &mut ncf_core::rng::seeded(9, 1)).unwrap();
        for t in &mut model.params_and_grads().0.tensors {
            if t.name.ends_with("features") {
                t.buf.iter_mut().enumerate().for_each(|(k, x)| *x = f64::from(u8::from(k % 3 == 1)));
            }
        }
        let (u, i, y) = rows(b, 40, 30, 0);
        let mut batch = Batch::with_capacity(&be, b).unwrap();
        batch.set(&be, &u, &i, &y).unwrap();
        let mut scratch = StepScratch::new(&be, b).unwrap();
        match lanes {
            None => {
                model.forward(&be, &batch.users, &batch.items, b).unwrap();
                be.bce_with_logits(model.logits(), &batch.labels, b, &mut scratch.loss, &mut scratch.dlogits).unwrap();
                model.backward(&be, &batch.users, &batch.items, &scratch.dlogits, b).unwrap();
                let loss = scratch.take_loss(&be).unwrap();
                (tensors(model.grads()), loss, false)
            }
            Some(threads) => {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut step = TwoLaneStep::<f64>::new(b);
                pool.install(|| {
                    TwoLaneStep::<f64>::around_steps(|| {
                        assert_eq!(team::helper_active(), threads == 2);
                        let split = step.lanes_then(&be, &mut model, None, &batch).unwrap();
                        let loss = step.take_loss(&be, &mut scratch).unwrap();
                        (tensors(model.grads()), loss, split)
                    })
                })
            }
        }
    }

    /// The two-lane step's gradients against the reference: the embedding tables' bit for bit
    /// (same per-row values, scattered in the same row order), the dense ones up to the
    /// rounding of summing two halves (rel 1e-9 in f64); the loss too. And they do not depend
    /// on whether the second lane runs on a helper thread.
    #[test]
    fn two_lanes_match_the_reference_on_any_thread_count() {
        // NeuMF and MLP with side features take the model's own lane (no x₀ columns).
        let models = [
            (ModelKind::NeuMf, 0),
            (ModelKind::Mlp, 0),
            (ModelKind::Gmf, 0),
            (ModelKind::NeuMf, 3),
            (ModelKind::Mlp, 2),
        ];
        for (kind, feats) in models {
            let b = 128;
            let (reference, loss_ref, _) = gradients_with(kind, feats, b, None);
            let one_thread = gradients_with(kind, feats, b, Some(1));
            let two_threads = gradients_with(kind, feats, b, Some(2));
            assert!(one_thread.2, "{kind}: an even batch of {b} rows splits into lanes");
            assert_eq!(one_thread, two_threads, "{kind}: one thread and two threads give identical results");
            let (lanes, loss_lanes, _) = one_thread;
            assert!((loss_ref - loss_lanes).abs() <= 1e-12 * loss_ref.abs(), "{kind}: loss {loss_ref} vs {loss_lanes}");
            for ((name, emb, g1), (_, _, g2)) in reference.iter().zip(&lanes) {
                let (worst, first) = evidence(g1, g2);
                if *emb || name.ends_with("features") {
                    // The tables; the side features' are data, with no gradient on either path.
                    assert_eq!(g1, g2, "{kind}: {name} must match bit for bit; max_rel {worst:e}, first {first:?}");
                } else {
                    let max = g1.iter().map(|a| a.abs()).fold(0.0, f64::max);
                    assert!(max > 0.0 && worst < 1e-9, "{kind}: {name} max_rel {worst:e}, first {first:?}");
                }
            }
        }
    }

    /// Odd batches, small batches and MF take the reference path.
    #[test]
    fn lanes_only_for_even_batches_of_models_with_a_head() {
        let be = Be::default();
        let b = 130;
        let mut batch = Batch::with_capacity(&be, b).unwrap();
        let mut step = TwoLaneStep::<f64>::new(b);
        for (kind, len, want) in [
            (ModelKind::NeuMf, 129, false),
            (ModelKind::NeuMf, 62, false),
            (ModelKind::NeuMf, 64, true),
            (ModelKind::Mlp, 130, true),
            (ModelKind::Gmf, 128, true),
            (ModelKind::Mf, 128, false),
        ] {
            let cfg = ModelConfig::new(kind, 40, 30);
            let mut m = AnyModel::new(&be, &cfg, b, &mut ncf_core::rng::seeded(9, 1)).unwrap();
            let (u, i, y) = rows(len, 40, 30, 0);
            batch.set(&be, &u, &i, &y).unwrap();
            assert_eq!(step.lanes_then(&be, &mut m, None, &batch).unwrap(), want, "{kind} b={len}");
        }
    }

    /// Steps run on one thread by choice (`team::set_solo`, which the pace sets) give the bits
    /// of steps on two threads: some steps solo, the others on two, against two throughout and
    /// against the pace's own choices (which depend on timing, so only the bits are held).
    #[test]
    fn steps_on_one_thread_by_choice_give_the_same_bits() {
        let be = Be::default();
        let b = 96;
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        for kind in [ModelKind::NeuMf, ModelKind::Gmf, ModelKind::Mlp, ModelKind::Mf] {
            let cfg = ModelConfig::new(kind, 40, 30);
            // `pattern(k)`: Some(solo) forces step k; None leaves it to the pace.
            let run = |pattern: &(dyn Fn(usize) -> Option<bool> + Sync), steps: usize| {
                let mut model = AnyModel::new(&be, &cfg, b, &mut ncf_core::rng::seeded(5, 1)).unwrap();
                let mut opt = Optimizer::new(&be, model.params(), OptimConfig::adam(0.01), b).unwrap();
                let paced = pattern(0).is_none();
                let mut step = TwoLaneStep::<f64>::with_times(b, true).with_pace(paced);
                if paced {
                    // A trial from the first step, as after two far probes (a near machine
                    // would run none): its steps on one thread, then on two, then its choice.
                    step.pace.trial = Some(Trial {
                        rt: f64::INFINITY,
                        was_solo: false,
                        steps: 0,
                        total: [0.0; 2],
                        one: Vec::new(),
                        two: Vec::new(),
                    });
                }
                let mut batch = Batch::with_capacity(&be, b).unwrap();
                let mut scratch = StepScratch::new(&be, b).unwrap();
                let mut losses = Vec::new();
                pool.install(|| {
                    TwoLaneStep::<f64>::around_steps(|| {
                        assert!(team::has_helper());
                        for k in 0..steps {
                            let (u, i, y) = rows(b, 40, 30, k as u32);
                            batch.set(&be, &u, &i, &y).unwrap();
                            if let Some(solo) = pattern(k) {
                                team::set_solo(solo);
                                assert_eq!(team::helper_active(), !solo);
                            }
                            step.step(&be, &mut model, &mut opt, &batch, &mut scratch).unwrap();
                            losses.push(step.take_loss(&be, &mut scratch).unwrap().to_bits());
                        }
                    })
                });
                let phases = step.take_phase_times();
                let pace = phases.first().map(|p| (p.solo_steps, p.round_trip_ns));
                (tensors(model.params()), losses, pace)
            };
            let steps = Pace::FIRST_PROBE as usize + 2 * (Pace::WARM + Pace::TRIAL) + 16;
            let (pair, pair_loss, _) = run(&|_| Some(false), steps);
            let (mixed, mixed_loss, _) = run(&|k| Some(k % 3 != 1), steps);
            let (paced, paced_loss, pace) = run(&|_| None, steps);
            let (solo_steps, rt) = pace.expect("phase times on");
            assert!(rt.is_some(), "{kind}: the pace probed");
            assert!(solo_steps >= (Pace::WARM + Pace::TRIAL) as u64, "{kind}: its trial ran {solo_steps} steps solo");
            for (what, other, other_loss) in [("mixed", &mixed, &mixed_loss), ("paced", &paced, &paced_loss)] {
                assert_eq!(&pair_loss, other_loss, "{kind}, {what}: losses");
                for ((name, _, a), (_, _, m)) in pair.iter().zip(other) {
                    let (worst, first) = evidence(a, m);
                    assert_eq!(
                        a, m,
                        "{kind}, {what}: {name} must match bit for bit; max_rel {worst:e}, first {first:?}"
                    );
                }
            }
        }
    }

    /// Feeds a whole trial to `p`: the warm-up steps (which must not count) at 1 s each, then
    /// `one` seconds per timed step on one thread and `two` on two (the first on two: `spike`);
    /// returns the choice (`true`: one thread).
    fn trial(p: &mut Pace, one: f64, two: f64, spike: f64) -> bool {
        assert!(p.trial.is_some(), "a trial is under way");
        for (k, secs) in [(Pace::WARM, 1.0), (Pace::TRIAL, one), (Pace::WARM, 1.0), (1, spike), (Pace::TRIAL - 1, two)]
        {
            for _ in 0..k {
                p.timed(secs);
            }
        }
        assert!(p.trial.is_none(), "the trial ended");
        p.solo
    }

    /// Feeds `n` probes of `rt` ns to `p`, none of which may start a trial, and checks that the
    /// step stays on one thread (`solo`) or on two.
    fn quiet(p: &mut Pace, n: u32, rt: f64, solo: bool, why: &str) {
        for k in 0..n {
            p.probed(rt);
            assert!(p.trial.is_none() && p.solo == solo, "probe {} of {n} at {rt} ns: {why}", k + 1);
        }
    }

    /// The pace's choices on made-up round trips (ns) and step times (s): no trial at a near
    /// first probe, one at a far one; none while the probes agree with the last choice's (near: up to 200 ns; far:
    /// over it, or no answer), or disagree only once in a row; one when two in a row disagree;
    /// a close call tried again after RECHECK probes, whichever won, and a clear call for one
    /// thread too (a clear call for two is not), RECHECK doubling while the choice holds; trimmed
    /// means, so one slow step decides nothing; two threads cut short once they have taken
    /// twice as long as the one-thread half.
    #[test]
    fn pace_tries_both_when_the_cores_move_apart_or_together() {
        let mut p = Pace::new(true);
        p.probed(60.0);
        assert!(p.trial.is_none() && !p.solo, "near at the first probe: two threads, no trial");
        p.probed(300.0);
        p.probed(f64::INFINITY);
        assert!(!trial(&mut p, 70e-6, 40e-6, 1.0), "far twice: tried; two, though one of their steps took 1 s");
        p.probed(60.0);
        p.probed(60.0);
        assert!(!trial(&mut p, 70e-6, 40e-6, 40e-6), "near twice: tried; two");
        let mut first_far = Pace::new(true);
        first_far.probed(400.0);
        assert!(first_far.trial.is_some(), "far at the first probe: a trial");
        for rt in
            [70.0, 90.0, 45.0, 330.0, 150.0, f64::INFINITY, 60.0].into_iter().cycle().take(5 * Pace::RECHECK as usize)
        {
            p.probed(rt);
            assert!(p.trial.is_none(), "{rt} ns: near, or far once in a row, after a clear call");
        }
        p.probed(330.0);
        p.probed(320.0);
        assert!(trial(&mut p, 75e-6, 81e-6, 81e-6), "far twice in a row: tried; one thread faster: one");
        for k in 1..Pace::RECHECK {
            p.probed([320.0, f64::INFINITY][k as usize % 2]);
            assert!(p.trial.is_none() && p.solo, "probe {k}: far or unanswered, stays on one thread");
        }
        p.probed(320.0);
        assert!(trial(&mut p, 79e-6, 73e-6, 73e-6), "a close call is rechecked after {} probes: one", Pace::RECHECK);
        quiet(&mut p, 2 * Pace::RECHECK - 1, 320.0, true, "the recheck kept the choice: twice as long to the next");
        p.probed(320.0);
        assert!(!trial(&mut p, 80e-6, 60e-6, 60e-6), "far, but two clearly faster: two");
        quiet(&mut p, 2 * Pace::RECHECK, 300.0, false, "a clear call for two is not rechecked");
        p.probed(58.0);
        p.probed(58.0);
        assert!(!trial(&mut p, 41e-6, 42e-6, 42e-6), "near again, a close call: two");
        for _ in 0..Pace::RECHECK {
            p.probed(60.0);
        }
        assert!(trial(&mut p, 35e-6, 42e-6, 42e-6), "rechecked: one clearly faster, one");
        quiet(&mut p, Pace::RECHECK - 1, 60.0, true, "near, and one thread by a clear call");
        p.probed(60.0);
        assert!(trial(&mut p, 35e-6, 42e-6, 42e-6), "one thread, though near: rechecked, still one");
        quiet(&mut p, 2 * Pace::RECHECK - 1, 60.0, true, "the recheck kept one thread: twice as long to the next");
        p.probed(60.0);
        assert!(!trial(&mut p, 40e-6, 22e-6, 22e-6), "rechecked again: two threads clearly faster now, two");
        quiet(&mut p, 4 * Pace::RECHECK, 60.0, false, "two threads by a clear call, near: not rechecked");
        p.probed(f64::INFINITY);
        p.probed(f64::INFINITY);
        assert!(p.trial.is_some(), "unanswered twice: far, tried");
        let mut two_steps = 0;
        for k in 0.. {
            p.timed(if k < Pace::WARM + Pace::TRIAL { 75e-6 } else { 2e-3 });
            if p.trial.is_none() {
                break;
            }
            two_steps = k + 1 - (Pace::WARM + Pace::TRIAL);
        }
        // The one-thread half took 144 × 75 µs = 10.8 ms: two threads stop after 11 steps of 2 ms.
        assert!(p.solo && two_steps <= 11, "two threads at 2 ms a step cut short after {two_steps} steps: one");
        let mut off = Pace::new(false);
        assert!(!off.begin(), "off: never one thread");
    }

    /// Whole training steps (forward, loss, backward, optimizer) for every model: the fast step
    /// against the reference step over several batches, odd tail included. MF (which never
    /// splits) and every embedding table match bit for bit after one step; the dense weights
    /// of GMF, MLP and NeuMF stay within rel 1e-9 (f64) after several Adam steps.
    #[test]
    fn fast_step_matches_reference_step_for_every_model() {
        let be = Be::default();
        let b = 96;
        // A hybrid NeuMF too (side features, filled with a pattern): its tower takes the
        // model's own path, so its tables take the table-gradient path.
        for (kind, feats) in ModelKind::ALL.into_iter().map(|k| (k, 0)).chain([(ModelKind::NeuMf, 2)]) {
            let mut cfg = ModelConfig::new(kind, 40, 30);
            cfg.init = InitConfig::for_gradcheck();
            (cfg.user_features, cfg.item_features) = (feats, feats);
            let mut runs = Vec::new();
            for step_kind in [StepKind::Reference, StepKind::Fast] {
                let mut model = AnyModel::new(&be, &cfg, b, &mut ncf_core::rng::seeded(5, 1)).unwrap();
                for t in &mut model.params_and_grads().0.tensors {
                    if t.name.ends_with("features") {
                        t.buf.iter_mut().enumerate().for_each(|(k, x)| *x = f64::from(u8::from(k % 3 == 1)));
                    }
                }
                let mut opt = Optimizer::new(&be, model.params(), OptimConfig::adam(0.01), b).unwrap();
                let mut step = AnyStep::new(&be, step_kind, b).unwrap();
                let mut batch = Batch::with_capacity(&be, b).unwrap();
                let mut scratch = StepScratch::new(&be, b).unwrap();
                let mut losses = Vec::new();
                let mut after_one = Vec::new();
                step.run_steps(|step| {
                    for (k, len) in [96, 96, 64, 95].into_iter().enumerate() {
                        let (u, i, y) = rows(len, 40, 30, k as u32);
                        batch.set(&be, &u, &i, &y).unwrap();
                        step.step(&be, &mut model, &mut opt, &batch, &mut scratch).unwrap();
                        losses.push(step.take_loss(&be, &mut scratch).unwrap());
                        if k == 0 {
                            after_one = tensors(model.params());
                        }
                    }
                });
                if let AnyStep::Fast(s) = &step {
                    // Every model with a head splits its even batches (3 of the 4) and updates
                    // both sides' tables with compact gradients; MF never splits.
                    let want = if kind == ModelKind::Mf || feats > 0 { 0 } else { 3 };
                    assert_eq!(s.compact.each_ref().map(|c| c.steps), [want; 2], "{kind}: compact halves");
                }
                runs.push((after_one, tensors(model.params()), losses));
            }
            let (ref1, ref_end, ref_loss) = &runs[0];
            let (fast1, fast_end, fast_loss) = &runs[1];
            for (a, b) in ref_loss.iter().zip(fast_loss) {
                assert!((a - b).abs() <= 1e-12 * a.abs(), "{kind}: loss {a} vs {b}");
            }
            for ((name, emb, a), (_, _, b)) in ref1.iter().zip(fast1) {
                let (worst, first) = evidence(a, b);
                if *emb || kind == ModelKind::Mf {
                    assert_eq!(a, b, "{kind}: {name} after one step; max_rel {worst:e}, first {first:?}");
                }
            }
            for ((name, _, a), (_, _, b)) in ref_end.iter().zip(fast_end) {
                let (worst, first) = evidence(a, b);
                if kind == ModelKind::Mf {
                    assert_eq!(a, b, "{kind}: {name}; max_rel {worst:e}, first {first:?}");
                } else {
                    assert!(worst < 1e-9, "{kind}: {name} max_rel {worst:e}, first {first:?}");
                }
            }
        }
    }

    /// The phase times: four named phases in step order when on, each within the run's wall
    /// time and the timed phases together too; none when off; reading them resets them; and
    /// timing changes no number.
    #[test]
    fn phase_times_cover_the_steps_and_change_nothing() {
        let be = Be::default();
        let cfg = ModelConfig::new(ModelKind::NeuMf, 40, 30);
        let b = 96;
        let mut out = Vec::new();
        for times in [false, true] {
            let mut model = AnyModel::new(&be, &cfg, b, &mut ncf_core::rng::seeded(5, 1)).unwrap();
            let mut opt = Optimizer::new(&be, model.params(), OptimConfig::adam(0.01), b).unwrap();
            let mut step = TwoLaneStep::<f64>::with_times(b, times);
            let mut batch = Batch::with_capacity(&be, b).unwrap();
            let mut scratch = StepScratch::new(&be, b).unwrap();
            let t0 = std::time::Instant::now();
            // One thread, so each phase's halves run one after the other inside it.
            let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
            pool.install(|| {
                TwoLaneStep::<f64>::around_steps(|| {
                    for k in 0..4 {
                        let (u, i, y) = rows(b, 40, 30, k);
                        batch.set(&be, &u, &i, &y).unwrap();
                        step.step(&be, &mut model, &mut opt, &batch, &mut scratch).unwrap();
                    }
                })
            });
            let wall = t0.elapsed().as_secs_f64();
            let phases = step.take_phase_times();
            if times {
                let names: Vec<&str> = phases.iter().map(|p| p.name.as_str()).collect();
                assert_eq!(names, PHASES, "the phases, in step order");
                let sum: f64 = phases.iter().map(|p| p.wall_s).sum();
                assert!(phases.iter().all(|p| p.wall_s >= 0.0) && sum > 0.0 && sum <= wall, "{phases:?} in {wall} s");
                for p in &phases {
                    // Each half runs inside its phase, one after the other on one thread.
                    assert!(p.busy_s.iter().all(|&b| b >= 0.0) && p.busy_s[0] + p.busy_s[1] <= p.wall_s, "{p:?}");
                    assert!(p.busy_s[0] > 0.0, "{p:?}: the first half ran");
                }
                let again = step.take_phase_times();
                assert!(again.iter().all(|p| p.wall_s == 0.0 && p.busy_s == [0.0; 2]), "reading resets them");
            } else {
                assert!(phases.is_empty(), "{phases:?}");
            }
            out.push(tensors(model.params()));
        }
        assert_eq!(out[0], out[1], "timing changes no weight");
    }

    /// The reference step is what `train_step` does, whatever wraps it.
    #[test]
    fn reference_step_is_train_step() {
        let be = Be::default();
        let cfg = ModelConfig::new(ModelKind::NeuMf, 40, 30);
        let (u, i, y) = rows(64, 40, 30, 1);
        let mut out = Vec::new();
        for via_any in [false, true] {
            let mut model = AnyModel::new(&be, &cfg, 64, &mut ncf_core::rng::seeded(5, 1)).unwrap();
            let mut opt = Optimizer::new(&be, model.params(), OptimConfig::adam(0.01), 64).unwrap();
            let mut batch = Batch::with_capacity(&be, 64).unwrap();
            batch.set(&be, &u, &i, &y).unwrap();
            let mut scratch = StepScratch::new(&be, 64).unwrap();
            if via_any {
                let mut s = AnyStep::new(&be, StepKind::Reference, 64).unwrap();
                s.step(&be, &mut model, &mut opt, &batch, &mut scratch).unwrap();
            } else {
                train_step(&be, &mut model, &mut opt, &batch, &mut scratch).unwrap();
            }
            out.push(tensors(model.params()));
        }
        assert_eq!(out[0], out[1]);
    }
}
