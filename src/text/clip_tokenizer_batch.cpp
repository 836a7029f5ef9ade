// The LibTorch side of ClipTokenizer: prompts to padded id and mask tensors. Kept apart from
// clip_tokenizer.cpp so that the tokenizer itself builds (and is fuzzed) without LibTorch.
#include <ATen/ATen.h>

#include <algorithm>

#include "text/clip_tokenizer.h"

namespace vdm::text {

at::Tensor ClipTokenizer::batch(const std::vector<std::string>& prompts, std::vector<int64_t>* truncated) const {
  at::Tensor ids = at::full({static_cast<int64_t>(prompts.size()), max_length_}, pad_id_, at::kLong);
  auto acc = ids.accessor<int64_t, 2>();
  if (truncated) truncated->assign(prompts.size(), 0);
  for (size_t b = 0; b < prompts.size(); ++b) {
    Encoding enc = encode_with_info(prompts[b]);
    for (size_t i = 0; i < enc.ids.size() && static_cast<int64_t>(i) < max_length_; ++i) {
      acc[static_cast<int64_t>(b)][static_cast<int64_t>(i)] = enc.ids[i];
    }
    if (truncated) (*truncated)[b] = enc.num_truncated;
  }
  return ids;
}

at::Tensor ClipTokenizer::batch_attention_mask(const std::vector<std::string>& prompts) const {
  at::Tensor mask = at::zeros({static_cast<int64_t>(prompts.size()), max_length_}, at::kLong);
  for (size_t b = 0; b < prompts.size(); ++b) {
    const int64_t n = std::min<int64_t>(max_length_, static_cast<int64_t>(encode(prompts[b]).size()));
    mask[static_cast<int64_t>(b)].narrow(0, 0, n).fill_(1);
  }
  return mask;
}

}  // namespace vdm::text
