#include "text/clip_tokenizer.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <limits>
#include <map>
#include <mutex>
#include <optional>

#include "core/error.h"
#include "core/log.h"
#include "io/json_config.h"
#include "text/unicode.h"

namespace vdm::text {
namespace fs = std::filesystem;
using unicode::CharClass;

namespace {

constexpr const char* kStartOfText = "<|startoftext|>";
constexpr const char* kEndOfText = "<|endoftext|>";
constexpr const char* kEndOfWord = "</w>";
constexpr size_t kMaxCacheEntries = 1 << 16;

// ---- text normalisation (transformers' BasicTokenizer with lowercasing, no accent stripping,
// no punctuation splitting) -------------------------------------------------------------------

bool is_cjk_ideograph(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
         (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
         (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

// Cleaned, CJK-separated, NFC-normalised, whitespace-split, lowercased words joined by one space.
std::u32string normalize_text(std::u32string_view text) {
  std::u32string cleaned;
  cleaned.reserve(text.size());
  for (char32_t c : text) {
    const bool tab_or_newline = c == U'\t' || c == U'\n' || c == U'\r';
    const CharClass cls = unicode::char_class(c);
    if (c == 0 || c == unicode::kReplacementChar || (cls == CharClass::kControl && !tab_or_newline)) {
      continue;  // control, format, private-use and unassigned characters are dropped
    }
    if (c == U' ' || tab_or_newline || cls == CharClass::kSpaceSeparator) {
      cleaned.push_back(U' ');
    } else if (is_cjk_ideograph(c)) {
      cleaned.push_back(U' ');
      cleaned.push_back(c);
      cleaned.push_back(U' ');
    } else {
      cleaned.push_back(c);
    }
  }
  const std::u32string normalized = unicode::nfc(cleaned);

  std::u32string out;
  out.reserve(normalized.size());
  size_t i = 0;
  const size_t n = normalized.size();
  while (i < n) {
    while (i < n && unicode::is_space(normalized[i])) ++i;
    size_t j = i;
    while (j < n && !unicode::is_space(normalized[j])) ++j;
    if (j > i) {
      if (!out.empty()) out.push_back(U' ');
      out += unicode::to_lower(std::u32string_view(normalized).substr(i, j - i));
    }
    i = j;
  }
  return out;
}

// ---- CLIP's split pattern ---------------------------------------------------------------------
// <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
// matched case-insensitively (the `regex` module's simple case folding), over lowercased text.

// Case-insensitive match of an ASCII-lowercase literal at `pos`. In lowercased text the only
// non-ASCII character that folds onto one of the literals' letters is U+017F (long s -> 's').
size_t match_literal(const std::u32string& text, size_t pos, std::string_view literal) {
  if (pos + literal.size() > text.size()) return 0;
  for (size_t k = 0; k < literal.size(); ++k) {
    const char32_t c = text[pos + k];
    const auto want = static_cast<char32_t>(literal[k]);
    if (c != want && !(want == U's' && c == 0x17F)) return 0;
  }
  return literal.size();
}

enum class PatternClass { kLetter, kNumber, kOther, kNone };

PatternClass pattern_class(char32_t c) {
  if (unicode::is_space(c)) return PatternClass::kNone;
  // U+0345 (combining ypogegrammeni) case-folds to a letter: case-insensitively it matches
  // neither [\p{L}] nor [^\s\p{L}\p{N}], so the pattern skips it.
  if (c == 0x345) return PatternClass::kNone;
  switch (unicode::char_class(c)) {
    case CharClass::kLetter: return PatternClass::kLetter;
    case CharClass::kNumber: return PatternClass::kNumber;
    default: return PatternClass::kOther;
  }
}

std::vector<std::u32string> split_pattern(const std::u32string& text) {
  static constexpr std::array<std::string_view, 7> kContractions = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
  std::vector<std::u32string> words;
  size_t i = 0;
  const size_t n = text.size();
  while (i < n) {
    size_t len = 0;
    if (text[i] == U'<') {
      len = match_literal(text, i, kStartOfText);
      if (!len) len = match_literal(text, i, kEndOfText);
    } else if (text[i] == U'\'') {
      for (std::string_view c : kContractions) {
        if ((len = match_literal(text, i, c))) break;
      }
    }
    if (!len) {
      const PatternClass cls = pattern_class(text[i]);
      if (cls == PatternClass::kNone) {
        ++i;
        continue;
      }
      len = 1;
      if (cls != PatternClass::kNumber) {
        while (i + len < n && pattern_class(text[i + len]) == cls) ++len;
      }
    }
    words.push_back(text.substr(i, len));
    i += len;
  }
  return words;
}

std::string byte_encode(const std::u32string& word) {
  const auto& symbols = ClipTokenizer::byte_symbols();
  std::string out;
  for (unsigned char b : utf32_to_utf8(word)) out += symbols[b];
  return out;
}

// Splits UTF-8 into its characters (each a UTF-8 string).
std::vector<std::string> utf8_chars(const std::string& s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    const auto b = static_cast<unsigned char>(s[i]);
    size_t len = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : 4;
    len = std::min(len, s.size() - i);
    out.push_back(s.substr(i, len));
    i += len;
  }
  return out;
}

// ---- loading ------------------------------------------------------------------------------------

// A special token as written in tokenizer_config.json / special_tokens_map.json: a string, an
// AddedToken object, or null.
struct TokenSpec {
  bool is_null = false;
  std::optional<AddedToken> token;  // content and flags
};

// A true/false flag of a token object ("lstrip", "special", ...); false when absent or null.
bool token_flag(const nlohmann::json& token, const char* flag, const std::string& source, const std::string& key) {
  if (!token.is_object() || !token.contains(flag) || token[flag].is_null()) return false;
  if (!token[flag].is_boolean())
    throw ConfigError(fmt::format("{}: \"{}\".{} must be true or false, got {}; fix or remove the entry", source,
                                  key, flag, token[flag].dump()));
  return token[flag].get<bool>();
}

TokenSpec parse_token_spec(const nlohmann::json& v, const std::string& source, const std::string& key) {
  TokenSpec spec;
  if (v.is_null()) {
    spec.is_null = true;
    return spec;
  }
  AddedToken t;
  if (v.is_string()) {
    t.content = v.get<std::string>();
  } else if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    t.content = v["content"].get<std::string>();
    t.lstrip = token_flag(v, "lstrip", source, key);
    t.rstrip = token_flag(v, "rstrip", source, key);
    t.single_word = token_flag(v, "single_word", source, key);
  } else {
    throw ConfigError(fmt::format("{}: \"{}\" must be a string or an object with \"content\", got {}; "
                                  "fix or remove the entry",
                                  source, key, v.dump()));
  }
  spec.token = t;
  return spec;
}

std::unordered_map<std::string, int64_t> read_vocab(const std::string& path) {
  if (!fs::exists(path)) {
    throw ConfigError(fmt::format("{}: file not found; a CLIP tokenizer folder needs vocab.json and merges.txt "
                                  "(transformers layout)", path));
  }
  io::JsonConfig cfg = io::JsonConfig::load(path);
  std::unordered_map<std::string, int64_t> vocab;
  vocab.reserve(cfg.json().size());
  for (const auto& [token, id] : cfg.json().items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0) {
      throw ConfigError(fmt::format("{}: token {} maps to {}, expected a non-negative integer id; "
                                    "the file is corrupt", path, nlohmann::json(token).dump(), id.dump()));
    }
    vocab.emplace(token, id.get<int64_t>());
  }
  if (vocab.empty()) throw ConfigError(fmt::format("{}: the vocabulary is empty; the file is corrupt", path));
  return vocab;
}

std::vector<std::pair<std::string, std::string>> read_merges(const std::string& path) {
  if (!fs::exists(path)) {
    throw ConfigError(fmt::format("{}: file not found; a CLIP tokenizer folder needs vocab.json and merges.txt "
                                  "(transformers layout)", path));
  }
  std::string text;
  try {
    text = io::read_text_file(path);
  } catch (const InputError& e) {
    throw ConfigError(e.what());
  }
  // Like transformers: strip the file, split lines, skip the first (the "#version" header) and
  // keep at most kMaxMerges.
  auto is_ws = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; };
  size_t b = 0, e = text.size();
  while (b < e && is_ws(text[b])) ++b;
  while (e > b && is_ws(text[e - 1])) --e;
  std::vector<std::pair<std::string, std::string>> merges;
  size_t pos = b;
  int64_t line_no = 0;
  while (pos <= e && static_cast<int64_t>(merges.size()) < ClipTokenizer::kMaxMerges) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos || nl > e) nl = e;
    const std::string line = text.substr(pos, nl - pos);
    ++line_no;
    pos = nl + 1;
    if (line_no == 1) {
      if (line.rfind("#version", 0) != 0) {
        log::warn("{}: first line is not a \"#version\" header; it is skipped as transformers does", path);
      }
      if (nl == e) break;
      continue;
    }
    std::vector<std::string> parts;
    for (size_t i = 0; i < line.size();) {
      while (i < line.size() && is_ws(line[i])) ++i;
      size_t j = i;
      while (j < line.size() && !is_ws(line[j])) ++j;
      if (j > i) parts.push_back(line.substr(i, j - i));
      i = j;
    }
    if (parts.size() != 2) {
      throw ConfigError(fmt::format("{}:{}: expected two symbols separated by a space, got \"{}\"; "
                                    "the file is corrupt", path, line_no, line));
    }
    merges.emplace_back(std::move(parts[0]), std::move(parts[1]));
    if (nl == e) break;
  }
  return merges;
}

}  // namespace

struct ClipTokenizer::Cache {
  std::mutex mutex;
  std::unordered_map<std::string, std::vector<std::string>> words;
};

const std::vector<std::string>& ClipTokenizer::byte_symbols() {
  static const std::vector<std::string> symbols = [] {
    // Printable bytes stand for themselves; the others map to U+0100 onwards in byte order.
    std::vector<std::string> s(256);
    int next = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      std::string u;
      append_utf8(u, printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + next++));
      s[b] = u;
    }
    return s;
  }();
  return symbols;
}

ClipTokenizer::ClipTokenizer(std::unordered_map<std::string, int64_t> vocab,
                             std::vector<std::pair<std::string, std::string>> merges, const std::string& bos,
                             const std::string& eos, const std::string& unk, const std::string& pad,
                             int64_t model_max_length, std::vector<AddedToken> added_tokens, std::string source)
    : encoder_(std::move(vocab)), source_(std::move(source)), cache_(std::make_shared<Cache>()) {
  for (const auto& [token, id] : encoder_) decoder_.emplace(id, token);
  ranks_.reserve(merges.size());
  int64_t missing = 0;
  std::string first_missing;
  for (size_t r = 0; r < merges.size(); ++r) {
    // A repeated pair keeps its last rank, as a Python dict built from the list does.
    ranks_[merges[r].first + " " + merges[r].second] = static_cast<int64_t>(r);
    if (!encoder_.count(merges[r].first + merges[r].second) && missing++ == 0) {
      first_missing = merges[r].first + " " + merges[r].second;
    }
  }
  if (missing > 0) {
    log::warn("{}: {} merges produce symbols that are not in the vocabulary (first: \"{}\"); "
              "vocab.json and merges.txt may come from different tokenizers",
              source_, missing, first_missing);
  }

  // Added tokens: the given ones first, then each special token not yet among them (with its
  // vocabulary id, or a new id after the vocabulary), in transformers' order.
  auto total_size = [&] {
    int64_t size = static_cast<int64_t>(encoder_.size());
    for (const auto& t : added_) size += encoder_.count(t.content) ? 0 : 1;
    return size;
  };
  for (auto& t : added_tokens) {
    if (added_ids_.count(t.content)) continue;
    added_ids_[t.content] = t.id;
    added_.push_back(t);
  }
  auto add_special = [&](const std::string& content) {
    if (content.empty() || added_ids_.count(content)) return;
    AddedToken t;
    t.content = content;
    auto it = encoder_.find(content);
    t.id = it != encoder_.end() ? it->second : total_size();
    added_ids_[content] = t.id;
    added_.push_back(t);
  };
  for (const auto& [name, content] : {std::pair<const char*, const std::string&>{"bos_token", bos},
                                      {"eos_token", eos}, {"pad_token", pad}}) {
    if (content.empty())
      throw ConfigError(fmt::format("{}: {} is an empty string; vdm needs bos, eos and pad tokens to encode "
                                    "prompts (CLIP uses <|startoftext|> and <|endoftext|>)",
                                    source_, name));
  }
  add_special(bos);
  add_special(eos);
  add_special(unk);
  add_special(pad);
  for (const auto& t : added_) decoder_.emplace(t.id, t.content);

  bos_id_ = added_ids_.at(bos);
  eos_id_ = added_ids_.at(eos);
  pad_id_ = added_ids_.at(pad);
  unk_id_ = unk.empty() ? -1 : added_ids_.at(unk);
  max_length_ = model_max_length > 0 ? model_max_length : kDefaultMaxLength;

  // Longest first, so that matching at one position picks the longest added token.
  std::stable_sort(added_.begin(), added_.end(),
                   [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
  for (const auto& t : added_) {
    added_u32_.push_back(utf8_to_utf32(t.content));
    if (!added_u32_.back().empty() && added_first_chars_.find(added_u32_.back()[0]) == std::u32string::npos) {
      added_first_chars_.push_back(added_u32_.back()[0]);
    }
  }
}

ClipTokenizer ClipTokenizer::load(const std::string& dir) {
  const std::string vocab_path = (fs::path(dir) / "vocab.json").string();
  const std::string merges_path = (fs::path(dir) / "merges.txt").string();
  const std::string config_path = (fs::path(dir) / "tokenizer_config.json").string();
  const std::string map_path = (fs::path(dir) / "special_tokens_map.json").string();
  if (!fs::is_directory(dir)) {
    throw ConfigError(fmt::format("{}: tokenizer folder not found; expected a folder with vocab.json and "
                                  "merges.txt", dir));
  }
  auto vocab = read_vocab(vocab_path);
  auto merges = read_merges(merges_path);

  // CLIPTokenizer's defaults, then tokenizer_config.json, then (only when tokenizer_config.json
  // has no added_tokens_decoder) special_tokens_map.json, which takes precedence.
  const std::array<const char*, 4> keys = {"bos_token", "eos_token", "unk_token", "pad_token"};
  std::map<std::string, TokenSpec> specs;
  specs["bos_token"].token = AddedToken{kStartOfText};
  specs["eos_token"].token = AddedToken{kEndOfText};
  specs["unk_token"].token = AddedToken{kEndOfText};
  specs["pad_token"].token = AddedToken{kEndOfText};
  std::vector<AddedToken> added;
  int64_t model_max_length = 0;
  bool has_decoder = false;
  if (fs::exists(config_path)) {
    io::JsonConfig cfg = io::JsonConfig::load(config_path);
    const auto& j = cfg.json();
    for (const char* key : keys) {
      if (j.contains(key)) specs[key] = parse_token_spec(j[key], config_path, key);
    }
    if (j.contains("model_max_length") && j["model_max_length"].is_number()) {
      const double v = j["model_max_length"].get<double>();
      // transformers stores "no limit" as 1e30.
      if (v >= 1 && v <= 1e7) model_max_length = static_cast<int64_t>(v);
    }
    if (j.contains("added_tokens_decoder") && j["added_tokens_decoder"].is_object()) {
      has_decoder = true;
      for (const auto& [id_str, entry] : j["added_tokens_decoder"].items()) {
        TokenSpec spec = parse_token_spec(entry, config_path, "added_tokens_decoder." + id_str);
        if (!spec.token) continue;
        AddedToken t = *spec.token;
        try {
          size_t used = 0;
          t.id = std::stoll(id_str, &used);
          if (used != id_str.size() || t.id < 0) throw std::invalid_argument(id_str);
        } catch (const std::exception&) {
          throw ConfigError(fmt::format("{}: added_tokens_decoder key \"{}\" is not a token id", config_path, id_str));
        }
        t.special = token_flag(entry, "special", config_path, "added_tokens_decoder." + id_str);
        added.push_back(t);
      }
    }
  }
  if (!has_decoder && fs::exists(map_path)) {
    io::JsonConfig map = io::JsonConfig::load(map_path);
    for (const char* key : keys) {
      if (map.json().contains(key)) specs[key] = parse_token_spec(map.json()[key], map_path, key);
    }
  }
  // Flags of a special token given as an object apply when it is not already an added token.
  for (const char* key : keys) {
    const TokenSpec& s = specs[key];
    if (s.is_null) {
      if (std::string(key) == "unk_token") continue;
      throw ConfigError(fmt::format("{}: {} is null; vdm needs bos, eos and pad tokens to encode prompts",
                                    fs::exists(config_path) ? config_path : map_path, key));
    }
    bool known = std::any_of(added.begin(), added.end(), [&](const AddedToken& t) { return t.content == s.token->content; });
    if (!known && (s.token->lstrip || s.token->rstrip || s.token->single_word)) {
      AddedToken t = *s.token;
      auto it = vocab.find(t.content);
      if (it != vocab.end()) {
        t.id = it->second;
        added.push_back(t);
      }
    }
  }
  auto content = [&](const char* key) { return specs[key].is_null ? std::string() : specs[key].token->content; };
  return ClipTokenizer(std::move(vocab), std::move(merges), content("bos_token"), content("eos_token"),
                       content("unk_token"), content("pad_token"), model_max_length, std::move(added), dir);
}

std::vector<std::string> ClipTokenizer::pre_tokenize(const std::string& text) {
  std::vector<std::string> out;
  for (const auto& word : split_pattern(normalize_text(utf8_to_utf32(text)))) out.push_back(byte_encode(word));
  return out;
}

void ClipTokenizer::bpe_word(const std::string& word, std::vector<std::string>& out) const {
  if (word == kStartOfText || word == kEndOfText) {
    out.push_back(word);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(cache_->mutex);
    auto it = cache_->words.find(word);
    if (it != cache_->words.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<std::string> symbols = utf8_chars(word);
  symbols.back() += kEndOfWord;
  while (symbols.size() > 1) {
    int64_t best_rank = std::numeric_limits<int64_t>::max();
    size_t best = 0;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      auto it = ranks_.find(symbols[i] + " " + symbols[i + 1]);
      if (it != ranks_.end() && it->second < best_rank) {
        best_rank = it->second;
        best = i;
      }
    }
    if (best_rank == std::numeric_limits<int64_t>::max()) break;
    const std::string first = symbols[best], second = symbols[best + 1];
    std::vector<std::string> merged;
    merged.reserve(symbols.size());
    for (size_t i = 0; i < symbols.size();) {
      if (i + 1 < symbols.size() && symbols[i] == first && symbols[i + 1] == second) {
        merged.push_back(first + second);
        i += 2;
      } else {
        merged.push_back(symbols[i]);
        i += 1;
      }
    }
    symbols.swap(merged);
  }
  out.insert(out.end(), symbols.begin(), symbols.end());
  std::lock_guard<std::mutex> lock(cache_->mutex);
  if (cache_->words.size() >= kMaxCacheEntries) cache_->words.clear();
  cache_->words.emplace(word, std::move(symbols));
}

void ClipTokenizer::tokenize_into(const std::u32string& text, std::vector<std::string>& out) const {
  // Split around added tokens: leftmost match, longest at that position.
  std::vector<std::u32string> pieces;
  std::vector<int> added_index;  // index into added_, -1 for plain text
  size_t start = 0;
  for (size_t i = 0; i < text.size();) {
    int match = -1;
    if (added_first_chars_.find(text[i]) != std::u32string::npos) {
      for (size_t k = 0; k < added_u32_.size(); ++k) {
        const auto& a = added_u32_[k];
        if (!a.empty() && text.compare(i, a.size(), a) == 0) {
          match = static_cast<int>(k);
          break;
        }
      }
    }
    if (match < 0) {
      ++i;
      continue;
    }
    if (i > start) {
      pieces.push_back(text.substr(start, i - start));
      added_index.push_back(-1);
    }
    pieces.push_back(added_u32_[match]);
    added_index.push_back(match);
    i += added_u32_[match].size();
    start = i;
  }
  if (start < text.size()) {
    pieces.push_back(text.substr(start));
    added_index.push_back(-1);
  }

  // Whitespace handling of added tokens (lstrip / rstrip / single_word).
  auto lstrip = [](std::u32string& s) {
    size_t k = 0;
    while (k < s.size() && unicode::is_space(s[k])) ++k;
    s.erase(0, k);
  };
  auto rstrip = [](std::u32string& s) {
    size_t k = s.size();
    while (k > 0 && unicode::is_space(s[k - 1])) --k;
    s.erase(k);
  };
  for (size_t i = 0; i < pieces.size(); ++i) {
    if (added_index[i] < 0) continue;
    const AddedToken& t = added_[added_index[i]];
    const bool has_left = i > 0 && !pieces[i - 1].empty();
    const bool has_right = i + 1 < pieces.size() && !pieces[i + 1].empty();
    if (t.rstrip && has_right) lstrip(pieces[i + 1]);
    if (t.lstrip && has_left) rstrip(pieces[i - 1]);
    if (t.single_word && has_left && pieces[i - 1].back() != U' ') {
      pieces[i - 1] += pieces[i];
      added_index[i - 1] = -1;
      pieces[i].clear();
    } else if (t.single_word && has_right && pieces[i + 1].front() != U' ') {
      pieces[i + 1] = pieces[i] + pieces[i + 1];
      added_index[i + 1] = -1;
      pieces[i].clear();
    }
  }

  for (size_t i = 0; i < pieces.size(); ++i) {
    if (pieces[i].empty()) continue;
    if (added_index[i] >= 0) {
      out.push_back(added_[added_index[i]].content);
      continue;
    }
    for (const auto& word : split_pattern(normalize_text(pieces[i]))) bpe_word(byte_encode(word), out);
  }
}

std::vector<std::string> ClipTokenizer::tokenize(const std::string& text) const {
  std::vector<std::string> tokens;
  tokenize_into(utf8_to_utf32(text), tokens);
  return tokens;
}

int64_t ClipTokenizer::token_to_id(const std::string& token) const {
  auto a = added_ids_.find(token);
  if (a != added_ids_.end()) return a->second;
  auto v = encoder_.find(token);
  if (v != encoder_.end()) return v->second;
  if (unk_id_ < 0) {
    throw InputError(fmt::format("{}: token \"{}\" is not in the vocabulary and the tokenizer has no unk_token",
                                 source_, token));
  }
  return unk_id_;
}

Encoding ClipTokenizer::encode_with_info(const std::string& text, bool add_special, bool truncate) const {
  Encoding enc;
  std::vector<int64_t> body;
  for (const auto& t : tokenize(text)) body.push_back(token_to_id(t));
  if (truncate) {
    const int64_t limit = std::max<int64_t>(0, max_length_ - (add_special ? 2 : 0));
    if (static_cast<int64_t>(body.size()) > limit) {
      enc.num_truncated = static_cast<int64_t>(body.size()) - limit;
      body.resize(static_cast<size_t>(limit));
    }
  }
  if (add_special) enc.ids.push_back(bos_id_);
  enc.ids.insert(enc.ids.end(), body.begin(), body.end());
  if (add_special) enc.ids.push_back(eos_id_);
  return enc;
}

std::vector<int64_t> ClipTokenizer::encode(const std::string& text, bool add_special, bool truncate) const {
  return encode_with_info(text, add_special, truncate).ids;
}

std::string ClipTokenizer::decode(const std::vector<int64_t>& ids, bool skip_special) const {
  static const std::unordered_map<std::string, unsigned char> byte_of = [] {
    std::unordered_map<std::string, unsigned char> m;
    const auto& s = byte_symbols();
    for (int b = 0; b < 256; ++b) m.emplace(s[b], static_cast<unsigned char>(b));
    return m;
  }();
  std::string bytes;
  for (int64_t id : ids) {
    auto it = decoder_.find(id);
    if (it == decoder_.end()) continue;
    if (skip_special) {
      bool special = std::any_of(added_.begin(), added_.end(),
                                 [&](const AddedToken& t) { return t.id == id && t.special; });
      if (special) continue;
    }
    for (const auto& ch : utf8_chars(it->second)) {
      auto b = byte_of.find(ch);
      bytes += b != byte_of.end() ? std::string(1, static_cast<char>(b->second)) : ch;
    }
  }
  std::string joined;
  for (size_t i = 0; i < bytes.size();) {
    if (bytes.compare(i, 4, kEndOfWord) == 0) {
      joined += ' ';
      i += 4;
    } else {
      joined += bytes[i++];
    }
  }
  std::u32string text = utf8_to_utf32(joined);  // invalid UTF-8 becomes U+FFFD
  size_t b = 0, e = text.size();
  while (b < e && unicode::is_space(text[b])) ++b;
  while (e > b && unicode::is_space(text[e - 1])) --e;
  return utf32_to_utf8(std::u32string_view(text).substr(b, e - b));
}

}  // namespace vdm::text
