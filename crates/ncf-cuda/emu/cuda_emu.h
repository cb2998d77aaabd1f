// CUDA-on-CPU emulation header, for tests only (see README.md next to this file).
//
// Force-included (`g++ -include cuda_emu.h`) in front of a kernel file's NVRTC unit, so the
// unchanged CUDA source compiles as C++17. The threads of a block run as cooperative fibers
// (runtime.cpp): `threadIdx` names the running fiber, `__syncthreads()` and the warp
// intrinsics are the only switch points. Blocks run one after another.
#pragma once

#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <type_traits>
#include <utility>

// ---- Qualifiers -------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __grid_constant__
// `__restrict__` is GNU C++ already.
// Static shared memory: one copy per kernel file (blocks run one at a time), placed in its own
// section so the runtime can fill it with 0xFF (a NaN for floats) before every block. Needs
// `-fno-weak` for `__shared__` inside inline functions (see README.md).
// `extern __shared__ T name[];` is rewritten by the test harness (tests/emu/mod.rs) into
// `EMU_EXTERN_SHARED(T, name)`, the dynamic shared memory of the launch.
#define __shared__ static __attribute__((section("emu_shared")))
#define EMU_EXTERN_SHARED(T, name) static T* const name = reinterpret_cast<T*>(::emu::dyn_shared)

#define __CUDACC__ 1
#define __CUDACC_RTC__ 1
#define __CUDA_ARCH__ 900
#define CUDA_EMU 1

// ---- Built-in vector types ------------------------------------------------------------------
#define EMU_VEC2(T, N, A)                              \
    struct __attribute__((aligned(A))) N { T x, y; }; \
    static inline N make_##N(T x, T y) { return N{x, y}; }
#define EMU_VEC3(T, N)        \
    struct N { T x, y, z; }; \
    static inline N make_##N(T x, T y, T z) { return N{x, y, z}; }
#define EMU_VEC4(T, N, A)                                    \
    struct __attribute__((aligned(A))) N { T x, y, z, w; }; \
    static inline N make_##N(T x, T y, T z, T w) { return N{x, y, z, w}; }
EMU_VEC2(float, float2, 8)
EMU_VEC3(float, float3)
EMU_VEC4(float, float4, 16)
EMU_VEC2(int, int2, 8)
EMU_VEC3(int, int3)
EMU_VEC4(int, int4, 16)
EMU_VEC2(unsigned, uint2, 8)
EMU_VEC3(unsigned, uint3)
EMU_VEC4(unsigned, uint4, 16)
EMU_VEC2(double, double2, 16)
EMU_VEC2(long long, longlong2, 16)
EMU_VEC2(unsigned long long, ulonglong2, 16)
#undef EMU_VEC2
#undef EMU_VEC3
#undef EMU_VEC4

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

static const int warpSize = 32;

// ---- The runtime's interface (runtime.cpp) ------------------------------------------------
namespace emu {

// The running fiber; the runtime's fiber type starts with this.
struct Thread {
    uint3 tid;
};
extern Thread* cur;
extern uint3 block_idx;
extern dim3 block_dim, grid_dim;
extern unsigned char dyn_shared[];

enum WarpOp : int {
    SHFL_IDX,
    SHFL_UP,
    SHFL_DOWN,
    SHFL_XOR,
    BALLOT,
    VOTE_ALL,
    VOTE_ANY,
    SYNCWARP,
    REDUCE_ADD,
    REDUCE_MIN_U,
    REDUCE_MAX_U,
    REDUCE_MIN_I,
    REDUCE_MAX_I,
    MATCH_ANY,
};
enum BlockOp : int { SYNC, SYNC_COUNT, SYNC_AND, SYNC_OR };

// Block barrier: returns the count / and / or of `pred` over the block (0 for SYNC).
int block_barrier(int op, int pred);
// Warp barrier among the lanes of `mask`, with one exchange slot per lane.
unsigned long long warp_op(int op, unsigned mask, unsigned long long value, int arg, int width);
unsigned active_mask();
[[noreturn]] void trap(const char* what);
long long clock_ticks();

template <class T>
inline unsigned long long to_bits(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "warp intrinsics take values of at most 8 bytes");
    unsigned long long b = 0;
    memcpy(&b, &v, sizeof(T));
    return b;
}
template <class T>
inline T from_bits(unsigned long long b) {
    T v;
    memcpy(&v, &b, sizeof(T));
    return v;
}

// ---- Kernel registry: launch any `void kernel(A...)` from a `void** args` array -----------
struct KernelInfo {
    const char* name;
    void* fn;
    void (*run)(void* fn, void** args);
    int nparams;
    const char* const* param_types;  // "f32", "i64", "*const f32", "*u32", "b16" (other), …
};

template <class T, class = void>
struct TypeName {
    static const char* get() {
        static char buf[16];
        if (!buf[0]) snprintf(buf, sizeof buf, "b%zu", sizeof(T));
        return buf;
    }
};
#define EMU_TYPE_NAME(T, s) \
    template <>             \
    struct TypeName<T> {    \
        static const char* get() { return s; } \
    };
EMU_TYPE_NAME(float, "f32")
EMU_TYPE_NAME(double, "f64")
EMU_TYPE_NAME(bool, "bool")
EMU_TYPE_NAME(char, "i8")
EMU_TYPE_NAME(signed char, "i8")
EMU_TYPE_NAME(unsigned char, "u8")
EMU_TYPE_NAME(short, "i16")
EMU_TYPE_NAME(unsigned short, "u16")
EMU_TYPE_NAME(int, "i32")
EMU_TYPE_NAME(unsigned, "u32")
EMU_TYPE_NAME(long, "i64")
EMU_TYPE_NAME(unsigned long, "u64")
EMU_TYPE_NAME(long long, "i64")
EMU_TYPE_NAME(unsigned long long, "u64")
#undef EMU_TYPE_NAME
template <class T>
struct TypeName<T*> {
    static const char* get() {
        static char buf[64];
        if (!buf[0])
            snprintf(buf, sizeof buf, "*%s%s", std::is_const<T>::value ? "const " : "",
                     TypeName<typename std::remove_cv<T>::type>::get());
        return buf;
    }
};

template <class... A, size_t... I>
void run_with(void* fn, void** args, std::index_sequence<I...>) {
    reinterpret_cast<void (*)(A...)>(fn)(*static_cast<A*>(args[I])...);
}
template <class... A>
void run_kernel(void* fn, void** args) {
    run_with<A...>(fn, args, std::index_sequence_for<A...>{});
}
template <class... A>
KernelInfo kernel_info(const char* name, void (*fn)(A...)) {
    static const char* const types[] = {TypeName<A>::get()..., nullptr};
    return KernelInfo{name, reinterpret_cast<void*>(fn), &run_kernel<A...>, (int)sizeof...(A), types};
}

// Defined by the generated registry at the end of each unit.
const KernelInfo* registry(int* n);

}  // namespace emu

#define threadIdx (::emu::cur->tid)
#define blockIdx (::emu::block_idx)
#define blockDim (::emu::block_dim)
#define gridDim (::emu::grid_dim)

// ---- Synchronization ---------------------------------------------------------------------------
static inline void __syncthreads() { ::emu::block_barrier(::emu::SYNC, 0); }
static inline int __syncthreads_count(int p) { return ::emu::block_barrier(::emu::SYNC_COUNT, p); }
static inline int __syncthreads_and(int p) { return ::emu::block_barrier(::emu::SYNC_AND, p); }
static inline int __syncthreads_or(int p) { return ::emu::block_barrier(::emu::SYNC_OR, p); }
static inline void __syncwarp(unsigned mask = 0xffffffffu) { ::emu::warp_op(::emu::SYNCWARP, mask, 0, 0, 32); }
static inline void __threadfence() { __asm__ __volatile__("" ::: "memory"); }
static inline void __threadfence_block() { __asm__ __volatile__("" ::: "memory"); }
static inline void __threadfence_system() { __asm__ __volatile__("" ::: "memory"); }
static inline unsigned __activemask() { return ::emu::active_mask(); }
static inline void __nanosleep(unsigned) {}
[[noreturn]] static inline void __trap() { ::emu::trap("__trap()"); }
static inline long long clock64() { return ::emu::clock_ticks(); }

// ---- Warp intrinsics -----------------------------------------------------------------------------
template <class T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
    return ::emu::from_bits<T>(::emu::warp_op(::emu::SHFL_IDX, mask, ::emu::to_bits(var), src_lane, width));
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
    return ::emu::from_bits<T>(::emu::warp_op(::emu::SHFL_UP, mask, ::emu::to_bits(var), (int)delta, width));
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
    return ::emu::from_bits<T>(::emu::warp_op(::emu::SHFL_DOWN, mask, ::emu::to_bits(var), (int)delta, width));
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
    return ::emu::from_bits<T>(::emu::warp_op(::emu::SHFL_XOR, mask, ::emu::to_bits(var), lane_mask, width));
}
static inline unsigned __ballot_sync(unsigned mask, int pred) {
    return (unsigned)::emu::warp_op(::emu::BALLOT, mask, pred != 0, 0, 32);
}
static inline int __all_sync(unsigned mask, int pred) { return (int)::emu::warp_op(::emu::VOTE_ALL, mask, pred != 0, 0, 32); }
static inline int __any_sync(unsigned mask, int pred) { return (int)::emu::warp_op(::emu::VOTE_ANY, mask, pred != 0, 0, 32); }
static inline unsigned __reduce_add_sync(unsigned mask, unsigned v) {
    return (unsigned)::emu::warp_op(::emu::REDUCE_ADD, mask, v, 0, 32);
}
static inline int __reduce_add_sync(unsigned mask, int v) {
    return (int)(unsigned)::emu::warp_op(::emu::REDUCE_ADD, mask, (unsigned)v, 0, 32);
}
static inline unsigned __reduce_min_sync(unsigned mask, unsigned v) {
    return (unsigned)::emu::warp_op(::emu::REDUCE_MIN_U, mask, v, 0, 32);
}
static inline unsigned __reduce_max_sync(unsigned mask, unsigned v) {
    return (unsigned)::emu::warp_op(::emu::REDUCE_MAX_U, mask, v, 0, 32);
}
static inline int __reduce_min_sync(unsigned mask, int v) {
    return (int)(unsigned)::emu::warp_op(::emu::REDUCE_MIN_I, mask, (unsigned)v, 0, 32);
}
static inline int __reduce_max_sync(unsigned mask, int v) {
    return (int)(unsigned)::emu::warp_op(::emu::REDUCE_MAX_I, mask, (unsigned)v, 0, 32);
}
template <class T>
inline unsigned __match_any_sync(unsigned mask, T v) {
    return (unsigned)::emu::warp_op(::emu::MATCH_ANY, mask, ::emu::to_bits(v), 0, 32);
}

// ---- Atomics (fibers are cooperative: a plain read-modify-write is atomic) ------------------
#define EMU_ATOMIC(name, T, expr)          \
    static inline T name(T* a, T v) {      \
        T old = *a;                        \
        *a = (expr);                       \
        return old;                        \
    }
EMU_ATOMIC(atomicAdd, float, old + v)
EMU_ATOMIC(atomicAdd, double, old + v)
EMU_ATOMIC(atomicAdd, int, (int)((unsigned)old + (unsigned)v))
EMU_ATOMIC(atomicAdd, unsigned, old + v)
EMU_ATOMIC(atomicAdd, unsigned long long, old + v)
EMU_ATOMIC(atomicSub, int, (int)((unsigned)old - (unsigned)v))
EMU_ATOMIC(atomicSub, unsigned, old - v)
EMU_ATOMIC(atomicExch, int, v)
EMU_ATOMIC(atomicExch, unsigned, v)
EMU_ATOMIC(atomicExch, unsigned long long, v)
EMU_ATOMIC(atomicExch, float, v)
EMU_ATOMIC(atomicMin, int, v < old ? v : old)
EMU_ATOMIC(atomicMin, unsigned, v < old ? v : old)
EMU_ATOMIC(atomicMin, long long, v < old ? v : old)
EMU_ATOMIC(atomicMin, unsigned long long, v < old ? v : old)
EMU_ATOMIC(atomicMax, int, v > old ? v : old)
EMU_ATOMIC(atomicMax, unsigned, v > old ? v : old)
EMU_ATOMIC(atomicMax, long long, v > old ? v : old)
EMU_ATOMIC(atomicMax, unsigned long long, v > old ? v : old)
EMU_ATOMIC(atomicAnd, int, old & v)
EMU_ATOMIC(atomicAnd, unsigned, old & v)
EMU_ATOMIC(atomicAnd, unsigned long long, old & v)
EMU_ATOMIC(atomicOr, int, old | v)
EMU_ATOMIC(atomicOr, unsigned, old | v)
EMU_ATOMIC(atomicOr, unsigned long long, old | v)
EMU_ATOMIC(atomicXor, int, old ^ v)
EMU_ATOMIC(atomicXor, unsigned, old ^ v)
EMU_ATOMIC(atomicXor, unsigned long long, old ^ v)
EMU_ATOMIC(atomicInc, unsigned, old >= v ? 0u : old + 1u)
EMU_ATOMIC(atomicDec, unsigned, (old == 0u || old > v) ? v : old - 1u)
#undef EMU_ATOMIC
#define EMU_CAS(T)                                    \
    static inline T atomicCAS(T* a, T compare, T v) { \
        T old = *a;                                   \
        if (old == compare) *a = v;                   \
        return old;                                   \
    }
EMU_CAS(int)
EMU_CAS(unsigned)
EMU_CAS(unsigned long long)
EMU_CAS(unsigned short)
#undef EMU_CAS
#define atomicAdd_block atomicAdd
#define atomicAdd_system atomicAdd
#define atomicExch_block atomicExch
#define atomicCAS_block atomicCAS
#define atomicMax_block atomicMax
#define atomicMin_block atomicMin

// ---- Loads and stores with cache hints --------------------------------------------------------------
template <class T>
inline T __ldg(const T* p) { return *p; }
template <class T>
inline T __ldcg(const T* p) { return *p; }
template <class T>
inline T __ldca(const T* p) { return *p; }
template <class T>
inline T __ldcs(const T* p) { return *p; }
template <class T>
inline T __ldlu(const T* p) { return *p; }
template <class T>
inline void __stcg(T* p, T v) { *p = v; }
template <class T>
inline void __stcs(T* p, T v) { *p = v; }
template <class T>
inline void __stwb(T* p, T v) { *p = v; }

// ---- Integer intrinsics --------------------------------------------------------------------------------
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
static inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __ffsll(long long x) { return __builtin_ffsll(x); }
static inline unsigned __brev(unsigned x) {
    unsigned r = 0;
    for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
static inline unsigned long long __brevll(unsigned long long x) {
    unsigned long long r = 0;
    for (int i = 0; i < 64; ++i) r |= ((x >> i) & 1ull) << (63 - i);
    return r;
}
static inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
static inline int __mulhi(int a, int b) { return (int)(((long long)a * b) >> 32); }
static inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
static inline long long __mul64hi(long long a, long long b) { return (long long)(((__int128)a * b) >> 64); }
static inline int __mul24(int a, int b) { return ((a << 8) >> 8) * ((b << 8) >> 8); }
static inline unsigned __umul24(unsigned a, unsigned b) { return (a & 0xffffffu) * (b & 0xffffffu); }
static inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    unsigned long long v = ((unsigned long long)y << 32) | x;
    unsigned r = 0;
    for (int i = 0; i < 4; ++i) r |= (unsigned)((v >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
    return r;
}
static inline unsigned __funnelshift_l(unsigned lo, unsigned hi, unsigned s) {
    return (unsigned)(((((unsigned long long)hi << 32) | lo) << (s & 31)) >> 32);
}
static inline unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned s) {
    return (unsigned)((((unsigned long long)hi << 32) | lo) >> (s & 31));
}
static inline unsigned __funnelshift_lc(unsigned lo, unsigned hi, unsigned s) {
    return (unsigned)(((((unsigned long long)hi << 32) | lo) << (s > 32 ? 32 : s)) >> 32);
}
static inline unsigned __funnelshift_rc(unsigned lo, unsigned hi, unsigned s) {
    return (unsigned)((((unsigned long long)hi << 32) | lo) >> (s > 32 ? 32 : s));
}

// min / max: CUDA's overloads (same-type, and the usual mixed signed/unsigned ones).
#define EMU_MINMAX(T)                                             \
    static inline T min(T a, T b) { return b < a ? b : a; } \
    static inline T max(T a, T b) { return a < b ? b : a; }
EMU_MINMAX(int)
EMU_MINMAX(unsigned)
EMU_MINMAX(long)
EMU_MINMAX(unsigned long)
EMU_MINMAX(long long)
EMU_MINMAX(unsigned long long)
#undef EMU_MINMAX
static inline unsigned min(int a, unsigned b) { return min((unsigned)a, b); }
static inline unsigned min(unsigned a, int b) { return min(a, (unsigned)b); }
static inline unsigned max(int a, unsigned b) { return max((unsigned)a, b); }
static inline unsigned max(unsigned a, int b) { return max(a, (unsigned)b); }
static inline unsigned long long min(long long a, unsigned long long b) { return min((unsigned long long)a, b); }
static inline unsigned long long min(unsigned long long a, long long b) { return min(a, (unsigned long long)b); }
static inline unsigned long long max(long long a, unsigned long long b) { return max((unsigned long long)a, b); }
static inline unsigned long long max(unsigned long long a, long long b) { return max(a, (unsigned long long)b); }
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }
static inline double min(float a, double b) { return fmin(a, b); }
static inline double min(double a, float b) { return fmin(a, b); }
static inline double max(float a, double b) { return fmax(a, b); }
static inline double max(double a, float b) { return fmax(a, b); }
static inline unsigned umin(unsigned a, unsigned b) { return min(a, b); }
static inline unsigned umax(unsigned a, unsigned b) { return max(a, b); }
static inline long long llmin(long long a, long long b) { return min(a, b); }
static inline long long llmax(long long a, long long b) { return max(a, b); }
static inline unsigned long long ullmin(unsigned long long a, unsigned long long b) { return min(a, b); }
static inline unsigned long long ullmax(unsigned long long a, unsigned long long b) { return max(a, b); }

// ---- Float intrinsics (host libm, round-to-nearest; the GPU's approximate versions are ------
// within a few ulp of these) ----------------------------------------------------------------------------
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
static inline float rcbrtf(float x) { return 1.0f / cbrtf(x); }
// glibc declares these names itself (its internal aliases), hence macros.
#define __expf(x) expf(x)
#define __exp10f(x) powf(10.0f, (x))
#define __logf(x) logf(x)
#define __log2f(x) log2f(x)
#define __log10f(x) log10f(x)
#define __sinf(x) sinf(x)
#define __cosf(x) cosf(x)
#define __tanf(x) tanf(x)
#define __sincosf(x, s, c) (*(s) = sinf(x), *(c) = cosf(x), (void)0)
#define __powf(x, y) powf((x), (y))
static inline float __fdividef(float a, float b) { return a / b; }
static inline float fdividef(float a, float b) { return a / b; }
static inline float __frcp_rn(float x) { return 1.0f / x; }
static inline float __fsqrt_rn(float x) { return sqrtf(x); }
static inline float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
static inline double __dadd_rn(double a, double b) { return a + b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
static inline float __saturatef(float x) { return x != x ? 0.0f : fminf(fmaxf(x, 0.0f), 1.0f); }
static inline int __float2int_rn(float x) { return (int)nearbyintf(x); }
static inline int __float2int_rz(float x) { return (int)x; }
static inline int __float2int_rd(float x) { return (int)floorf(x); }
static inline int __float2int_ru(float x) { return (int)ceilf(x); }
static inline unsigned __float2uint_rn(float x) { return (unsigned)nearbyintf(x); }
static inline unsigned __float2uint_rz(float x) { return (unsigned)x; }
static inline long long __float2ll_rn(float x) { return (long long)nearbyintf(x); }
static inline long long __float2ll_rz(float x) { return (long long)x; }
static inline float __int2float_rn(int x) { return (float)x; }
static inline float __uint2float_rn(unsigned x) { return (float)x; }
static inline float __ll2float_rn(long long x) { return (float)x; }
static inline float __double2float_rn(double x) { return (float)x; }
static inline int __float_as_int(float x) { return ::emu::from_bits<int>(::emu::to_bits(x)); }
static inline unsigned __float_as_uint(float x) { return ::emu::from_bits<unsigned>(::emu::to_bits(x)); }
static inline float __int_as_float(int x) { return ::emu::from_bits<float>(::emu::to_bits(x)); }
static inline float __uint_as_float(unsigned x) { return ::emu::from_bits<float>(::emu::to_bits(x)); }
static inline long long __double_as_longlong(double x) { return ::emu::from_bits<long long>(::emu::to_bits(x)); }
static inline double __longlong_as_double(long long x) { return ::emu::from_bits<double>(::emu::to_bits(x)); }
