// Learning CLIP-style byte-level BPE merges from captions, for models that vdm trains itself.
// The words are exactly what ClipTokenizer sees (cleaned, NFC, lowercased, split by CLIP's
// pattern, mapped to the byte alphabet, "</w>" on the last symbol), so encoding a training
// caption reproduces the segmentation learned here. The folder written has CLIP's layout and
// loads both in ClipTokenizer and in transformers' CLIPTokenizer:
//   vocab.json    256 byte symbols (in code point order), the same with "</w>", one entry per
//                 merge in rank order, then <|startoftext|> and <|endoftext|>;
//   merges.txt    "#version: 0.2" then one "left right" pair per line;
//   tokenizer_config.json, special_tokens_map.json.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace vdm::text {

struct BpeTrainOptions {
  int64_t num_merges = 1000;                // upper bound; at most ClipTokenizer::kMaxMerges
  int64_t min_frequency = 2;                // a pair must occur at least this often to be merged
  int64_t model_max_length = 77;            // written to tokenizer_config.json
  std::string pad_token = "<|endoftext|>";  // "<|endoftext|>" (SD 1.x style) or "!" (SD 2.x style)
};

struct BpeTrainResult {
  std::vector<std::pair<std::string, std::string>> merges;  // in rank order
  int64_t num_words = 0;   // distinct words in the captions
  int64_t vocab_size = 0;  // 512 + merges + 2
};

// Learns merges: repeatedly merges the most frequent adjacent pair (ties: the pair whose
// symbols sort first), never creating a symbol twice. Deterministic. InputError when
// num_merges or min_frequency is out of range.
BpeTrainResult learn_clip_bpe(const std::vector<std::string>& texts, const BpeTrainOptions& options = {});

// Writes the tokenizer folder for `merges` into `out_dir` (created when missing); each file is
// written atomically.
void write_clip_tokenizer(const std::vector<std::pair<std::string, std::string>>& merges, const std::string& out_dir,
                          const BpeTrainOptions& options = {});

// learn_clip_bpe + write_clip_tokenizer.
BpeTrainResult train_clip_bpe(const std::vector<std::string>& texts, const BpeTrainOptions& options,
                              const std::string& out_dir);
BpeTrainResult train_clip_bpe(const std::vector<std::string>& texts, int64_t num_merges, const std::string& out_dir);

}  // namespace vdm::text
