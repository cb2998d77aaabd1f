// The CUDA-on-CPU emulator's runtime (tests only; see README.md). Linked into every kernel
// file's shared library next to the generated registry, so each library has its own state.
//
// A block's threads are ucontext fibers with their own stacks; the scheduler resumes every
// runnable fiber once per round (forward, reverse or shuffled order) until all have exited.
// `__syncthreads()` and the warp intrinsics park the fiber until every thread they wait for
// has arrived. Errors (deadlock, a shuffle reading an exited lane, an invalid access to a
// kernel buffer, a time-out) abort the launch with a message naming the block and thread.
#include "cuda_emu.h"

#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include <mutex>
#include <string>
#include <vector>

#define EMU_EXPORT extern "C" __attribute__((visibility("default")))

// Static `__shared__` variables of this library (section bounds from the linker; null when the
// unit has none).
extern unsigned char __start_emu_shared[] __attribute__((weak, visibility("hidden")));
extern unsigned char __stop_emu_shared[] __attribute__((weak, visibility("hidden")));

namespace emu {

// sm_90's limit per block (static + dynamic, with the opt-in attribute).
constexpr size_t DYN_SHARED_MAX = 227 * 1024;
constexpr size_t STACK_BYTES = 64 * 1024;

alignas(4096) unsigned char dyn_shared[DYN_SHARED_MAX + 4096];
Thread* cur = nullptr;
uint3 block_idx;
dim3 block_dim, grid_dim;

namespace {

enum State { RUNNABLE, AT_BLOCK, AT_WARP, DONE };

struct Fiber : Thread {
    ucontext_t ctx;
    unsigned lin;
    State state;
    // Block barrier: the op and predicate; warp op: op, mask, value, arg, width; result.
    int op;
    unsigned mask;
    unsigned long long val;
    int arg;
    int width;
    unsigned long long res;
};

// One guarded copy of a buffer argument (emu_launch_ex).
struct Region {
    int arg;
    const char* ty;
    unsigned char* map;   // the whole mapping: guard page, data pages, guard page
    size_t map_bytes;
    unsigned char* data;  // the buffer, ending within 15 bytes of the trailing guard page
    size_t bytes;
    unsigned char* page_lo;  // first data page
    unsigned char* page_hi;  // trailing guard page
    bool readonly;
};

struct Launch {
    const KernelInfo* k = nullptr;
    void** args = nullptr;
    unsigned nthreads = 0;
    unsigned order = 0;
    std::vector<Fiber> fibers;
    unsigned live = 0, arrived = 0;
    int bar_op = 0;
    bool failed = false;
    char err[2048];
    ucontext_t sched;
    unsigned long long rng = 0;
    std::vector<unsigned> perm;
    std::vector<Region> regions;
    // Signal handling state.
    sigjmp_buf jb;
    volatile sig_atomic_t in_run = 0;
    pthread_t thread;
    unsigned char* stacks = nullptr;
    size_t stacks_n = 0;
};

Launch L;
std::mutex launch_mutex;

const char* op_name(int op) {
    switch (op) {
        case SHFL_IDX: return "__shfl_sync";
        case SHFL_UP: return "__shfl_up_sync";
        case SHFL_DOWN: return "__shfl_down_sync";
        case SHFL_XOR: return "__shfl_xor_sync";
        case BALLOT: return "__ballot_sync";
        case VOTE_ALL: return "__all_sync";
        case VOTE_ANY: return "__any_sync";
        case SYNCWARP: return "__syncwarp";
        case REDUCE_ADD: return "__reduce_add_sync";
        case REDUCE_MIN_U: case REDUCE_MIN_I: return "__reduce_min_sync";
        case REDUCE_MAX_U: case REDUCE_MAX_I: return "__reduce_max_sync";
        case MATCH_ANY: return "__match_any_sync";
    }
    return "?";
}
const char* block_op_name(int op) {
    switch (op) {
        case SYNC: return "__syncthreads";
        case SYNC_COUNT: return "__syncthreads_count";
        case SYNC_AND: return "__syncthreads_and";
        case SYNC_OR: return "__syncthreads_or";
    }
    return "?";
}

Fiber* me() { return static_cast<Fiber*>(cur); }

// "kernel `k`, block (x,y,z), thread (x,y,z): " (thread omitted outside a fiber).
int where(char* buf, size_t n, const Fiber* f) {
    int w = snprintf(buf, n, "kernel `%s`, block (%u,%u,%u)", L.k ? L.k->name : "?", block_idx.x, block_idx.y,
                     block_idx.z);
    if (f) w += snprintf(buf + w, n > (size_t)w ? n - w : 0, ", thread (%u,%u,%u)", f->tid.x, f->tid.y, f->tid.z);
    return w;
}

void set_err(const Fiber* f, const char* fmt, va_list ap) {
    int w = where(L.err, sizeof L.err, f);
    w += snprintf(L.err + w, sizeof L.err - w, ": ");
    vsnprintf(L.err + w, sizeof L.err - w, fmt, ap);
    L.failed = true;
}

// Records an error and leaves the running fiber for good.
[[noreturn]] __attribute__((format(printf, 1, 2))) void fail(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    set_err(me(), fmt, ap);
    va_end(ap);
    for (;;) swapcontext(&me()->ctx, &L.sched);
}

// Records an error from the scheduler (no fiber running).
__attribute__((format(printf, 1, 2))) void fail_sched(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    set_err(nullptr, fmt, ap);
    va_end(ap);
}

void yield() { swapcontext(&me()->ctx, &L.sched); }

// ---- Block barrier ---------------------------------------------------------------------------

void release_block() {
    unsigned count = 0, n = 0;
    for (Fiber& f : L.fibers)
        if (f.state == AT_BLOCK) {
            ++n;
            count += f.val != 0;
        }
    unsigned long long r = 0;
    if (L.bar_op == SYNC_COUNT) r = count;
    if (L.bar_op == SYNC_AND) r = count == n;
    if (L.bar_op == SYNC_OR) r = count > 0;
    for (Fiber& f : L.fibers)
        if (f.state == AT_BLOCK) {
            f.res = r;
            f.state = RUNNABLE;
        }
    L.arrived = 0;
}

// ---- Warp barriers ---------------------------------------------------------------------------

const char* lane_absence(unsigned t) {
    if (t >= L.nthreads) return "does not exist (the block has fewer threads)";
    return "has exited";
}

// Completes the warp op of the lanes in `mask` of warp `w` if every non-exited lane of the mask
// has arrived at it; checks that no lane reads an exited lane.
void try_complete_warp(unsigned w, unsigned mask, int op) {
    unsigned base = w * 32, arrived = 0;
    for (unsigned lane = 0; lane < 32; ++lane) {
        if (!(mask >> lane & 1)) continue;
        unsigned t = base + lane;
        if (t >= L.nthreads || L.fibers[t].state == DONE) continue;
        Fiber& f = L.fibers[t];
        if (f.state != AT_WARP) return;  // still running or at __syncthreads: wait
        if (f.mask != mask)
            fail("lanes of warp %u wait at warp intrinsics with different masks: 0x%08x here, 0x%08x at lane %u (%s)",
                 w, mask, f.mask, lane, op_name(f.op));
        if (f.op != op)
            fail("lanes of warp %u (mask 0x%08x) reached different warp intrinsics: %s and %s at lane %u", w, mask,
                 op_name(op), op_name(f.op), lane);
        arrived |= 1u << lane;
    }
    if (!arrived) return;
    unsigned long long acc = 0;
    bool first = true;
    for (unsigned lane = 0; lane < 32; ++lane) {
        if (!(arrived >> lane & 1)) continue;
        unsigned long long v = L.fibers[base + lane].val;
        switch (op) {
            case BALLOT: acc |= (unsigned long long)(v != 0) << lane; break;
            case VOTE_ALL: acc = (first ? 1 : acc) & (v != 0); break;
            case VOTE_ANY: acc |= v != 0; break;
            case REDUCE_ADD: acc = (unsigned)(acc + v); break;
            case REDUCE_MIN_U: acc = first || (unsigned)v < (unsigned)acc ? v : acc; break;
            case REDUCE_MAX_U: acc = first || (unsigned)v > (unsigned)acc ? v : acc; break;
            case REDUCE_MIN_I: acc = first || (int)(unsigned)v < (int)(unsigned)acc ? v : acc; break;
            case REDUCE_MAX_I: acc = first || (int)(unsigned)v > (int)(unsigned)acc ? v : acc; break;
            default: break;
        }
        first = false;
    }
    for (unsigned lane = 0; lane < 32; ++lane) {
        if (!(arrived >> lane & 1)) continue;
        Fiber& f = L.fibers[base + lane];
        unsigned wd = (unsigned)f.width, seg = lane & ~(wd - 1), src = lane;
        switch (op) {
            case SHFL_IDX: src = seg + ((unsigned)f.arg & (wd - 1)); break;
            case SHFL_UP: src = (lane & (wd - 1)) < (unsigned)f.arg ? lane : lane - (unsigned)f.arg; break;
            case SHFL_DOWN: src = (lane & (wd - 1)) + (unsigned)f.arg >= wd ? lane : lane + (unsigned)f.arg; break;
            case SHFL_XOR: src = lane ^ (unsigned)f.arg; src = src >= seg + wd ? lane : src; break;
            default: break;
        }
        if (op <= SHFL_XOR) {
            if (src != lane && !(arrived >> src & 1)) {
                const char* why = (mask >> src & 1) ? lane_absence(base + src) : "is not in the mask";
                cur = &f;
                fail("%s(mask 0x%08x) on lane %u reads lane %u, which %s: undefined on a GPU", op_name(op), mask, lane,
                     src, why);
            }
            f.res = L.fibers[base + src].val;
        } else if (op == MATCH_ANY) {
            unsigned m = 0;
            for (unsigned j = 0; j < 32; ++j)
                if ((arrived >> j & 1) && L.fibers[base + j].val == f.val) m |= 1u << j;
            f.res = m;
        } else {
            f.res = acc;
        }
    }
    for (unsigned lane = 0; lane < 32; ++lane)
        if (arrived >> lane & 1) L.fibers[base + lane].state = RUNNABLE;
}

// ---- Fibers -----------------------------------------------------------------------------------

void fiber_exit(Fiber* f) {
    f->state = DONE;
    --L.live;
    // Exited threads count as arrived at __syncthreads.
    if (L.arrived > 0 && L.arrived == L.live) release_block();
    // A warp-mate waiting for this lane may now be complete (or read an exited lane).
    unsigned w = f->lin / 32, lane = f->lin % 32;
    for (unsigned j = 0; j < 32; ++j) {
        unsigned t = w * 32 + j;
        if (t >= L.nthreads) break;
        Fiber& g = L.fibers[t];
        if (g.state == AT_WARP && (g.mask >> lane & 1)) try_complete_warp(w, g.mask, g.op);
    }
}

void fiber_main() {
    Fiber* f = me();
    L.k->run(L.k->fn, L.args);
    cur = f;
    fiber_exit(f);
    for (;;) swapcontext(&f->ctx, &L.sched);
}

unsigned long long next_rand() {
    L.rng ^= L.rng << 13;
    L.rng ^= L.rng >> 7;
    L.rng ^= L.rng << 17;
    return L.rng;
}

// "threads 0-31 wait at __shfl_down_sync (mask 0xffffffff); threads 32-255 at __syncthreads"
void describe_deadlock() {
    std::string s;
    char what[96], prev[96] = "";
    unsigned start = 0;
    auto flush = [&](unsigned end) {
        if (!prev[0]) return;
        char buf[160];
        if (start + 1 == end) snprintf(buf, sizeof buf, "%sthread %u %s", s.empty() ? "" : "; ", start, prev);
        else snprintf(buf, sizeof buf, "%sthreads %u-%u %s", s.empty() ? "" : "; ", start, end - 1, prev);
        s += buf;
    };
    for (unsigned t = 0; t <= L.nthreads; ++t) {
        what[0] = 0;
        if (t < L.nthreads) {
            const Fiber& f = L.fibers[t];
            if (f.state == AT_BLOCK) snprintf(what, sizeof what, "waiting at %s()", block_op_name(f.op));
            if (f.state == AT_WARP) snprintf(what, sizeof what, "waiting at %s(mask 0x%08x)", op_name(f.op), f.mask);
        }
        if (strcmp(what, prev) != 0) {
            flush(t);
            strcpy(prev, what);
            start = t;
        }
    }
    fail_sched("deadlock: %s (exited threads count as arrived at __syncthreads, not at warp intrinsics)", s.c_str());
}

void ensure_stacks(unsigned n) {
    if (L.stacks_n >= n) return;
    if (L.stacks) munmap(L.stacks, L.stacks_n * (STACK_BYTES + 4096));
    size_t bytes = (size_t)n * (STACK_BYTES + 4096);
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        L.stacks = nullptr;
        L.stacks_n = 0;
        return;
    }
    L.stacks = static_cast<unsigned char*>(p);
    L.stacks_n = n;
    // A guard page below each stack: an overflow faults instead of corrupting a neighbour.
    for (unsigned i = 0; i < n; ++i) mprotect(L.stacks + (size_t)i * (STACK_BYTES + 4096), 4096, PROT_NONE);
}

void run_block(unsigned shmem) {
    unsigned n = L.nthreads;
    // Poison shared memory: a read before any write of this block sees 0xFF bytes (NaN).
    unsigned char *lo = __start_emu_shared, *hi = __stop_emu_shared;
    if (lo && hi > lo) memset(lo, 0xff, (size_t)(hi - lo));
    size_t dyn = shmem + 256 < DYN_SHARED_MAX ? shmem + 256 : DYN_SHARED_MAX;
    memset(dyn_shared, 0xff, dyn);
    for (unsigned i = 0; i < n; ++i) {
        Fiber& f = L.fibers[i];
        f.lin = i;
        f.tid = uint3{i % block_dim.x, (i / block_dim.x) % block_dim.y, i / (block_dim.x * block_dim.y)};
        f.state = RUNNABLE;
        f.op = 0;
        f.mask = 0;
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = L.stacks + (size_t)i * (STACK_BYTES + 4096) + 4096;
        f.ctx.uc_stack.ss_size = STACK_BYTES;
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, fiber_main, 0);
    }
    L.live = n;
    L.arrived = 0;
    for (unsigned round = 0; L.live > 0; ++round) {
        if (L.order == 2) {
            for (unsigned i = 0; i < n; ++i) L.perm[i] = i;
            for (unsigned i = n; i > 1; --i) std::swap(L.perm[i - 1], L.perm[next_rand() % i]);
        }
        bool ran = false;
        for (unsigned j = 0; j < n; ++j) {
            unsigned i = L.order == 0 ? j : L.order == 1 ? n - 1 - j : L.perm[j];
            Fiber& f = L.fibers[i];
            if (f.state != RUNNABLE) continue;
            cur = &f;
            swapcontext(&L.sched, &f.ctx);
            cur = nullptr;
            ran = true;
            if (L.failed) return;
        }
        if (!ran) {
            describe_deadlock();
            return;
        }
    }
}

// ---- Signals: invalid accesses and time-outs become launch errors ---------------------------

struct sigaction old_segv, old_bus, old_alrm;
stack_t old_altstack;
alignas(16) unsigned char altstack[64 * 1024];

// What an invalid access at `addr` hit: a guard page or read-only page of a buffer argument, a
// thread's stack guard, or something else.
void describe_fault(char* out, size_t n, void* addr, bool write) {
    unsigned char* a = static_cast<unsigned char*>(addr);
    const char* rw = write ? "write" : "access";
    for (const Region& r : L.regions) {
        if (a < r.map || a >= r.map + r.map_bytes) continue;
        long long off = (long long)(a - r.data);
        const char* where_ = off < 0 ? "before the start" : off >= (long long)r.bytes ? "past the end" : "inside";
        if (off >= 0 && off < (long long)r.bytes && r.readonly) {
            snprintf(out, n, "invalid write at byte %lld of argument %d (`%s`, %zu bytes), which is const", off, r.arg,
                     r.ty, r.bytes);
        } else {
            snprintf(out, n, "invalid %s at byte offset %lld of argument %d (`%s`, %zu bytes): %s", rw, off, r.arg,
                     r.ty, r.bytes, where_);
        }
        return;
    }
    if (L.stacks && a >= L.stacks && a < L.stacks + L.stacks_n * (STACK_BYTES + 4096)) {
        snprintf(out, n, "stack overflow of a thread (the emulator gives each thread %zu KiB)", STACK_BYTES / 1024);
        return;
    }
    snprintf(out, n, "invalid memory %s at %p (not in any buffer argument)", rw, addr);
}

void on_signal(int sig, siginfo_t* info, void* uctx) {
    if (!L.in_run || !pthread_equal(pthread_self(), L.thread)) {
        // Not ours: hand it to the previous handler.
        struct sigaction* old = sig == SIGSEGV ? &old_segv : sig == SIGBUS ? &old_bus : &old_alrm;
        if (old->sa_flags & SA_SIGINFO) {
            if (old->sa_sigaction) return old->sa_sigaction(sig, info, uctx);
        } else if (old->sa_handler != SIG_IGN && old->sa_handler != SIG_DFL) {
            return old->sa_handler(sig);
        }
        if (sig != SIGALRM) sigaction(sig, old, nullptr);  // re-fault into the default action
        return;
    }
    int w = where(L.err, sizeof L.err, me());
    w += snprintf(L.err + w, sizeof L.err - w, ": ");
    if (sig == SIGALRM) {
        snprintf(L.err + w, sizeof L.err - w, "timed out (an endless loop, or a launch too large to emulate)");
    } else {
        bool write = false;
#if defined(__x86_64__)
        write = (static_cast<ucontext_t*>(uctx)->uc_mcontext.gregs[REG_ERR] & 2) != 0;
#endif
        describe_fault(L.err + w, sizeof L.err - w, info->si_addr, write);
    }
    L.failed = true;
    L.in_run = 0;
    siglongjmp(L.jb, 1);
}

// Runs every block of the launch; returns false with L.err on failure.
bool run_all(dim3 grid, unsigned shmem, unsigned timeout_ms) {
    L.thread = pthread_self();
    stack_t ss{};
    ss.ss_sp = altstack;
    ss.ss_size = sizeof altstack;
    sigaltstack(&ss, &old_altstack);
    struct sigaction sa{};
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &old_segv);
    sigaction(SIGBUS, &sa, &old_bus);
    sigaction(SIGALRM, &sa, &old_alrm);
    timer_t timer{};
    bool have_timer = false;
    if (timeout_ms > 0) {
        struct sigevent sev{};
        sev.sigev_notify = SIGEV_THREAD_ID;
        sev.sigev_signo = SIGALRM;
        sev._sigev_un._tid = (pid_t)syscall(SYS_gettid);
        if (timer_create(CLOCK_MONOTONIC, &sev, &timer) == 0) {
            have_timer = true;
            struct itimerspec its{};
            its.it_value.tv_sec = timeout_ms / 1000;
            its.it_value.tv_nsec = (long)(timeout_ms % 1000) * 1000000L;
            timer_settime(timer, 0, &its, nullptr);
        }
    }
    unsigned long long nblocks = (unsigned long long)grid.x * grid.y * grid.z;
    unsigned long long mul = 0x9e3779b97f4a7c15ull % (nblocks ? nblocks : 1) | 1;
    if (L.order == 2)
        while (nblocks > 1) {  // a multiplier coprime with nblocks: b -> b*mul mod n is a permutation
            unsigned long long a = mul, b = nblocks;
            while (b) {
                unsigned long long t = a % b;
                a = b;
                b = t;
            }
            if (a == 1) break;
            mul += 2;
        }
    if (sigsetjmp(L.jb, 1) == 0) {
        L.in_run = 1;
        for (unsigned long long j = 0; j < nblocks && !L.failed; ++j) {
            unsigned long long b = L.order == 0 ? j : L.order == 1 ? nblocks - 1 - j : (j * mul + 7) % nblocks;
            block_idx = uint3{(unsigned)(b % grid.x), (unsigned)(b / grid.x % grid.y), (unsigned)(b / grid.x / grid.y)};
            L.rng = 0x2545f4914f6cdd1dull ^ (b * 0x9e3779b97f4a7c15ull) ^ 1;
            run_block(shmem);
        }
        L.in_run = 0;
    }
    cur = nullptr;
    if (have_timer) {
        timer_delete(timer);
        // Drain an expiry that was raised but not yet delivered.
        sigset_t set, old;
        sigemptyset(&set);
        sigaddset(&set, SIGALRM);
        pthread_sigmask(SIG_BLOCK, &set, &old);
        struct timespec zero{};
        while (sigtimedwait(&set, nullptr, &zero) == SIGALRM) {
        }
        pthread_sigmask(SIG_SETMASK, &old, nullptr);
    }
    sigaction(SIGSEGV, &old_segv, nullptr);
    sigaction(SIGBUS, &old_bus, nullptr);
    sigaction(SIGALRM, &old_alrm, nullptr);
    sigaltstack(&old_altstack, nullptr);
    return !L.failed;
}

int copy_err(char* err, int errlen, const char* msg) {
    if (err && errlen > 0) snprintf(err, (size_t)errlen, "%s", msg);
    return 1;
}

__attribute__((format(printf, 3, 4))) int errf(char* err, int errlen, const char* fmt, ...) {
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return copy_err(err, errlen, buf);
}

const KernelInfo* find(const char* name, std::string* names) {
    int n = 0;
    const KernelInfo* ks = registry(&n);
    for (int i = 0; i < n; ++i) {
        if (strcmp(ks[i].name, name) == 0) return &ks[i];
        if (names) *names += (i ? ", " : "") + std::string(ks[i].name);
    }
    return nullptr;
}

std::string signature(const KernelInfo* k) {
    std::string s = std::string(k->name) + "(";
    for (int i = 0; i < k->nparams; ++i) s += (i ? ", " : "") + std::string(k->param_types[i]);
    return s + ")";
}

// The common launch path: checks the configuration, runs the blocks.
int launch(const KernelInfo* k, const unsigned grid[3], const unsigned block[3], unsigned shmem, void** args,
           unsigned order, unsigned timeout_ms, char* err, int errlen) {
    unsigned long long threads = (unsigned long long)block[0] * block[1] * block[2];
    if (!grid[0] || !grid[1] || !grid[2] || !block[0] || !block[1] || !block[2])
        return errf(err, errlen, "launch of `%s`: a zero grid or block dimension", k->name);
    if (block[0] > 1024 || block[1] > 1024 || block[2] > 64 || threads > 1024)
        return errf(err, errlen, "launch of `%s`: block (%u,%u,%u) exceeds 1024 threads (or 1024 x 1024 x 64)", k->name,
                    block[0], block[1], block[2]);
    if (grid[0] > 0x7fffffffu || grid[1] > 65535 || grid[2] > 65535)
        return errf(err, errlen, "launch of `%s`: grid (%u,%u,%u) exceeds (2^31-1, 65535, 65535)", k->name, grid[0],
                    grid[1], grid[2]);
    if (shmem > DYN_SHARED_MAX)
        return errf(err, errlen, "launch of `%s`: %u bytes of dynamic shared memory exceed sm_90's 227 KiB", k->name,
                    shmem);
    ensure_stacks((unsigned)threads);
    if (!L.stacks) return errf(err, errlen, "launch of `%s`: cannot map thread stacks", k->name);
    L.k = k;
    L.args = args;
    L.nthreads = (unsigned)threads;
    L.order = order;
    L.failed = false;
    L.err[0] = 0;
    L.fibers.assign(threads, Fiber{});
    L.perm.assign(threads, 0);
    block_dim = dim3(block[0], block[1], block[2]);
    grid_dim = dim3(grid[0], grid[1], grid[2]);
    bool ok = run_all(grid_dim, shmem, timeout_ms);
    L.k = nullptr;
    if (!ok) return copy_err(err, errlen, L.err);
    return 0;
}

// Rust's spelling of a parameter type against the kernel's: equal up to pointee constness, and
// a const buffer (a shared borrow) only for a const pointer.
bool type_ok(const char* kernel, const char* given, int kind) {
    auto strip = [](const char* s) { return strncmp(s, "*const ", 7) == 0 ? std::string("*") + (s + 7) : std::string(s); };
    if (strip(kernel) != strip(given)) return false;
    bool kconst = strncmp(kernel, "*const ", 7) == 0;
    return !(kind == 1 && !kconst);
}

}  // namespace

}  // namespace emu

using namespace emu;

// One kernel argument for emu_launch_ex.
struct EmuArg {
    const char* ty;      // "f32", "i64", "*const f32", "*f32", …
    void* data;          // the scalar's value, or the host buffer
    unsigned long long bytes;
    int kind;            // 0 scalar, 1 const buffer (read only), 2 mutable buffer (copied back)
};

// Launches kernel `name` like cuLaunchKernel: args[i] points to the i-th argument's value (a
// device pointer is a host pointer here). Blocks run in order, threads forward. Returns 0, or
// non-zero with a message in `err`.
EMU_EXPORT int emu_launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                          unsigned bz, unsigned shmem_bytes, void** args, char* err, int errlen) {
    std::lock_guard<std::mutex> lock(launch_mutex);
    std::string names;
    const KernelInfo* k = find(name, &names);
    if (!k) return errf(err, errlen, "no kernel `%s` in this module (it has: %s)", name, names.c_str());
    const unsigned grid[3] = {gx, gy, gz}, block[3] = {bx, by, bz};
    return launch(k, grid, block, shmem_bytes, args, 0, 0, err, errlen);
}

// The checked launch the tests use: argument count and types are checked against the kernel's
// signature; every buffer is copied into its own mapping between guard pages (const ones
// read-only), so an out-of-bounds access is reported with the argument and offset; bytes
// written just outside a buffer are caught after the launch. `order`: 0 forward, 1 reverse,
// 2 shuffled (threads between barriers, and blocks). `timeout_ms`: 0 for none.
EMU_EXPORT int emu_launch_ex(const char* name, const unsigned grid[3], const unsigned block[3], unsigned shmem_bytes,
                             const EmuArg* args, int nargs, unsigned order, unsigned timeout_ms, char* err,
                             int errlen) {
    std::lock_guard<std::mutex> lock(launch_mutex);
    std::string names;
    const KernelInfo* k = find(name, &names);
    if (!k) return errf(err, errlen, "no kernel `%s` in this module (it has: %s)", name, names.c_str());
    std::string sig = signature(k);
    if (nargs != k->nparams)
        return errf(err, errlen, "`%s` takes %d arguments, the launch passes %d", sig.c_str(), k->nparams, nargs);
    for (int i = 0; i < nargs; ++i)
        if (!type_ok(k->param_types[i], args[i].ty, args[i].kind))
            return errf(err, errlen, "`%s`: argument %d is `%s`, the launch passes `%s`%s", sig.c_str(), i,
                        k->param_types[i], args[i].ty,
                        args[i].kind == 1 ? " (a shared borrow: pass the buffer mutably if the kernel writes it)" : "");
    const size_t page = 4096;
    std::vector<void*> ptrs(nargs, nullptr);
    std::vector<void*> argv(nargs, nullptr);
    L.regions.clear();
    int rc = 0;
    for (int i = 0; i < nargs && rc == 0; ++i) {
        if (args[i].kind == 0) {
            argv[i] = args[i].data;
            continue;
        }
        size_t bytes = args[i].bytes, padded = (bytes + 15) & ~(size_t)15;
        size_t data_pages = (padded + page - 1) / page, map_bytes = (data_pages + 2) * page;
        void* m = mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) {
            rc = errf(err, errlen, "cannot map %zu bytes for argument %d", bytes, i);
            break;
        }
        Region r;
        r.arg = i;
        r.ty = k->param_types[i];
        r.map = static_cast<unsigned char*>(m);
        r.map_bytes = map_bytes;
        r.page_lo = r.map + page;
        r.page_hi = r.map + page + data_pages * page;
        r.data = r.page_hi - padded;
        r.bytes = bytes;
        r.readonly = args[i].kind == 1;
        memset(r.page_lo, 0xff, data_pages * page);  // canaries around the data (NaN if read)
        if (bytes) memcpy(r.data, args[i].data, bytes);
        mprotect(r.map, page, PROT_NONE);
        mprotect(r.page_hi, page, PROT_NONE);
        if (r.readonly && data_pages) mprotect(r.page_lo, data_pages * page, PROT_READ);
        L.regions.push_back(r);
        ptrs[i] = r.data;
        argv[i] = &ptrs[i];
    }
    if (rc == 0) rc = launch(k, grid, block, shmem_bytes, argv.data(), order, timeout_ms, err, errlen);
    if (rc == 0) {
        // Writes just outside a buffer (within its pages) changed the canaries.
        for (const Region& r : L.regions) {
            for (unsigned char* p = r.page_lo; p < r.page_hi && rc == 0; ++p) {
                if (p == r.data) p += r.bytes;
                if (p < r.page_hi && *p != 0xff) {
                    long long off = (long long)(p - r.data);
                    rc = errf(err, errlen, "kernel `%s` wrote byte offset %lld of argument %d (`%s`, %zu bytes): %s",
                              k->name, off, r.arg, r.ty, r.bytes, off < 0 ? "before the start" : "past the end");
                }
            }
        }
    }
    if (rc == 0)
        for (int i = 0; i < nargs; ++i)
            if (args[i].kind == 2 && args[i].bytes) memcpy(args[i].data, ptrs[i], args[i].bytes);
    for (const Region& r : L.regions) munmap(r.map, r.map_bytes);
    L.regions.clear();
    return rc;
}

// The kernels of this module: their number, and name / signature of the i-th.
EMU_EXPORT int emu_kernel_count() {
    int n = 0;
    registry(&n);
    return n;
}
EMU_EXPORT const char* emu_kernel_name(int i) {
    int n = 0;
    const KernelInfo* ks = registry(&n);
    return i >= 0 && i < n ? ks[i].name : nullptr;
}
EMU_EXPORT int emu_kernel_signature(int i, char* buf, int len) {
    int n = 0;
    const KernelInfo* ks = registry(&n);
    if (i < 0 || i >= n) return 1;
    snprintf(buf, (size_t)len, "%s", signature(&ks[i]).c_str());
    return 0;
}

// ---- Device-side helpers the header declares -------------------------------------------------

namespace emu {

int block_barrier(int op, int pred) {
    Fiber* f = me();
    if (L.arrived > 0 && L.bar_op != op)
        fail("threads reached different block barriers: %s here, %s elsewhere", block_op_name(op),
             block_op_name(L.bar_op));
    L.bar_op = op;
    f->op = op;
    f->val = pred != 0;
    f->state = AT_BLOCK;
    if (++L.arrived == L.live) release_block();
    yield();
    return (int)f->res;
}

unsigned long long warp_op(int op, unsigned mask, unsigned long long value, int arg, int width) {
    Fiber* f = me();
    unsigned lane = f->lin % 32;
    if (!(mask >> lane & 1))
        fail("%s(mask 0x%08x) called by lane %u, which is not in the mask", op_name(op), mask, lane);
    if (width < 1 || width > 32 || (width & (width - 1)))
        fail("%s: width %d is not a power of two in 1..32", op_name(op), width);
    f->op = op;
    f->mask = mask;
    f->val = value;
    f->arg = arg;
    f->width = width;
    f->state = AT_WARP;
    try_complete_warp(f->lin / 32, mask, op);
    cur = f;
    yield();
    return f->res;
}

unsigned active_mask() {
    Fiber* f = me();
    unsigned w = f->lin / 32, m = 0;
    for (unsigned j = 0; j < 32 && w * 32 + j < L.nthreads; ++j)
        if (L.fibers[w * 32 + j].state != DONE) m |= 1u << j;
    return m;
}

void trap(const char* what) { fail("%s", what); }

long long clock_ticks() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

}  // namespace emu
