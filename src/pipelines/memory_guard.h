// The memory guard: before a render starts, estimate the memory it needs (latents, UNet
// activations for the whole batch with classifier-free guidance, one chunk of attention scores,
// one VAE decode chunk) and refuse a job that cannot fit with one line naming the setting to
// lower, instead of letting the machine swap for an hour or the process die half-way.
//
// The estimate is an upper bound of the peak, not an exact figure: it counts the UNet's skip
// connections (held from the down path to the up path) plus the largest working set of one
// level (a transformer block's feed-forward is the widest, about 20 tensors of the level's
// channels), the attention scores of one chunk (scores, softmax and a temporary), and the VAE
// decoder's widest activations for one chunk of frames. Denoising and decoding do not overlap,
// so the peak is the latents plus the larger of the two phases, plus the allocator's overhead
// (freed blocks kept for reuse, fragmentation), counted as kAllocatorOverhead of that peak.
//
// This file does not depend on LibTorch; VideoPipeline fills MemoryModel from its components.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace vdm::pipelines {

// The allocator's overhead on top of the live tensors, as a fraction of the peak. On the fixture
// model (64 frames at 32x32 with guidance) the resident memory grew about 8% more than the live
// tensors counted here (docs/robustness.md).
inline constexpr double kAllocatorOverhead = 0.15;

// What the estimate needs to know about the model.
struct MemoryModel {
  int64_t latent_channels = 4;
  int64_t unet_in_channels = 4;                  // latents plus any conditioning channels
  std::vector<int64_t> unet_block_out_channels;  // channels of each UNet level
  int64_t unet_layers_per_block = 2;
  std::vector<int64_t> unet_heads;               // attention heads of each level
  int64_t vae_factor = 8;                        // pixels per latent along each side
  std::vector<int64_t> vae_block_out_channels;
  int64_t text_length = 77;
  int64_t text_dim = 1024;
  int64_t activation_bytes = 4;                  // bytes per element of the model's dtype
  // Attention scores computed at once (elements, float32); 0 = all of them at once.
  int64_t attention_score_budget = 0;
};

// One render.
struct MemoryJob {
  int64_t frames = 16;
  int64_t width = 256;   // pixels
  int64_t height = 256;
  bool guidance = true;  // classifier-free guidance: the UNet runs on a batch of 2
  int64_t decode_chunk = 0;  // frames per VAE decode call; 0 = auto_decode_chunk()
  // Frame windows (temporal/frame_windows.h): windows of window_length frames starting every
  // window_stride frames (0 = no windows: one sequence of all frames). The temporal transformers
  // then hold each frame about window_length / window_stride times.
  int64_t window_length = 0;
  int64_t window_stride = 0;
  // DeepCache (models::FeatureCache): one cached feature map, held across steps, at most the
  // widest level's channels at the first level's size.
  bool feature_cache = false;
  // Prompt travel: the text embeddings are held once per frame instead of once per video.
  bool text_per_frame = false;
};

struct MemoryEstimate {
  uint64_t latents = 0;    // latents, noise, scheduler history, conditioning (held throughout)
  uint64_t unet = 0;       // UNet activations of one step: skip connections + working tensors
  uint64_t attention = 0;  // attention scores of one chunk
  uint64_t decode = 0;     // VAE decoder activations for one chunk, plus the decoded frames
  uint64_t overhead = 0;   // the allocator's overhead (kAllocatorOverhead of the peak)
  int64_t decode_chunk = 1;  // frames per decode call the estimate assumed

  uint64_t denoise_phase() const { return unet + attention; }
  uint64_t total() const;
  bool decode_dominates() const { return decode > denoise_phase(); }
  // "1.2 GiB (UNet activations 900 MiB, attention scores 192 MiB, VAE decode 300 MiB in chunks
  // of 8 frames, latents 12 MiB, allocator overhead 165 MiB)"
  std::string describe() const;
};

MemoryEstimate estimate_memory(const MemoryModel& model, const MemoryJob& job);

// Frames per VAE decode call when none is given: keeps the decoder's largest activations near
// 1.5 GB per call (at least 1 frame).
int64_t auto_decode_chunk(const MemoryModel& model, int64_t width, int64_t height);

// MemAvailable from /proc/meminfo, in bytes; 0 when it cannot be read.
uint64_t available_host_memory();

// A size such as "8G", "512M", "1.5GiB", "64k" or "1073741824" (bytes); K, M, G and T are
// binary multiples (1024), an optional trailing "B" or "iB" is accepted; "0" means no limit.
// InputError naming `flag` for anything else.
uint64_t parse_memory_size(const std::string& text, const std::string& flag = "--max-memory");

// "512 B", "3.0 KiB", "1.5 GiB".
std::string format_bytes(uint64_t bytes);

// Throws InputError when the estimate for `job` exceeds `available` bytes (0 = no check). The
// message is one line: the estimate and its parts, the figure it was compared with and where
// that came from (`available_source`, e.g. "--max-memory" or "MemAvailable"), and the setting to
// lower, with a value that fits when there is one.
void check_memory(const MemoryModel& model, const MemoryJob& job, uint64_t available,
                  const std::string& available_source);

}  // namespace vdm::pipelines
