// One step of metaopt's per-coordinate LSTM policy (metaopt/policy.py) as one CPU kernel.
//
// XLA runs the step as a matmul that writes the (rows, 4H) gate block to memory and two loop
// fusions that read it back; at a few thousand coordinates that memory traffic costs over half
// as much time as the matmul itself. Here each tile of 8 rows computes its gates into a buffer
// (16 KB for H = 128) that stays in L1, applies the nonlinearities and the linear head there, and writes only the new
// cell, hidden state and step. No library offers this fusion for XLA:CPU (XLA's own and
// YNNPACK's elementwise fusions do not reach into the matmul's tiles).
//
// Same function as LSTMPolicy.__call__: gate order [i, f, g, o], sigmoid(x) = ½ tanh(½x) + ½,
// tanh by the rational approximation XLA's CPU backend uses; results agree with the XLA path to
// float32 rounding (different summation order in the matmul).
//
// Operands (float32 unless said):
//   cell, hidden (rows, H); obs (rows, D_obs); packed_kernel (4H / kCols, D_obs + H, kCols): the
//   (D_obs + H, 4H) gate kernel as contiguous column panels, so each micro-kernel pass streams one
//   panel instead of striding 4H floats per row (L1 set conflicts); the caller packs it once per
//   program (an XLA transpose, shared by every call on the same weights), kCols = 2 × the lanes
//   MetaoptFusedPolicyStepLanes() reports; bias (4H);
//   head_kernel (H, 1); head_bias (1); active: bool, 1 or `rows` elements (false: the row keeps
//   its carry and its step is 0).
// Results: new_cell, new_hidden (rows, H); step (rows).
// Limits (checked; the Python side falls back to XLA outside them): H a multiple of 16, at most
// 512; D_obs at most 8.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace ffi = xla::ffi;

namespace {

// One register's worth of floats and the tile shape that keeps 2·kRows accumulators, two weight
// vectors and a broadcast in the register file (32 registers with AVX-512, 16 with AVX2/SSE).
#if defined(__AVX512F__)
constexpr int64_t kLanes = 16;
constexpr int64_t kRows = 8;
typedef float vf __attribute__((vector_size(64)));
// A memory broadcast; `vf{} + x` would compile to an add and a shuffle that competes with the
// FMAs for port 5 and halves the matmul's rate.
inline vf splat(float x) { return (vf)_mm512_set1_ps(x); }
#elif defined(__AVX2__)
constexpr int64_t kLanes = 8;
constexpr int64_t kRows = 6;
typedef float vf __attribute__((vector_size(32)));
inline vf splat(float x) { return (vf)_mm256_set1_ps(x); }
#else
constexpr int64_t kLanes = 4;
constexpr int64_t kRows = 6;
typedef float vf __attribute__((vector_size(16)));
inline vf splat(float x) { return vf{} + x; }
#endif
constexpr int64_t kCols = 2 * kLanes;  // gate columns per micro-kernel pass
constexpr int64_t kMaxHidden = 512;
constexpr int64_t kMaxObs = 8;

inline vf load(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof v); }

// Eigen's ptanh_float, which XLA:CPU also emits: with FMA, clamping at 7.9988 makes the
// approximation saturate at exactly ±1 (XLA's tanh(8) == 1.0f); without, at 7.9053.
inline vf tanh_v(vf x) {
#if defined(__FMA__)
  const vf limit = splat(7.99881172180175781f);
#else
  const vf limit = splat(7.90531110763549805f);
#endif
  vf c = x > limit ? limit : x;
  c = c < -limit ? -limit : c;
  const vf c2 = c * c;
  vf p = c2 * splat(-2.76076847742355e-16f) + splat(2.00018790482477e-13f);
  p = c2 * p + splat(-8.60467152213735e-11f);
  p = c2 * p + splat(5.12229709037114e-08f);
  p = c2 * p + splat(1.48572235717979e-05f);
  p = c2 * p + splat(6.37261928875436e-04f);
  p = c2 * p + splat(4.89352455891786e-03f);
  p = c * p;
  vf q = c2 * splat(1.19825839466702e-06f) + splat(1.18534705686654e-04f);
  q = c2 * q + splat(2.26843463243900e-03f);
  q = c2 * q + splat(4.89352518554385e-03f);
  const vf r = p / q;
  const vf magnitude = x < 0 ? -x : x;
  return magnitude < splat(0.0004f) ? x : r;
}

inline vf sigmoid_v(vf x) { return splat(0.5f) * tanh_v(splat(0.5f) * x) + splat(0.5f); }

struct Step {
  const float *cell, *hidden, *obs, *packed_kernel, *bias, *head_kernel;
  const bool* active;
  bool active_per_row;
  float head_bias;
  float *new_cell, *new_hidden, *step;
  int64_t rows, hidden_size, obs_dim;
};

// Per-thread scratch for one tile (82 KB: on the heap, not on a caller's stack of unknown size;
// allocated once per thread).
struct Scratch {
  alignas(64) float input[kRows][kMaxObs + kMaxHidden];
  alignas(64) float gates[kRows][4 * kMaxHidden];
};

// Rows [r0, r0 + kRows) (fewer in the last tile; the tile is padded with copies of its last row).
void step_tile(const Step& s, int64_t r0, Scratch& scratch) {
  const int64_t H = s.hidden_size, G = 4 * H, D = s.obs_dim + H;
  const int64_t n = std::min(kRows, s.rows - r0);
  auto& input = scratch.input;
  auto& gates = scratch.gates;
  for (int64_t r = 0; r < kRows; ++r) {
    const int64_t src = r0 + std::min(r, n - 1);
    std::memcpy(&input[r][0], s.obs + src * s.obs_dim, s.obs_dim * sizeof(float));
    std::memcpy(&input[r][s.obs_dim], s.hidden + src * H, H * sizeof(float));
  }
  for (int64_t c0 = 0; c0 < G; c0 += kCols) {
    vf acc[kRows][2];
    const vf b0 = load(s.bias + c0), b1 = load(s.bias + c0 + kLanes);
    for (int64_t r = 0; r < kRows; ++r) acc[r][0] = b0, acc[r][1] = b1;
    const float* w = s.packed_kernel + c0 * D;  // this pass's (D, kCols) panel, contiguous
    for (int64_t k = 0; k < D; ++k, w += kCols) {
      const vf w0 = load(w), w1 = load(w + kLanes);
      for (int64_t r = 0; r < kRows; ++r) {
        const vf x = splat(input[r][k]);
        acc[r][0] += x * w0;
        acc[r][1] += x * w1;
      }
    }
    for (int64_t r = 0; r < kRows; ++r) {
      store(&gates[r][c0], acc[r][0]);
      store(&gates[r][c0 + kLanes], acc[r][1]);
    }
  }
  for (int64_t r = 0; r < n; ++r) {
    const int64_t row = r0 + r;
    const float* cell = s.cell + row * H;
    float* new_cell = s.new_cell + row * H;
    float* new_hidden = s.new_hidden + row * H;
    if (!s.active[s.active_per_row ? row : 0]) {
      std::memcpy(new_cell, cell, H * sizeof(float));
      std::memcpy(new_hidden, s.hidden + row * H, H * sizeof(float));
      s.step[row] = 0.0f;
      continue;
    }
    vf head = splat(0.0f);
    for (int64_t j = 0; j < H; j += kLanes) {
      const vf i = load(&gates[r][j]), f = load(&gates[r][H + j]);
      const vf g = load(&gates[r][2 * H + j]), o = load(&gates[r][3 * H + j]);
      const vf c = sigmoid_v(f) * load(cell + j) + sigmoid_v(i) * tanh_v(g);
      const vf h = sigmoid_v(o) * tanh_v(c);
      store(new_cell + j, c);
      store(new_hidden + j, h);
      head += h * load(s.head_kernel + j);
    }
    float total = 0.0f;
    for (int64_t l = 0; l < kLanes; ++l) total += head[l];
    s.step[row] = total + s.head_bias;
  }
}

// Tiles are claimed in blocks from a shared counter by the calling thread and by helpers on
// XLA's intra-op pool. The caller only waits for blocks already claimed, so a helper that
// starts late (pool busy) finds nothing left and returns: no deadlock on a saturated pool.
struct Progress {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

void run_tiles(const Step& s, Progress& progress, int64_t n_tiles, int64_t block) {
  thread_local std::unique_ptr<Scratch> scratch;  // kept for the thread's next calls
  for (;;) {
    const int64_t t0 = progress.next.fetch_add(block);
    if (t0 >= n_tiles) return;
    if (!scratch) scratch = std::make_unique<Scratch>();
    const int64_t t1 = std::min(n_tiles, t0 + block);
    for (int64_t t = t0; t < t1; ++t) step_tile(s, t * kRows, *scratch);
    progress.done.fetch_add(t1 - t0, std::memory_order_release);
  }
}

ffi::Error FusedPolicyStepImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> cell,
                               ffi::Buffer<ffi::F32> hidden, ffi::Buffer<ffi::F32> obs,
                               ffi::Buffer<ffi::F32> packed_kernel, ffi::Buffer<ffi::F32> bias,
                               ffi::Buffer<ffi::F32> head_kernel, ffi::Buffer<ffi::F32> head_bias,
                               ffi::Buffer<ffi::PRED> active, ffi::ResultBuffer<ffi::F32> new_cell,
                               ffi::ResultBuffer<ffi::F32> new_hidden,
                               ffi::ResultBuffer<ffi::F32> step) {
  if (cell.dimensions().size() == 0 || obs.dimensions().size() == 0)
    return ffi::Error::InvalidArgument("fused_policy_step: cell and obs need a feature axis");
  const int64_t H = cell.dimensions().back();
  const int64_t obs_dim = obs.dimensions().back();
  if (H <= 0 || H % 16 != 0 || H > kMaxHidden || obs_dim <= 0 || obs_dim > kMaxObs)
    return ffi::Error::InvalidArgument(
        "fused_policy_step: needs a hidden size that is a multiple of 16 and at most 512, and "
        "1 to 8 observation features");
  const auto count = [](const auto& buffer) { return static_cast<int64_t>(buffer.element_count()); };
  const int64_t rows = count(cell) / H;
  const int64_t D = obs_dim + H, G = 4 * H;
  if (count(hidden) != rows * H || count(obs) != rows * obs_dim ||
      count(packed_kernel) != D * G || packed_kernel.dimensions().back() != kCols ||
      count(bias) != G || count(head_kernel) != H || count(head_bias) != 1 ||
      (count(active) != 1 && count(active) != rows) || count(*step) != rows)
    return ffi::Error::InvalidArgument("fused_policy_step: operand sizes do not match");
  if (rows == 0) return ffi::Error::Success();

  const Step s{cell.typed_data(),
               hidden.typed_data(),
               obs.typed_data(),
               packed_kernel.typed_data(),
               bias.typed_data(),
               head_kernel.typed_data(),
               active.typed_data(),
               count(active) == rows,
               head_bias.typed_data()[0],
               new_cell->typed_data(),
               new_hidden->typed_data(),
               step->typed_data(),
               rows,
               H,
               obs_dim};
  const int64_t n_tiles = (rows + kRows - 1) / kRows;
  const int64_t threads =
      std::clamp<int64_t>(n_tiles / 16, 1, std::max<int64_t>(1, pool.num_threads()));
  const int64_t block = std::max<int64_t>(1, n_tiles / (8 * threads));
  auto progress = std::make_shared<Progress>();
  // With several threads, one helper per thread besides the caller: a woken helper often lands
  // on the caller's core (wake-affine scheduling) and only the other one then runs in parallel;
  // with threads - 1 helpers, 2 of 5 benchmark processes ran at one core's speed throughout.
  for (int64_t t = 0; threads > 1 && t < threads; ++t)
    pool.Schedule([s, progress, n_tiles, block] { run_tiles(s, *progress, n_tiles, block); });
  run_tiles(s, *progress, n_tiles, block);
  while (progress->done.load(std::memory_order_acquire) < n_tiles) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

// Floats per vector register this build was compiled for (16 AVX-512, 8 AVX2, 4 otherwise): the
// Python side only uses the kernel where it was measured to beat XLA (AVX2 and AVX-512).
extern "C" int MetaoptFusedPolicyStepLanes() { return static_cast<int>(kLanes); }

XLA_FFI_DEFINE_HANDLER_SYMBOL(MetaoptFusedPolicyStep, FusedPolicyStepImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // cell
                                  .Arg<ffi::Buffer<ffi::F32>>()   // hidden
                                  .Arg<ffi::Buffer<ffi::F32>>()   // obs
                                  .Arg<ffi::Buffer<ffi::F32>>()   // packed kernel
                                  .Arg<ffi::Buffer<ffi::F32>>()   // bias
                                  .Arg<ffi::Buffer<ffi::F32>>()   // head kernel
                                  .Arg<ffi::Buffer<ffi::F32>>()   // head bias
                                  .Arg<ffi::Buffer<ffi::PRED>>()  // active
                                  .Ret<ffi::Buffer<ffi::F32>>()   // new cell
                                  .Ret<ffi::Buffer<ffi::F32>>()   // new hidden
                                  .Ret<ffi::Buffer<ffi::F32>>()); // step
