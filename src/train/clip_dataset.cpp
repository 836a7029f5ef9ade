#include "train/clip_dataset.h"

#include <cmath>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>

#include "core/error.h"
#include "core/log.h"
#ifdef VDM_WITH_FFMPEG
#include "codecs/video_reader.h"
#endif

namespace vdm::train {

namespace {

// Uniform integers in [0, n) from the generator.
std::vector<int64_t> draw_indices(at::Generator& generator, int64_t count, int64_t n) {
  at::Tensor t = at::randint(n, {count}, generator, at::TensorOptions().dtype(at::kLong));
  return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + count);
}

}  // namespace

ClipBatch ShapesClipDataset::sample_clips(at::Generator& generator, int64_t batch, int64_t frames, int64_t size,
                                          c10::Device device) {
  ShapeBatch b = sample_batch(generator, batch, frames, size, device, world_);
  return ClipBatch{b.video, b.mask, b.captions};
}

ClipBatch ShapesClipDataset::sample_frames(at::Generator& generator, int64_t batch, int64_t size, c10::Device device) {
  // A still of each sampled clip at a random point of its trajectory.
  std::vector<ShapeClipSpec> specs;
  std::vector<std::string> captions;
  at::Tensor when = at::rand({batch}, generator, at::TensorOptions().dtype(at::kDouble));
  for (int64_t i = 0; i < batch; ++i) {
    ShapeClipSpec s = sample_spec(generator, world_);
    const double t = when[i].item<double>();
    s.x0 = s.x0 + (s.x1 - s.x0) * t, s.y0 = s.y0 + (s.y1 - s.y0) * t;
    s.x1 = s.x0, s.y1 = s.y0;
    captions.push_back(caption(s));
    specs.push_back(s);
  }
  RenderedBatch r = render_specs(specs, 1, size, device);
  return ClipBatch{r.rgb.permute({0, 4, 1, 2, 3}).div(127.5).sub(1.0).contiguous(), r.coverage.unsqueeze(1).contiguous(),
                   captions};
}

at::Tensor crop_resize(const at::Tensor& frames, int64_t size) {
  const int64_t H = frames.size(2), W = frames.size(3);
  const int64_t side = std::min(H, W);
  at::Tensor x = frames.narrow(2, (H - side) / 2, side).narrow(3, (W - side) / 2, side);
  if (side == size) return x.contiguous();
  if (side > size) return at::adaptive_avg_pool2d(x, {size, size});
  return at::upsample_bilinear2d(x, {size, size}, false);
}

FolderClipDataset::FolderClipDataset(const std::string& clips_dir, const std::string& captions_file, int64_t frames,
                                     int64_t size, double fps)
    : dir_(clips_dir) {
#ifndef VDM_WITH_FFMPEG
  (void)captions_file, (void)frames, (void)size, (void)fps;
  throw InputError(fmt::format("training on the clips in {} needs the codecs (FFmpeg) to decode them, and this vdm "
                               "was built with VDM_WITH_FFMPEG=OFF; rebuild with FFmpeg, or train on the shapes "
                               "dataset",
                               clips_dir));
#else
  namespace fs = std::filesystem;
  const std::string list = captions_file.empty() ? (fs::path(clips_dir) / "captions.txt").string() : captions_file;
  std::ifstream in(list);
  if (!in) {
    throw InputError(fmt::format("{}: cannot read the captions file; it lists one clip per line as "
                                 "'<file><TAB><caption>'",
                                 list));
  }
  std::string line;
  int64_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    const size_t tab = line.find('\t');
    if (tab == std::string::npos || tab == 0 || tab + 1 >= line.size()) {
      throw InputError(fmt::format("{}:{}: expected '<file><TAB><caption>', got '{}'", list, lineno, line));
    }
    const std::string file = (fs::path(clips_dir) / line.substr(0, tab)).string();
    const std::string text = line.substr(tab + 1);
    codecs::VideoReader reader(file);
    const double src_fps = reader.fps() > 0 ? reader.fps() : fps;
    // Keep source frame round(k * src_fps / fps) as frame k.
    std::vector<at::Tensor> kept;
    at::Tensor frame;
    int64_t index = 0;
    while (static_cast<int64_t>(kept.size()) < frames && reader.read(frame)) {
      const int64_t want = std::llround(static_cast<double>(kept.size()) * src_fps / fps);
      if (index == want) kept.push_back(frame);
      ++index;
    }
    if (kept.empty()) throw InputError(fmt::format("{}: no frames could be read", file));
    if (static_cast<int64_t>(kept.size()) < frames) {
      log::warn("{}: {} frames at {} fps, fewer than {}; the last frame is repeated", file, kept.size(), fps, frames);
      while (static_cast<int64_t>(kept.size()) < frames) kept.push_back(kept.back());
    }
    at::Tensor clip = at::stack(kept).permute({0, 3, 1, 2}).to(at::kFloat);  // [F, 3, H, W]
    clip = crop_resize(clip, size).round().clamp(0, 255).to(at::kByte).permute({0, 2, 3, 1}).contiguous();
    clips_.push_back(clip);
    captions_.push_back(text);
  }
  if (clips_.empty()) throw InputError(fmt::format("{}: lists no clips", list));
  log::info("loaded {} clips from {}", clips_.size(), clips_dir);
#endif
}

std::string FolderClipDataset::describe() const { return fmt::format("{} clips from {}", clips_.size(), dir_); }

ClipBatch FolderClipDataset::sample_clips(at::Generator& generator, int64_t batch, int64_t frames, int64_t size,
                                          c10::Device device) {
  ClipBatch out;
  std::vector<at::Tensor> videos;
  for (int64_t i : draw_indices(generator, batch, static_cast<int64_t>(clips_.size()))) {
    at::Tensor c = clips_[i];  // [F, S, S, 3]
    const int64_t F = c.size(0);
    if (frames != F) {
      // Evenly spaced frames of the stored clip.
      at::Tensor idx = at::linspace(0, static_cast<double>(F - 1), frames, at::TensorOptions().dtype(at::kDouble))
                           .round()
                           .to(at::kLong);
      c = c.index_select(0, idx);
    }
    at::Tensor x = c.permute({0, 3, 1, 2}).to(at::kFloat);  // [F, 3, S, S]
    x = crop_resize(x, size).div(127.5).sub(1.0);
    videos.push_back(x.permute({1, 0, 2, 3}));  // [3, F, size, size]
    out.captions.push_back(captions_[i]);
  }
  out.video = at::stack(videos).to(device);
  out.mask = at::zeros({batch, 1, frames, size, size}, out.video.options());
  return out;
}

ClipBatch FolderClipDataset::sample_frames(at::Generator& generator, int64_t batch, int64_t size, c10::Device device) {
  ClipBatch out;
  std::vector<at::Tensor> images;
  std::vector<int64_t> clip_idx = draw_indices(generator, batch, static_cast<int64_t>(clips_.size()));
  for (int64_t i : clip_idx) {
    const int64_t f = draw_indices(generator, 1, clips_[i].size(0))[0];
    at::Tensor x = clips_[i][f].permute({2, 0, 1}).unsqueeze(0).to(at::kFloat);  // [1, 3, S, S]
    images.push_back(crop_resize(x, size).div(127.5).sub(1.0)[0].unsqueeze(1));  // [3, 1, size, size]
    out.captions.push_back(captions_[i]);
  }
  out.video = at::stack(images).to(device);
  out.mask = at::zeros({batch, 1, 1, size, size}, out.video.options());
  return out;
}

std::unique_ptr<ClipDataset> make_dataset(const TrainRecipe& recipe) {
  if (recipe.dataset == "folder") {
    if (recipe.clips_dir.empty()) {
      throw ConfigError(fmt::format("{}: dataset \"folder\" needs data.clips_dir (and data.captions, default "
                                    "<clips_dir>/captions.txt)",
                                    recipe.source));
    }
    return std::make_unique<FolderClipDataset>(recipe.clips_dir, recipe.captions, recipe.frames, recipe.size,
                                               recipe.fps);
  }
  return std::make_unique<ShapesClipDataset>(recipe.world);
}

}  // namespace vdm::train
