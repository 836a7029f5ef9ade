// Training data: batches of captioned clips (or still frames) as float tensors in [-1, 1].
//
//   ShapesClipDataset   the synthetic moving-shapes world (infinite, rendered on the fly)
//   FolderClipDataset   a folder of real clips with a captions file (decoded through codecs/)
#pragma once
#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

#include "train/recipe.h"
#include "train/shapes_dataset.h"

namespace vdm::train {

struct ClipBatch {
  at::Tensor video;  // [B, 3, F, H, W] float in [-1, 1], on the requested device
  at::Tensor mask;   // [B, 1, F, H, W] float in [0, 1]: where the subject is (zeros when unknown)
  std::vector<std::string> captions;
};

class ClipDataset {
 public:
  virtual ~ClipDataset() = default;
  // `batch` clips of `frames` frames at size x size.
  virtual ClipBatch sample_clips(at::Generator& generator, int64_t batch, int64_t frames, int64_t size,
                                 c10::Device device) = 0;
  // `batch` single frames: video [B, 3, 1, H, W].
  virtual ClipBatch sample_frames(at::Generator& generator, int64_t batch, int64_t size, c10::Device device) = 0;
  // The texts the tokenizer learns its merges from.
  virtual std::vector<std::string> tokenizer_corpus() const = 0;
  virtual std::string describe() const = 0;
};

class ShapesClipDataset : public ClipDataset {
 public:
  explicit ShapesClipDataset(ShapeWorldConfig world = {}) : world_(world) {}
  ClipBatch sample_clips(at::Generator& generator, int64_t batch, int64_t frames, int64_t size,
                         c10::Device device) override;
  ClipBatch sample_frames(at::Generator& generator, int64_t batch, int64_t size, c10::Device device) override;
  std::vector<std::string> tokenizer_corpus() const override { return all_captions(); }
  std::string describe() const override { return "moving shapes (synthetic)"; }

 private:
  ShapeWorldConfig world_;
};

// A folder of clips listed in a captions file, one "<file>\t<caption>" per line (blank lines and
// lines starting with '#' skipped; <file> relative to `clips_dir`). Each clip is decoded once,
// resampled to `fps` (nearest frame), cut to its first `frames` frames (the last frame repeated
// when shorter), centre-cropped to a square and resized to size x size, and kept in memory as
// uint8. Requires a build with codecs (FFmpeg); otherwise construction throws InputError.
class FolderClipDataset : public ClipDataset {
 public:
  FolderClipDataset(const std::string& clips_dir, const std::string& captions_file, int64_t frames, int64_t size,
                    double fps);
  ClipBatch sample_clips(at::Generator& generator, int64_t batch, int64_t frames, int64_t size,
                         c10::Device device) override;
  ClipBatch sample_frames(at::Generator& generator, int64_t batch, int64_t size, c10::Device device) override;
  std::vector<std::string> tokenizer_corpus() const override { return captions_; }
  std::string describe() const override;
  int64_t size() const { return static_cast<int64_t>(clips_.size()); }

 private:
  std::string dir_;
  std::vector<at::Tensor> clips_;  // uint8 [F, S, S, 3]
  std::vector<std::string> captions_;
};

// The dataset a recipe names.
std::unique_ptr<ClipDataset> make_dataset(const TrainRecipe& recipe);

// Resizes frames: [N, 3, H, W] float -> [N, 3, size, size] after a centre crop to a square
// (area averaging when shrinking, bilinear when enlarging).
at::Tensor crop_resize(const at::Tensor& frames, int64_t size);

}  // namespace vdm::train
