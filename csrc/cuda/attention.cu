// Attention for the kept query rows only, on CUDA (docs/design.md §2.2): out (B, M, H·D) and the natural-log lse
// (B, H, M) of the queries at `index`, each attending to all N keys with an online softmax; no N×N matrix.
//
// A block computes 16 query rows of one (image, head): 4 warps × 4 rows. Keys come in tiles of 32 staged
// in shared memory (K rows padded by one float so that lane j reading key j is bank-conflict free). For
// each tile, lane j computes the logits of key j for the warp's 4 rows; the running max / sum are warp
// reductions; then lane l accumulates output dims l, l+32, … (SLICES = ⌈D/32⌉ registers per row) from
// the probabilities broadcast by shuffles. fp32 math on CUDA cores (no tensor cores): written for clarity
// and to cover the `cuda` backend; the Triton kernel is the tuned tensor-core path.
#include "common.cuh"
#include "launch.h"

namespace fastfer {
namespace cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kRowsPerWarp = 4;
constexpr int kRows = kWarps * kRowsPerWarp;  // query rows per block
constexpr int kKeys = kWarp;                  // keys per shared-memory tile

template <int SLICES>
constexpr int shared_floats() {
  return kRows * SLICES * kWarp + kKeys * (SLICES * kWarp + 1) + kKeys * SLICES * kWarp;
}

template <typename T, int SLICES>
__global__ void __launch_bounds__(kWarps* kWarp) attention_forward_kernel(AttentionForwardArgs a) {
  constexpr int DP = SLICES * kWarp;  // head dim padded to whole warps
  extern __shared__ float smem[];
  float* q_s = smem;                  // [kRows][DP], pre-multiplied by scale
  float* k_s = q_s + kRows * DP;      // [kKeys][DP + 1]
  float* v_s = k_s + kKeys * (DP + 1);  // [kKeys][DP]

  const TokenPoolArgs& s = a.qkv;
  const int64_t bh = blockIdx.x, b = bh / s.H, h = bh % s.H, m0 = int64_t(blockIdx.y) * kRows;
  const T* head = static_cast<const T*>(s.qkv) + b * s.stride_b + h * s.stride_h;
  const int64_t* rows = a.index + b * s.M;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;

  for (int e = threadIdx.x; e < kRows * DP; e += blockDim.x) {
    const int r = e / DP, d = e % DP;
    const int64_t row = m0 + r;
    q_s[e] = (row < s.M && d < s.D) ? s.scale * to_float(head[rows[row] * s.stride_n + d * s.stride_d]) : 0.0f;
  }

  float row_max[kRowsPerWarp], row_sum[kRowsPerWarp], acc[kRowsPerWarp][SLICES];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    row_max[r] = -INFINITY;
    row_sum[r] = 0.0f;
#pragma unroll
    for (int i = 0; i < SLICES; ++i) acc[r][i] = 0.0f;
  }
  const float* q_warp = q_s + warp * kRowsPerWarp * DP;

  for (int64_t n0 = 0; n0 < s.N; n0 += kKeys) {
    __syncthreads();  // the previous tile is consumed (and, the first time, q_s is complete)
    for (int e = threadIdx.x; e < kKeys * DP; e += blockDim.x) {
      const int j = e / DP, d = e % DP;
      const int64_t key = n0 + j;
      const bool valid = key < s.N && d < s.D;
      const T* kv = head + s.stride_3 + key * s.stride_n + d * s.stride_d;
      k_s[j * (DP + 1) + d] = valid ? to_float(kv[0]) : 0.0f;
      v_s[j * DP + d] = valid ? to_float(kv[s.stride_3]) : 0.0f;
    }
    __syncthreads();

    // logits of key n0 + lane for the warp's rows
    float logit[kRowsPerWarp] = {};
    for (int d = 0; d < DP; ++d) {
      const float kd = k_s[lane * (DP + 1) + d];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) logit[r] += q_warp[r * DP + d] * kd;
    }
    const bool key_valid = n0 + lane < s.N;
    float p[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const float x = key_valid ? logit[r] : -INFINITY;
      const float tile_max = warp_max(x);
      const float new_max = tile_max > row_max[r] ? tile_max : row_max[r];
      const float base = new_max == -INFINITY ? 0.0f : new_max;  // all −inf so far: p = 0, not NaN
      const float alpha = expf(row_max[r] - base);
      p[r] = expf(x - base);
      row_sum[r] = row_sum[r] * alpha + warp_sum(p[r]);
#pragma unroll
      for (int i = 0; i < SLICES; ++i) acc[r][i] *= alpha;
      row_max[r] = new_max;
    }
    // out += P V: lane owns dims lane + 32 i; the probability of key j comes from lane j
    for (int j = 0; j < kKeys; ++j) {
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        const float pj = __shfl_sync(0xffffffffu, p[r], j);
#pragma unroll
        for (int i = 0; i < SLICES; ++i) acc[r][i] += pj * v_s[j * DP + lane + i * kWarp];
      }
    }
  }

  T* out = static_cast<T*>(a.out);
  const int64_t HD = s.H * s.D;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t row = m0 + warp * kRowsPerWarp + r;
    if (row >= s.M) continue;
    const float inv = 1.0f / row_sum[r];
#pragma unroll
    for (int i = 0; i < SLICES; ++i) {
      const int d = lane + i * kWarp;
      if (d < s.D) out[(b * s.M + row) * HD + h * s.D + d] = from_float<T>(acc[r][i] * inv);
    }
    if (lane == 0) a.lse[bh * s.M + row] = row_max[r] + logf(row_sum[r]);
  }
}

template <typename T, int SLICES>
const char* launch(const AttentionForwardArgs& a, cudaStream_t stream) {
  const size_t bytes = shared_floats<SLICES>() * sizeof(float);
  auto kernel = attention_forward_kernel<T, SLICES>;
  if (bytes > 48 * 1024) {  // beyond the default dynamic shared-memory limit: opt in (sm_80+: up to 163 KB)
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(bytes));
    if (err != cudaSuccess) return cudaGetErrorString(err);
  }
  const dim3 grid(static_cast<unsigned>(a.qkv.B * a.qkv.H), static_cast<unsigned>((a.qkv.M + kRows - 1) / kRows));
  kernel<<<grid, kWarps * kWarp, bytes, stream>>>(a);
  return last_error();
}

template <typename T>
const char* launch_for_head_dim(const AttentionForwardArgs& a, cudaStream_t stream) {
  switch ((a.qkv.D + kWarp - 1) / kWarp) {
    case 1: return launch<T, 1>(a, stream);
    case 2: return launch<T, 2>(a, stream);
    case 3: return launch<T, 3>(a, stream);
    case 4: return launch<T, 4>(a, stream);
    case 5: return launch<T, 5>(a, stream);
    case 6: return launch<T, 6>(a, stream);
    case 7: return launch<T, 7>(a, stream);
    case 8: return launch<T, 8>(a, stream);
    default: return "attention_forward: head dim D must be at most 256";
  }
}

}  // namespace

const char* attention_forward(const AttentionForwardArgs& a, void* stream) {
  const char* error = nullptr;
  dispatch(a.qkv.dtype, [&](auto tag) {
    error = launch_for_head_dim<decltype(tag)>(a, static_cast<cudaStream_t>(stream));
  });
  return error;
}

}  // namespace cuda
}  // namespace fastfer
