#include "text/bpe_trainer.h"

#include <fmt/format.h>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "core/error.h"
#include "core/log.h"
#include "io/atomic_file.h"
#include "text/clip_tokenizer.h"
#include "text/unicode.h"

namespace vdm::text {
namespace fs = std::filesystem;

namespace {

constexpr const char* kStartOfText = "<|startoftext|>";
constexpr const char* kEndOfText = "<|endoftext|>";
constexpr const char* kEndOfWord = "</w>";

using Pair = std::pair<int, int>;

struct PairHash {
  size_t operator()(const Pair& p) const {
    return std::hash<uint64_t>()((static_cast<uint64_t>(static_cast<uint32_t>(p.first)) << 32) |
                                 static_cast<uint32_t>(p.second));
  }
};

// The 256 byte symbols in vocabulary order (ascending code point, as CLIP lists them).
std::vector<std::string> base_symbols() {
  std::vector<std::string> symbols = ClipTokenizer::byte_symbols();
  std::sort(symbols.begin(), symbols.end(), [](const std::string& a, const std::string& b) {
    return utf8_to_utf32(a) < utf8_to_utf32(b);
  });
  return symbols;
}

class Learner {
 public:
  explicit Learner(const std::map<std::string, int64_t>& word_counts) : queue_(Cmp{&symbols_}) {
    for (const auto& [word, count] : word_counts) {
      std::vector<int> seq;
      const std::u32string chars = utf8_to_utf32(word);
      for (size_t i = 0; i < chars.size(); ++i) {
        std::string s;
        append_utf8(s, chars[i]);
        if (i + 1 == chars.size()) s += kEndOfWord;
        seq.push_back(intern(s));
      }
      words_.push_back(std::move(seq));
      freq_.push_back(count);
    }
    for (size_t w = 0; w < words_.size(); ++w) add_pairs(static_cast<int>(w), +1);
    for (const auto& [pair, count] : counts_) queue_.insert({count, pair});
  }

  std::vector<std::pair<std::string, std::string>> run(int64_t num_merges, int64_t min_frequency) {
    std::vector<std::pair<std::string, std::string>> merges;
    while (static_cast<int64_t>(merges.size()) < num_merges && !queue_.empty()) {
      const Entry best = *queue_.begin();
      if (best.count < min_frequency) break;
      const std::string merged = symbols_[best.pair.first] + symbols_[best.pair.second];
      if (index_.count(merged)) {
        // The symbol exists already (reached through another split): never add it twice.
        queue_.erase(queue_.begin());
        forbidden_.insert(best.pair);
        continue;
      }
      merges.emplace_back(symbols_[best.pair.first], symbols_[best.pair.second]);
      apply(best.pair, intern(merged));
    }
    return merges;
  }

 private:
  struct Entry {
    int64_t count;
    Pair pair;
  };
  struct Cmp {
    const std::vector<std::string>* symbols;
    bool operator()(const Entry& x, const Entry& y) const {
      if (x.count != y.count) return x.count > y.count;
      const auto& s = *symbols;
      if (s[x.pair.first] != s[y.pair.first]) return s[x.pair.first] < s[y.pair.first];
      return s[x.pair.second] < s[y.pair.second];
    }
  };

  int intern(const std::string& s) {
    auto it = index_.find(s);
    if (it != index_.end()) return it->second;
    symbols_.push_back(s);
    index_.emplace(s, static_cast<int>(symbols_.size() - 1));
    return static_cast<int>(symbols_.size() - 1);
  }

  // Adds (sign +1) or removes (-1) the pairs of word `w` from the counts and the occurrence index.
  void add_pairs(int w, int sign) {
    const auto& seq = words_[w];
    for (size_t i = 0; i + 1 < seq.size(); ++i) {
      const Pair p{seq[i], seq[i + 1]};
      counts_[p] += sign * freq_[w];
      if (sign > 0) where_[p].insert(w);
    }
  }

  void set_count(const Pair& p, int64_t old_count, int64_t new_count) {
    if (old_count == new_count || forbidden_.count(p)) return;
    if (old_count > 0) queue_.erase({old_count, p});
    if (new_count > 0) queue_.insert({new_count, p});
  }

  void apply(const Pair& pair, int merged) {
    // New segmentation of every word holding the pair.
    std::vector<std::pair<int, std::vector<int>>> updates;
    for (int w : where_[pair]) {
      const auto& seq = words_[w];
      std::vector<int> next;
      next.reserve(seq.size());
      for (size_t i = 0; i < seq.size();) {
        if (i + 1 < seq.size() && seq[i] == pair.first && seq[i + 1] == pair.second) {
          next.push_back(merged);
          i += 2;
        } else {
          next.push_back(seq[i++]);
        }
      }
      updates.emplace_back(w, std::move(next));
    }
    // Counts before the update of every pair that may change.
    std::unordered_map<Pair, int64_t, PairHash> before;
    auto snapshot = [&](const std::vector<int>& seq) {
      for (size_t i = 0; i + 1 < seq.size(); ++i) {
        const Pair p{seq[i], seq[i + 1]};
        auto it = counts_.find(p);
        before.emplace(p, it == counts_.end() ? 0 : it->second);
      }
    };
    for (const auto& [w, next] : updates) {
      snapshot(words_[w]);
      snapshot(next);
    }
    for (auto& [w, next] : updates) {
      add_pairs(w, -1);
      const auto& seq = words_[w];
      for (size_t i = 0; i + 1 < seq.size(); ++i) where_[{seq[i], seq[i + 1]}].erase(w);
      words_[w] = std::move(next);
      add_pairs(w, +1);
    }
    for (const auto& [p, old_count] : before) {
      const int64_t now = counts_[p];
      set_count(p, old_count, now);
      if (now == 0) {
        counts_.erase(p);
        where_.erase(p);
      }
    }
  }

  std::vector<std::string> symbols_;
  std::unordered_map<std::string, int> index_;
  std::vector<std::vector<int>> words_;
  std::vector<int64_t> freq_;
  std::unordered_map<Pair, int64_t, PairHash> counts_;
  std::unordered_map<Pair, std::set<int>, PairHash> where_;
  std::unordered_set<Pair, PairHash> forbidden_;
  std::set<Entry, Cmp> queue_;
};

nlohmann::json added_token_json(const std::string& content, bool normalized) {
  return {{"content", content}, {"lstrip", false}, {"normalized", normalized},
          {"rstrip", false},    {"single_word", false}};
}

}  // namespace

BpeTrainResult learn_clip_bpe(const std::vector<std::string>& texts, const BpeTrainOptions& options) {
  if (options.num_merges < 0 || options.num_merges > ClipTokenizer::kMaxMerges) {
    throw InputError(fmt::format("BPE training: num_merges must be between 0 and {} (what CLIPTokenizer reads), "
                                 "got {}", ClipTokenizer::kMaxMerges, options.num_merges));
  }
  if (options.min_frequency < 1) {
    throw InputError(fmt::format("BPE training: min_frequency must be at least 1, got {}", options.min_frequency));
  }
  std::map<std::string, int64_t> word_counts;
  for (const auto& text : texts) {
    for (auto& word : ClipTokenizer::pre_tokenize(text)) {
      if (word == kStartOfText || word == kEndOfText) continue;
      ++word_counts[word];
    }
  }
  BpeTrainResult result;
  result.num_words = static_cast<int64_t>(word_counts.size());
  result.merges = Learner(word_counts).run(options.num_merges, options.min_frequency);
  result.vocab_size = 512 + static_cast<int64_t>(result.merges.size()) + 2;
  return result;
}

void write_clip_tokenizer(const std::vector<std::pair<std::string, std::string>>& merges, const std::string& out_dir,
                          const BpeTrainOptions& options) {
  if (static_cast<int64_t>(merges.size()) > ClipTokenizer::kMaxMerges) {
    throw InputError(fmt::format("{}: {} merges exceed the {} that CLIPTokenizer reads", out_dir, merges.size(),
                                 ClipTokenizer::kMaxMerges));
  }
  // vocab.json in CLIP's order.
  nlohmann::json vocab = nlohmann::json::object();
  int64_t next = 0;
  auto add = [&](const std::string& token) {
    if (vocab.contains(token)) {
      throw Error(fmt::format("{}: token \"{}\" would appear twice in vocab.json; the merges are inconsistent",
                              out_dir, token));
    }
    vocab[token] = next++;
  };
  const std::vector<std::string> base = base_symbols();
  for (const auto& s : base) add(s);
  for (const auto& s : base) add(s + kEndOfWord);
  for (const auto& [a, b] : merges) add(a + b);
  const int64_t bos_id = next;
  add(kStartOfText);
  const int64_t eos_id = next;
  add(kEndOfText);

  if (!vocab.contains(options.pad_token)) {
    throw InputError(fmt::format("BPE training: pad token \"{}\" is not in the vocabulary; use \"{}\" or \"!\"",
                                 options.pad_token, kEndOfText));
  }
  const int64_t pad_id = vocab[options.pad_token].get<int64_t>();

  std::string merges_txt = "#version: 0.2\n";
  for (const auto& [a, b] : merges) merges_txt += a + " " + b + "\n";

  nlohmann::json decoder = nlohmann::json::object();
  if (pad_id != eos_id && pad_id != bos_id) {
    auto pad = added_token_json(options.pad_token, false);
    pad["special"] = true;
    decoder[std::to_string(pad_id)] = pad;
  }
  for (const auto& [id, content] : {std::make_pair(bos_id, kStartOfText), std::make_pair(eos_id, kEndOfText)}) {
    auto t = added_token_json(content, true);
    t["special"] = true;
    decoder[std::to_string(id)] = t;
  }
  nlohmann::json config = {
      {"added_tokens_decoder", decoder},
      {"bos_token", kStartOfText},
      {"clean_up_tokenization_spaces", true},
      {"eos_token", kEndOfText},
      {"errors", "replace"},
      {"model_max_length", options.model_max_length},
      {"pad_token", options.pad_token},
      {"tokenizer_class", "CLIPTokenizer"},
      {"unk_token", kEndOfText},
  };
  nlohmann::json special_map = {
      {"bos_token", added_token_json(kStartOfText, true)},
      {"eos_token", added_token_json(kEndOfText, true)},
      {"pad_token", options.pad_token == kEndOfText ? added_token_json(kEndOfText, true)
                                                    : nlohmann::json(options.pad_token)},
      {"unk_token", added_token_json(kEndOfText, true)},
  };

  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) throw Error(fmt::format("cannot create tokenizer folder '{}': {}", out_dir, ec.message()));
  const fs::path dir(out_dir);
  io::write_file_atomic((dir / "vocab.json").string(), vocab.dump(2) + "\n");
  io::write_file_atomic((dir / "merges.txt").string(), merges_txt);
  io::write_file_atomic((dir / "tokenizer_config.json").string(), config.dump(2) + "\n");
  io::write_file_atomic((dir / "special_tokens_map.json").string(), special_map.dump(2) + "\n");
}

BpeTrainResult train_clip_bpe(const std::vector<std::string>& texts, const BpeTrainOptions& options,
                              const std::string& out_dir) {
  BpeTrainResult result = learn_clip_bpe(texts, options);
  write_clip_tokenizer(result.merges, out_dir, options);
  log::info("tokenizer: learned {} merges from {} distinct words; vocabulary {} tokens written to {}",
            result.merges.size(), result.num_words, result.vocab_size, out_dir);
  return result;
}

BpeTrainResult train_clip_bpe(const std::vector<std::string>& texts, int64_t num_merges, const std::string& out_dir) {
  BpeTrainOptions options;
  options.num_merges = num_merges;
  return train_clip_bpe(texts, options, out_dir);
}

}  // namespace vdm::text
