#include "io/json_config.h"

#include <fmt/format.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

#include "core/error.h"

namespace vdm::io {

namespace {

// Python's json module writes the non-standard tokens Infinity, -Infinity and NaN (diffusers
// configs carry `"lambda_min_clipped": -Infinity`). Outside strings they are replaced by marker
// strings before parsing and turned back into doubles afterwards.
constexpr const char* kPosInfMarker = "@vdm:non-finite:+inf@";
constexpr const char* kNegInfMarker = "@vdm:non-finite:-inf@";
constexpr const char* kNanMarker = "@vdm:non-finite:nan@";

std::string quote_non_finite_tokens(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (in_string) {
      out += c;
      if (c == '\\' && i + 1 < text.size()) {
        out += text[++i];
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
      out += c;
      continue;
    }
    auto starts = [&](const char* token) { return text.compare(i, std::strlen(token), token) == 0; };
    if (starts("-Infinity")) {
      out += fmt::format("\"{}\"", kNegInfMarker);
      i += std::strlen("-Infinity") - 1;
    } else if (starts("Infinity")) {
      out += fmt::format("\"{}\"", kPosInfMarker);
      i += std::strlen("Infinity") - 1;
    } else if (starts("NaN")) {
      out += fmt::format("\"{}\"", kNanMarker);
      i += std::strlen("NaN") - 1;
    } else {
      out += c;
    }
  }
  return out;
}

void restore_non_finite(nlohmann::json& j) {
  if (j.is_string()) {
    const auto& s = j.get_ref<const std::string&>();
    if (s == kPosInfMarker) j = std::numeric_limits<double>::infinity();
    else if (s == kNegInfMarker) j = -std::numeric_limits<double>::infinity();
    else if (s == kNanMarker) j = std::numeric_limits<double>::quiet_NaN();
  } else if (j.is_structured()) {
    for (auto& e : j) restore_non_finite(e);
  }
}

// A JSON number as int64: integers in range, and whole floats in range (Python writes 1.0 where
// an int is meant). Anything else, NaN, Inf and values beyond int64 included, gives nullopt.
std::optional<int64_t> as_int64(const nlohmann::json& v) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return static_cast<int64_t>(u);
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {
    const double d = v.get<double>();
    // [-2^63, 2^63): the doubles that convert to int64 without overflow.
    if (std::isfinite(d) && d >= -9223372036854775808.0 && d < 9223372036854775808.0 &&
        d == std::trunc(d))
      return static_cast<int64_t>(d);
  }
  return std::nullopt;
}

}  // namespace

std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw InputError(fmt::format("{}: cannot read file: {}", path, std::strerror(errno)));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

JsonConfig::JsonConfig(nlohmann::json json, std::string source)
    : json_(std::move(json)), source_(std::move(source)) {}

JsonConfig JsonConfig::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw ConfigError(fmt::format("{}: cannot read config file: {}; check the model folder", path,
                                  std::strerror(errno)));
  std::ostringstream ss;
  ss << in.rdbuf();
  return parse(ss.str(), path);
}

JsonConfig JsonConfig::parse(const std::string& text, const std::string& source) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(quote_non_finite_tokens(text));
    restore_non_finite(j);
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError(fmt::format("{}: not valid JSON: {}", source, e.what()));
  }
  if (!j.is_object())
    throw ConfigError(fmt::format("{}: expected a JSON object at the top level, got {}", source,
                                  j.type_name()));
  return JsonConfig(std::move(j), source);
}

bool JsonConfig::has(const std::string& key) const {
  return json_.is_object() && json_.contains(key) && !json_.at(key).is_null();
}

void JsonConfig::fail(const std::string& key, const std::string& expected) const {
  std::string got = "nothing";
  if (has(key)) {
    const auto& v = json_.at(key);
    // dump() writes non-finite numbers as null; show them as the config file spells them.
    const bool non_finite = v.is_number_float() && !std::isfinite(v.get<double>());
    const double d = non_finite ? v.get<double>() : 0.0;
    got = fmt::format("{} {}", v.type_name(),
                      !non_finite ? v.dump() : std::isnan(d) ? "NaN" : d > 0 ? "Infinity" : "-Infinity");
  }
  if (got.size() > 80) got = got.substr(0, 77) + "...";
  throw ConfigError(fmt::format("{}: key '{}' must be {}, got {}", source_, key, expected, got));
}

const nlohmann::json& JsonConfig::require(const std::string& key) const {
  if (!has(key)) throw ConfigError(fmt::format("{}: required key '{}' is missing", source_, key));
  return json_.at(key);
}

int64_t JsonConfig::get_int(const std::string& key) const {
  const auto& v = require(key);
  if (auto i = as_int64(v)) return *i;
  fail(key, "an integer");
}
double JsonConfig::get_double(const std::string& key) const {
  const auto& v = require(key);
  if (!v.is_number()) fail(key, "a number");
  return v.get<double>();
}
bool JsonConfig::get_bool(const std::string& key) const {
  const auto& v = require(key);
  if (!v.is_boolean()) fail(key, "true or false");
  return v.get<bool>();
}
std::string JsonConfig::get_string(const std::string& key) const {
  const auto& v = require(key);
  if (!v.is_string()) fail(key, "a string");
  return v.get<std::string>();
}
std::vector<int64_t> JsonConfig::get_int_list(const std::string& key) const {
  const auto& v = require(key);
  if (!v.is_array()) fail(key, "a list of integers");
  std::vector<int64_t> out;
  for (const auto& e : v) {
    auto i = e.is_number_integer() ? as_int64(e) : std::nullopt;
    if (!i) fail(key, "a list of integers");
    out.push_back(*i);
  }
  return out;
}
std::vector<std::string> JsonConfig::get_string_list(const std::string& key) const {
  const auto& v = require(key);
  if (!v.is_array()) fail(key, "a list of strings");
  std::vector<std::string> out;
  for (const auto& e : v) {
    if (!e.is_string()) fail(key, "a list of strings");
    out.push_back(e.get<std::string>());
  }
  return out;
}

int64_t JsonConfig::get_int(const std::string& key, int64_t def) const {
  return has(key) ? get_int(key) : def;
}
double JsonConfig::get_double(const std::string& key, double def) const {
  return has(key) ? get_double(key) : def;
}
bool JsonConfig::get_bool(const std::string& key, bool def) const {
  return has(key) ? get_bool(key) : def;
}
std::string JsonConfig::get_string(const std::string& key, const std::string& def) const {
  return has(key) ? get_string(key) : def;
}
std::vector<int64_t> JsonConfig::get_int_list(const std::string& key, std::vector<int64_t> def) const {
  return has(key) ? get_int_list(key) : def;
}
std::vector<std::string> JsonConfig::get_string_list(const std::string& key,
                                                     std::vector<std::string> def) const {
  return has(key) ? get_string_list(key) : def;
}

std::vector<int64_t> JsonConfig::get_int_or_list(const std::string& key, size_t n,
                                                 std::optional<int64_t> def) const {
  if (!has(key)) {
    if (!def) require(key);
    return std::vector<int64_t>(n, *def);
  }
  const auto& v = json_.at(key);
  if (v.is_number()) return std::vector<int64_t>(n, get_int(key));
  auto list = get_int_list(key);
  if (list.size() != n)
    throw ConfigError(fmt::format("{}: key '{}' has {} entries, expected {} (one per block)",
                                  source_, key, list.size(), n));
  return list;
}

}  // namespace vdm::io
