//! Which vector instruction set this CPU has, detected once at run time.
//!
//! The kernels are plain Rust (and, for the AVX-512 GEMM, intrinsics). A hot loop is compiled
//! once per level, inside a `#[target_feature]` function, and the caller picks the copy for
//! [`SimdLevel::best`] at run time. That way the binary runs on any x86-64 (or any other
//! architecture, as [`SimdLevel::Portable`]) without `-C target-cpu=native`. Users: the GEMM
//! (`ops/gemm/dispatch.rs` chooses between its kernels by level) and the optimizer
//! (`ops/optim.rs` runs Adam's square root and division eight lanes wide on AVX2).

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction-set level, slowest first: a CPU that has one level has every level below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimdLevel {
    /// No extra target features (SSE2 on x86-64); multiply and add are separate, since without
    /// hardware FMA `mul_add` is a slow library call.
    Portable,
    /// AVX2 + FMA: sixteen 256-bit registers.
    Avx2Fma,
    /// AVX-512F (with AVX2 + FMA): thirty-two 512-bit registers.
    Avx512,
}

/// The environment variable that forces a lower SIMD level (`NCF_SIMD=avx2` runs the AVX2
/// kernels on an AVX-512 CPU), so one machine can test and time every path.
pub const FORCE_ENV: &str = "NCF_SIMD";

impl SimdLevel {
    /// Every level, slowest first.
    pub const ALL: [SimdLevel; 3] = [SimdLevel::Portable, SimdLevel::Avx2Fma, SimdLevel::Avx512];

    /// A short name for reports: `portable`, `avx2+fma` or `avx512`.
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Portable => "portable",
            SimdLevel::Avx2Fma => "avx2+fma",
            SimdLevel::Avx512 => "avx512",
        }
    }

    /// The level the kernels run at: the fastest this CPU has, or lower when the environment
    /// variable [`FORCE_ENV`] (`NCF_SIMD=portable|avx2|avx512`) asks for it. Decided on the first
    /// call and then cached.
    #[inline]
    pub fn best() -> SimdLevel {
        static BEST: AtomicU8 = AtomicU8::new(u8::MAX);
        let cached = BEST.load(Ordering::Relaxed);
        if let Some(&s) = SimdLevel::ALL.get(cached as usize) {
            return s;
        }
        let best = Self::choose(SimdLevel::detected(), std::env::var(FORCE_ENV).ok().as_deref());
        BEST.store(best as u8, Ordering::Relaxed);
        best
    }

    /// The fastest level this CPU has, whatever [`FORCE_ENV`] says (uncached).
    pub fn detected() -> SimdLevel {
        SimdLevel::ALL.into_iter().rev().find(|s| s.detect()).unwrap_or(SimdLevel::Portable)
    }

    /// The level to run at on a CPU that has `detected`, when [`FORCE_ENV`] is `forced`: the
    /// requested level, capped at `detected` (a CPU cannot run instructions it lacks). An
    /// unknown name is ignored with a warning on stderr.
    pub fn choose(detected: SimdLevel, forced: Option<&str>) -> SimdLevel {
        let Some(name) = forced.map(str::trim).filter(|s| !s.is_empty()) else { return detected };
        match SimdLevel::parse(name) {
            Some(want) if want > detected => {
                eprintln!("{FORCE_ENV}={name}: this CPU has only {}; running at {}", detected.name(), detected.name());
                detected
            }
            Some(want) => want,
            None => {
                eprintln!("{FORCE_ENV}={name} is not one of portable, avx2, avx512; ignored");
                detected
            }
        }
    }

    /// `portable`, `avx2` (or `avx2+fma`) or `avx512`, any case.
    pub fn parse(name: &str) -> Option<SimdLevel> {
        match name.to_ascii_lowercase().as_str() {
            "portable" | "scalar" | "none" => Some(SimdLevel::Portable),
            "avx2" | "avx2+fma" | "avx2fma" => Some(SimdLevel::Avx2Fma),
            "avx512" | "avx-512" | "avx512f" => Some(SimdLevel::Avx512),
            _ => None,
        }
    }

    /// Whether this CPU can run the level (every level up to [`SimdLevel::best`]).
    #[inline]
    pub fn is_available(self) -> bool {
        self <= SimdLevel::best()
    }

    /// Asks the CPU whether it has the level's features (uncached; [`SimdLevel::best`] caches).
    fn detect(self) -> bool {
        match self {
            SimdLevel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2Fma => {
                std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => SimdLevel::Avx2Fma.detect() && std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

/// Sets flush-to-zero and denormals-are-zero for this thread's vector unit (x86-64's MXCSR
/// bits 15 and 6; a no-op elsewhere): results below `f32::MIN_POSITIVE` become 0, and such
/// inputs read as 0. Threads this one creates afterwards inherit the setting (POSIX), so the
/// `ncf` binary calls it first thing in `main`.
///
/// Why: weights and Adam moments of units that stop receiving gradient decay geometrically
/// towards 0 and end up subnormal, and x86 cores take a slow path on every subnormal operand:
/// an ML-100K rating run with L2 went from 0.15 s to 2.5–3.5 s per epoch after epoch 20. The
/// numbers change only where a value would have been below 1.2e-38.
pub fn flush_denormals() {
    #[cfg(target_arch = "x86_64")]
    {
        let mut csr: u32 = 0;
        // SAFETY: `stmxcsr` stores the 32-bit MXCSR register to the address given, which is a
        // valid, aligned `u32` on this stack frame; it touches nothing else.
        unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack, preserves_flags)) };
        csr |= (1 << 15) | (1 << 6);
        // SAFETY: `ldmxcsr` loads MXCSR from a valid `u32`; the value is the current one with
        // only the FTZ and DAZ bits set, both defined bits (no reserved bit is set, which would
        // fault).
        unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, preserves_flags)) };
    }
}

impl fmt::Display for SimdLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    /// After [`super::flush_denormals`], a product that would be subnormal is 0, and a thread
    /// spawned afterwards inherits the setting; a thread that never set it keeps subnormals.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn flush_denormals_flushes_here_and_in_new_threads() {
        let tiny = || std::hint::black_box(f32::MIN_POSITIVE) * std::hint::black_box(0.25f32);
        std::thread::spawn(move || {
            assert!(tiny() > 0.0, "subnormals before the call");
            super::flush_denormals();
            assert_eq!(tiny(), 0.0, "flushed on this thread");
            assert_eq!(std::thread::spawn(tiny).join().unwrap(), 0.0, "inherited by a new thread");
        })
        .join()
        .unwrap();
    }

    use super::*;

    /// The cached level is one the CPU has (the detected one, unless `NCF_SIMD` lowers it),
    /// every level below it is available and none above.
    #[test]
    fn best_level_is_available_and_levels_nest() {
        let best = SimdLevel::best();
        assert!(best.detect());
        let forced = std::env::var(FORCE_ENV).ok();
        assert_eq!(best, SimdLevel::choose(SimdLevel::detected(), forced.as_deref()));
        for s in SimdLevel::ALL {
            assert_eq!(s.is_available(), s <= best, "{s}");
            if s.detect() && forced.is_none() {
                assert!(s <= best, "{s} detected above the cached best {best}");
            }
        }
        assert_eq!(SimdLevel::best(), best, "cached");
        println!("SIMD level: {best} (detected {}, {FORCE_ENV}={forced:?})", SimdLevel::detected());
    }

    /// `NCF_SIMD` lowers the level, never raises it above the CPU's, and a bad name is ignored.
    #[test]
    fn a_forced_level_is_capped_at_the_cpus() {
        use SimdLevel::*;
        assert_eq!(SimdLevel::choose(Avx512, None), Avx512);
        assert_eq!(SimdLevel::choose(Avx512, Some("avx2")), Avx2Fma);
        assert_eq!(SimdLevel::choose(Avx512, Some("AVX2+FMA")), Avx2Fma);
        assert_eq!(SimdLevel::choose(Avx512, Some("portable")), Portable);
        assert_eq!(SimdLevel::choose(Avx2Fma, Some("avx512")), Avx2Fma);
        assert_eq!(SimdLevel::choose(Avx2Fma, Some("sse9")), Avx2Fma);
        assert_eq!(SimdLevel::choose(Avx2Fma, Some("")), Avx2Fma);
    }
}
