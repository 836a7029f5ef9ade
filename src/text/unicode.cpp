#include "text/unicode.h"

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <unordered_map>

namespace vdm::text {
namespace {
#include "text/unicode_tables.inc"

// kPropRuns bits (see unicode_tables_gen.py).
constexpr uint32_t kClassMask = 7;
constexpr uint32_t kSigmaIgnorable = 8;
constexpr uint32_t kSigmaCased = 16;
constexpr uint32_t kComposesBit = 1u << 31;

// Value of a run table whose entries are (start << 8 | value), sorted by start.
uint32_t run_value(const uint32_t* begin, const uint32_t* end, char32_t c) {
  const uint32_t key = (static_cast<uint32_t>(c) << 8) | 0xFFu;
  const uint32_t* it = std::upper_bound(begin, end, key);
  return it == begin ? 0 : (*(it - 1) & 0xFFu);
}

uint32_t props(char32_t c) {
  if (c >= 0x110000) return static_cast<uint32_t>(unicode::CharClass::kControl);
  return run_value(std::begin(kPropRuns), std::end(kPropRuns), c);
}

// Hangul syllable arithmetic (Unicode chapter 3.12).
constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr int kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount,
              kSCount = kLCount * kNCount;

const uint32_t* find_decomposition(char32_t c) {
  auto cmp = [](const uint32_t(&row)[3], char32_t cp) { return (row[0] & ~kComposesBit) < cp; };
  const auto* it = std::lower_bound(std::begin(kDecomp), std::end(kDecomp), c, cmp);
  if (it == std::end(kDecomp) || ((*it)[0] & ~kComposesBit) != c) return nullptr;
  return *it;
}

void decompose(char32_t c, std::u32string& out) {
  if (c >= kSBase && c < kSBase + kSCount) {
    const int s = static_cast<int>(c - kSBase);
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out.push_back(kTBase + s % kTCount);
    return;
  }
  const uint32_t* row = find_decomposition(c);
  if (!row) {
    out.push_back(c);
    return;
  }
  decompose(row[1], out);
  if (row[2] != 0) decompose(row[2], out);
}

const std::unordered_map<uint64_t, char32_t>& composition_table() {
  static const std::unordered_map<uint64_t, char32_t> table = [] {
    std::unordered_map<uint64_t, char32_t> t;
    for (const auto& row : kDecomp) {
      if (row[0] & kComposesBit) {
        t.emplace((static_cast<uint64_t>(row[1]) << 32) | row[2], row[0] & ~kComposesBit);
      }
    }
    return t;
  }();
  return table;
}

// The primary composite of (a, b), or 0.
char32_t compose(char32_t a, char32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount) {
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  }
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount) {
    return a + (b - kTBase);
  }
  const auto& table = composition_table();
  auto it = table.find((static_cast<uint64_t>(a) << 32) | b);
  return it == table.end() ? 0 : it->second;
}

char32_t lower_char(char32_t c) {
  if (c < 0x80) return (c >= 'A' && c <= 'Z') ? c + 32 : c;
  auto cmp = [](char32_t cp, const int32_t(&row)[4]) { return cp < static_cast<char32_t>(row[0]); };
  const auto* it = std::upper_bound(std::begin(kLowerRuns), std::end(kLowerRuns), c, cmp);
  if (it == std::begin(kLowerRuns)) return c;
  const int32_t* run = *(it - 1);
  const int64_t offset = static_cast<int64_t>(c) - run[0];
  if (offset % run[2] != 0 || offset / run[2] >= run[1]) return c;
  return static_cast<char32_t>(static_cast<int64_t>(c) + run[3]);
}

}  // namespace

void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

std::u32string utf8_to_utf32(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    const auto b0 = static_cast<unsigned char>(s[i]);
    if (b0 < 0x80) {
      out.push_back(b0);
      ++i;
      continue;
    }
    int len = 0;
    char32_t c = 0, min = 0;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
      len = 2, c = b0 & 0x1F, min = 0x80;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      len = 3, c = b0 & 0x0F, min = 0x800;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      len = 4, c = b0 & 0x07, min = 0x10000;
    } else {
      out.push_back(unicode::kReplacementChar);
      ++i;
      continue;
    }
    int k = 1;
    for (; k < len && i + k < n; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if ((b & 0xC0) != 0x80) break;
      c = (c << 6) | (b & 0x3F);
    }
    if (k < len || c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) {
      out.push_back(unicode::kReplacementChar);
      i += std::max(1, k);
      continue;
    }
    out.push_back(c);
    i += len;
  }
  return out;
}

std::string utf32_to_utf8(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) append_utf8(out, c);
  return out;
}

namespace unicode {

CharClass char_class(char32_t c) { return static_cast<CharClass>(props(c) & kClassMask); }

bool is_space(char32_t c) {
  return std::binary_search(std::begin(kSpaces), std::end(kSpaces), static_cast<uint32_t>(c));
}

int combining_class(char32_t c) {
  if (c < 0x300) return 0;
  return static_cast<int>(run_value(std::begin(kCccRuns), std::end(kCccRuns), c));
}

std::u32string to_lower(std::u32string_view s) {
  std::u32string out;
  out.reserve(s.size());
  const size_t n = s.size();
  for (size_t i = 0; i < n; ++i) {
    const char32_t c = s[i];
    if (c == 0x130) {  // LATIN CAPITAL LETTER I WITH DOT ABOVE
      out.push_back(U'i');
      out.push_back(0x307);
    } else if (c == 0x3A3) {  // GREEK CAPITAL LETTER SIGMA
      // Final form when preceded by a cased letter and not followed by one (case-ignorable
      // characters are skipped in both directions).
      size_t j = i;
      uint32_t p = 0;
      bool found = false;
      while (j > 0) {
        p = props(s[--j]);
        if (!(p & kSigmaIgnorable)) {
          found = true;
          break;
        }
      }
      bool final_sigma = found && (p & kSigmaCased);
      if (final_sigma) {
        for (size_t k = i + 1; k < n; ++k) {
          p = props(s[k]);
          if (!(p & kSigmaIgnorable)) {
            final_sigma = !(p & kSigmaCased);
            break;
          }
        }
      }
      out.push_back(final_sigma ? 0x3C2 : 0x3C3);
    } else {
      out.push_back(lower_char(c));
    }
  }
  return out;
}

std::u32string nfc(std::u32string_view s) {
  // Fast path: text below U+0300 is already in NFC.
  if (std::all_of(s.begin(), s.end(), [](char32_t c) { return c < 0x300; })) {
    return std::u32string(s);
  }
  std::u32string d;
  d.reserve(s.size() + 8);
  for (char32_t c : s) decompose(c, d);

  // Canonical ordering: stable sort of each run of non-starters by combining class.
  for (size_t i = 0; i < d.size();) {
    if (combining_class(d[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < d.size() && combining_class(d[j]) != 0) ++j;
    std::stable_sort(d.begin() + static_cast<std::ptrdiff_t>(i), d.begin() + static_cast<std::ptrdiff_t>(j),
                     [](char32_t a, char32_t b) { return combining_class(a) < combining_class(b); });
    i = j;
  }

  // Canonical composition.
  std::u32string out;
  out.reserve(d.size());
  if (d.empty()) return out;
  size_t starter_pos = 0;
  char32_t starter = d[0];
  int last_class = combining_class(starter);
  if (last_class != 0) last_class = 256;  // a leading non-starter blocks composition
  out.push_back(starter);
  for (size_t i = 1; i < d.size(); ++i) {
    const char32_t c = d[i];
    const int cls = combining_class(c);
    if (last_class < cls || last_class == 0) {
      if (char32_t composite = compose(starter, c)) {
        out[starter_pos] = composite;
        starter = composite;
        continue;
      }
    }
    if (cls == 0) {
      starter_pos = out.size();
      starter = c;
    }
    last_class = cls;
    out.push_back(c);
  }
  return out;
}

}  // namespace unicode
}  // namespace vdm::text
