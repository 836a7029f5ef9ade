// The fiber scheduler behind cuda_emulation.h: each thread of a block is a fiber with its own stack;
// the scheduler resumes every runnable fiber in the chosen order, then opens the barriers that all
// their threads have reached. A block's threads meet at a barrier tens of times (every warp shuffle
// is one), so a switch must be cheap: on x86-64 it saves the callee-saved registers and the stack
// pointer (about 10 ns), elsewhere it is ucontext's swapcontext (a system call per switch).
#include "cuda_emulation.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#include <cstdlib>
#include <exception>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define VDM_EMULATION_ASAN 1
#endif

#if defined(__x86_64__)
// vdm_emulation_switch(save, load): saves the callee-saved registers, the SSE control word and the
// x87 control word on the current stack, stores the stack pointer in *save, and resumes the context
// whose stack pointer is `load` (System V x86-64 calling convention).
extern "C" void vdm_emulation_switch(void** save, void* load);
asm(R"(
  .text
  .globl vdm_emulation_switch
  .type vdm_emulation_switch, @function
vdm_emulation_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size vdm_emulation_switch, .-vdm_emulation_switch
  .section .note.GNU-stack,"",@progbits
  .text
)");
#endif

namespace vdm::cuda_emulation {

namespace {

#if defined(__x86_64__)
struct Context {
  void* sp = nullptr;
};
void switch_context(Context& save, const Context& load) { vdm_emulation_switch(&save.sp, load.sp); }
// A context that enters `entry` on the given stack at its first switch.
Context make_context(char* stack, std::size_t bytes, void (*entry)()) {
  auto top = reinterpret_cast<uintptr_t>(stack + bytes) & ~uintptr_t(15);
  auto* frame = reinterpret_cast<uint64_t*>(top);
  *--frame = 0;                                   // entry's return address: it never returns
  *--frame = reinterpret_cast<uint64_t>(entry);   // where vdm_emulation_switch's ret goes
  for (int r = 0; r < 6; ++r) *--frame = 0;       // rbp, rbx, r12..r15
  uint32_t mxcsr = 0;
  uint16_t fpcw = 0;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpcw));
  *--frame = uint64_t(mxcsr) | uint64_t(fpcw) << 32;
  return Context{frame};
}
#else
struct Context {
  ucontext_t uc{};
};
void switch_context(Context& save, const Context& load) { swapcontext(&save.uc, &load.uc); }
Context make_context(char* stack, std::size_t bytes, void (*entry)()) {
  Context c;
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = bytes;
  c.uc.uc_link = nullptr;  // fibers end by switching back themselves
  makecontext(&c.uc, entry, 0);
  return c;
}
#endif

constexpr std::size_t kStackBytes = 256 * 1024;
constexpr int kWarp = 32;

enum class State { kRunnable, kAtBlockBarrier, kAtWarpBarrier, kDone };

struct Fiber {
  Context context;
  State state = State::kRunnable;
  dim3 thread;
  std::exception_ptr error;
};

struct Launch {
  const char* kernel = "";
  dim3 grid, block, current_block;
  const std::function<void()>* body = nullptr;
  std::vector<Fiber> fibers;
  std::vector<std::unique_ptr<char[]>> stacks;
  std::vector<float> shared;  // dynamic shared memory, in floats
  // The lanes' shuffle values, 16 bytes per thread, in two sets used by alternate shuffles: a lane
  // cannot come back to a set before every lane of its warp has read it (it passes the other set's
  // barrier first), so one barrier per shuffle suffices.
  std::vector<unsigned char> slots[2];
  std::vector<unsigned char> next_set;  // per thread
  Context scheduler;
  int running = -1;
#ifdef VDM_EMULATION_ASAN
  const void* scheduler_stack = nullptr;
  std::size_t scheduler_stack_size = 0;
#endif
};

ThreadOrder g_order = ThreadOrder::kAscending;
Launch* g_launch = nullptr;  // the launch in progress (launches do not nest)

[[noreturn]] void fail(const std::string& what) {
  throw std::runtime_error("CUDA emulation, kernel " + std::string(g_launch ? g_launch->kernel : "?") + ": " + what);
}

Launch& launch() {
  if (!g_launch || g_launch->running < 0) throw std::logic_error("CUDA emulation: a device function called outside a kernel");
  return *g_launch;
}

// Switches from the running fiber back to the scheduler, and returns when the scheduler resumes it.
void yield_to_scheduler(Launch& l) {
  Fiber& f = l.fibers[std::size_t(l.running)];
#ifdef VDM_EMULATION_ASAN
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(&fake_stack, l.scheduler_stack, l.scheduler_stack_size);
#endif
  switch_context(f.context, l.scheduler);
#ifdef VDM_EMULATION_ASAN
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
}

void fiber_main() {
  Launch& l = *g_launch;
#ifdef VDM_EMULATION_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &l.scheduler_stack, &l.scheduler_stack_size);
#endif
  Fiber& f = l.fibers[std::size_t(l.running)];
  try {
    (*l.body)();
  } catch (...) {
    f.error = std::current_exception();
  }
  f.state = State::kDone;
#ifdef VDM_EMULATION_ASAN
  __sanitizer_start_switch_fiber(nullptr, l.scheduler_stack, l.scheduler_stack_size);
#endif
  switch_context(f.context, l.scheduler);  // never resumed
  std::abort();
}

void resume(Launch& l, int index) {
  l.running = index;
  Fiber& f = l.fibers[std::size_t(index)];
#ifdef VDM_EMULATION_ASAN
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(&fake_stack, l.stacks[std::size_t(index)].get(), kStackBytes);
#endif
  switch_context(l.scheduler, f.context);
#ifdef VDM_EMULATION_ASAN
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#endif
  l.running = -1;
  if (f.error) std::rethrow_exception(f.error);
}

// Opens the barriers every waiting thread has reached; false when none could open.
bool open_barriers(Launch& l) {
  const int threads = int(l.fibers.size());
  bool opened = false;
  for (int w = 0; w < threads / kWarp; ++w) {
    int waiting = 0, done = 0;
    for (int lane = 0; lane < kWarp; ++lane) {
      const State s = l.fibers[std::size_t(w * kWarp + lane)].state;
      waiting += s == State::kAtWarpBarrier;
      done += s == State::kDone;
    }
    if (waiting == 0) continue;
    if (done > 0)
      fail("block (" + std::to_string(l.current_block.x) + ", " + std::to_string(l.current_block.y) + ", " +
           std::to_string(l.current_block.z) + "), warp " + std::to_string(w) + ": a full-warp shuffle while " +
           std::to_string(done) + " of its lanes have returned");
    if (waiting == kWarp) {
      for (int lane = 0; lane < kWarp; ++lane) l.fibers[std::size_t(w * kWarp + lane)].state = State::kRunnable;
      opened = true;
    }
  }
  if (opened) return true;
  int at_block = 0, done = 0;
  for (const Fiber& f : l.fibers) {
    at_block += f.state == State::kAtBlockBarrier;
    done += f.state == State::kDone;
  }
  if (at_block > 0 && at_block + done == threads) {
    for (Fiber& f : l.fibers)
      if (f.state == State::kAtBlockBarrier) f.state = State::kRunnable;
    return true;
  }
  return false;
}

void run_block(Launch& l) {
  const int threads = int(l.fibers.size());
  std::fill(l.shared.begin(), l.shared.end(), std::numeric_limits<float>::quiet_NaN());
  std::fill(l.next_set.begin(), l.next_set.end(), 0);
  for (int t = 0; t < threads; ++t) {
    Fiber& f = l.fibers[std::size_t(t)];
    f = Fiber{};
    f.thread = dim3(unsigned(t) % l.block.x, unsigned(t) / l.block.x % l.block.y, unsigned(t) / (l.block.x * l.block.y));
#ifdef VDM_EMULATION_ASAN
    // The previous block's fibers ended inside their frames, whose poisoned redzones remain.
    __asan_unpoison_memory_region(l.stacks[std::size_t(t)].get(), kStackBytes);
#endif
    f.context = make_context(l.stacks[std::size_t(t)].get(), kStackBytes, fiber_main);
  }
  for (;;) {
    bool ran = false;
    for (int i = 0; i < threads; ++i) {
      const int t = g_order == ThreadOrder::kAscending ? i : threads - 1 - i;
      if (l.fibers[std::size_t(t)].state != State::kRunnable) continue;
      resume(l, t);
      ran = true;
    }
    bool all_done = true;
    for (const Fiber& f : l.fibers) all_done = all_done && f.state == State::kDone;
    if (all_done) return;
    if (!open_barriers(l) && !ran)
      fail("block (" + std::to_string(l.current_block.x) + ", " + std::to_string(l.current_block.y) + ", " +
           std::to_string(l.current_block.z) + "): threads wait at barriers that cannot open (a __syncthreads or " +
           "shuffle reached by only part of the block or warp)");
  }
}

}  // namespace

void set_thread_order(ThreadOrder order) { g_order = order; }

void run_grid(const char* kernel, dim3 grid, dim3 block, std::size_t shared_bytes, const std::function<void()>& body) {
  if (g_launch) throw std::logic_error("CUDA emulation: launches do not nest");
  const std::size_t threads = std::size_t(block.x) * block.y * block.z;
  Launch l;
  l.kernel = kernel;
  g_launch = &l;
  struct Reset {
    ~Reset() { g_launch = nullptr; }
  } reset;
  if (threads == 0 || threads > 1024 || threads % kWarp != 0)
    fail("a block of " + std::to_string(threads) + " threads; the emulation takes whole warps, at most 1024");
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535)
    fail("grid (" + std::to_string(grid.x) + ", " + std::to_string(grid.y) + ", " + std::to_string(grid.z) +
         ") is outside CUDA's limits");
  l.grid = grid;
  l.block = block;
  l.body = &body;
  l.fibers.resize(threads);
  for (std::size_t t = 0; t < threads; ++t) l.stacks.emplace_back(new char[kStackBytes]);
  l.shared.resize((shared_bytes + sizeof(float) - 1) / sizeof(float));
  l.slots[0].resize(threads * 16);
  l.slots[1].resize(threads * 16);
  l.next_set.resize(threads);
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        l.current_block = dim3(x, y, z);
        run_block(l);
      }
}

const dim3& thread_idx() {
  Launch& l = launch();
  return l.fibers[std::size_t(l.running)].thread;
}
const dim3& block_idx() { return launch().current_block; }
const dim3& block_dim() { return launch().block; }
const dim3& grid_dim() { return launch().grid; }
void* dynamic_shared() { return launch().shared.data(); }

void sync_block() {
  Launch& l = launch();
  l.fibers[std::size_t(l.running)].state = State::kAtBlockBarrier;
  yield_to_scheduler(l);
}

void exchange(const void* value, std::size_t bytes, int src, bool full_mask, void* out) {
  Launch& l = launch();
  const int self = l.running;
  if (!full_mask) fail("shuffles with a partial lane mask are not emulated");
  if (src < 0 || src >= kWarp) fail("shuffle source lane " + std::to_string(src));
  std::vector<unsigned char>& slots = l.slots[l.next_set[std::size_t(self)]];
  l.next_set[std::size_t(self)] ^= 1;
  std::memcpy(&slots[std::size_t(self) * 16], value, bytes);
  l.fibers[std::size_t(self)].state = State::kAtWarpBarrier;
  yield_to_scheduler(l);  // every lane has published
  std::memcpy(out, &slots[std::size_t(self / kWarp * kWarp + src) * 16], bytes);
}

}  // namespace vdm::cuda_emulation
