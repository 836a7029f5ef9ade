// CLIP's byte-level BPE tokenizer, reading a transformers tokenizer folder (vocab.json,
// merges.txt, optional tokenizer_config.json and special_tokens_map.json) and producing the ids
// that transformers' CLIPTokenizer produces when ftfy is not installed:
//   added/special tokens are split out first (so a pad token "!" keeps its id inside a prompt);
//   the rest is cleaned (control and format characters dropped, whitespace folded), CJK
//   ideographs are split apart, the text is NFC-normalised and lowercased, split by CLIP's
//   pattern (contractions, letter runs, single digits, other-symbol runs), mapped byte-wise to
//   the GPT-2 byte alphabet, and merged by rank with "</w>" marking the end of each word.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace at {
class Tensor;
}

namespace vdm::text {

// The result of encoding one prompt.
struct Encoding {
  std::vector<int64_t> ids;      // with bos/eos when requested, truncated when requested
  int64_t num_truncated = 0;     // tokens dropped by truncation (0 = the prompt fit)
  bool truncated() const { return num_truncated > 0; }
};

// One entry of the added-token table (transformers' AddedToken).
struct AddedToken {
  std::string content;
  int64_t id = 0;
  bool lstrip = false;       // swallow whitespace on the left
  bool rstrip = false;       // swallow whitespace on the right
  bool single_word = false;  // only match as a whole word
  bool special = true;
};

class ClipTokenizer {
 public:
  // Sequence length used when the folder states no model_max_length (the CLIP text models'
  // number of positions).
  static constexpr int64_t kDefaultMaxLength = 77;
  // transformers reads at most this many merges (49152 - 256 - 2).
  static constexpr int64_t kMaxMerges = 48894;

  // Loads `dir`/vocab.json and `dir`/merges.txt (required; ConfigError naming the file when
  // missing or malformed) and the optional tokenizer_config.json / special_tokens_map.json.
  static ClipTokenizer load(const std::string& dir);

  // Builds a tokenizer from parsed parts (what load() does after reading the files).
  // `merges` in rank order; special tokens by content; model_max_length <= 0 means the default.
  ClipTokenizer(std::unordered_map<std::string, int64_t> vocab,
                std::vector<std::pair<std::string, std::string>> merges,
                const std::string& bos, const std::string& eos, const std::string& unk,
                const std::string& pad, int64_t model_max_length,
                std::vector<AddedToken> added_tokens = {}, std::string source = "tokenizer");

  // Token strings (byte alphabet, "</w>" suffixes), without bos/eos: tokenizer.tokenize(text).
  std::vector<std::string> tokenize(const std::string& text) const;

  // Ids: [bos] + tokens + [eos] when add_special; truncated to max_length() when truncate.
  std::vector<int64_t> encode(const std::string& text, bool add_special = true, bool truncate = true) const;
  Encoding encode_with_info(const std::string& text, bool add_special = true, bool truncate = true) const;

  // input_ids: int64 [B, max_length()], each prompt encoded with bos/eos, truncated and padded
  // with pad_id(). `truncated`, when given, receives the number of tokens dropped per prompt.
  at::Tensor batch(const std::vector<std::string>& prompts, std::vector<int64_t>* truncated = nullptr) const;
  // attention_mask: int64 [B, max_length()], 1 for bos..eos, 0 for padding.
  at::Tensor batch_attention_mask(const std::vector<std::string>& prompts) const;

  // Token ids -> text (bytes decoded as UTF-8, "</w>" -> space); special tokens skipped when asked.
  std::string decode(const std::vector<int64_t>& ids, bool skip_special = true) const;

  int64_t max_length() const { return max_length_; }
  int64_t pad_id() const { return pad_id_; }
  int64_t bos_id() const { return bos_id_; }
  int64_t eos_id() const { return eos_id_; }
  int64_t unk_id() const { return unk_id_; }
  // Entries of vocab.json (transformers' vocab_size; added tokens outside it not counted).
  int64_t vocab_size() const { return static_cast<int64_t>(encoder_.size()); }
  int64_t num_merges() const { return static_cast<int64_t>(ranks_.size()); }
  const std::vector<AddedToken>& added_tokens() const { return added_; }

  // The pre-tokenised words of a text (no added-token splitting): cleaned, normalised, lowercased,
  // split by CLIP's pattern and mapped to the byte alphabet (one symbol per byte, concatenated).
  // Used by the BPE trainer so that training sees exactly the words that encoding sees.
  static std::vector<std::string> pre_tokenize(const std::string& text);

  // The GPT-2 byte alphabet: byte -> the UTF-8 of its printable stand-in.
  static const std::vector<std::string>& byte_symbols();

 private:
  // Splits `text` (UTF-32) around added tokens and appends the tokens to `out`.
  void tokenize_into(const std::u32string& text, std::vector<std::string>& out) const;
  void bpe_word(const std::string& word, std::vector<std::string>& out) const;
  int64_t token_to_id(const std::string& token) const;

  std::unordered_map<std::string, int64_t> encoder_;
  std::unordered_map<int64_t, std::string> decoder_;
  std::unordered_map<std::string, int64_t> ranks_;  // "first second" -> rank
  std::vector<AddedToken> added_;                   // longest content first
  std::unordered_map<std::string, int64_t> added_ids_;
  std::u32string added_first_chars_;                // first character of every added token
  std::vector<std::u32string> added_u32_;           // parallel to added_
  int64_t bos_id_ = 0, eos_id_ = 0, unk_id_ = 0, pad_id_ = 0;
  int64_t max_length_ = kDefaultMaxLength;
  std::string source_;

  struct Cache;
  std::shared_ptr<Cache> cache_;
};

}  // namespace vdm::text
