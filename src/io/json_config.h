// Reading JSON config files (config.json, model_index.json, scheduler_config.json) with errors
// that name the file, the key, the expected type and what was found.
#pragma once
#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <vector>

namespace vdm::io {

class JsonConfig {
 public:
  JsonConfig() = default;
  JsonConfig(nlohmann::json json, std::string source);
  // Reads and parses a file; ConfigError when missing, unreadable or not a JSON object.
  static JsonConfig load(const std::string& path);
  // Parses JSON text (Python's NaN/Infinity/-Infinity accepted); `source` names it in errors.
  // ConfigError when malformed or not an object.
  static JsonConfig parse(const std::string& text, const std::string& source);

  const std::string& source() const { return source_; }
  const nlohmann::json& json() const { return json_; }
  bool has(const std::string& key) const;  // present and not null

  // Required values: ConfigError naming file and key when absent or of the wrong type.
  int64_t get_int(const std::string& key) const;
  double get_double(const std::string& key) const;
  bool get_bool(const std::string& key) const;
  std::string get_string(const std::string& key) const;
  std::vector<int64_t> get_int_list(const std::string& key) const;
  std::vector<std::string> get_string_list(const std::string& key) const;

  // Optional values: the default when absent or null; ConfigError when present with a wrong type.
  int64_t get_int(const std::string& key, int64_t def) const;
  double get_double(const std::string& key, double def) const;
  bool get_bool(const std::string& key, bool def) const;
  std::string get_string(const std::string& key, const std::string& def) const;
  std::vector<int64_t> get_int_list(const std::string& key, std::vector<int64_t> def) const;
  std::vector<std::string> get_string_list(const std::string& key, std::vector<std::string> def) const;
  // An int or a list of ints; an int is repeated `n` times.
  std::vector<int64_t> get_int_or_list(const std::string& key, size_t n, std::optional<int64_t> def = std::nullopt) const;

  [[noreturn]] void fail(const std::string& key, const std::string& expected) const;

 private:
  const nlohmann::json& require(const std::string& key) const;
  nlohmann::json json_;
  std::string source_;
};

// Reads a whole text file; InputError naming the file when it cannot be read.
std::string read_text_file(const std::string& path);

}  // namespace vdm::io
