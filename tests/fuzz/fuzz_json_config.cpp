// libFuzzer target: JSON config files (config.json, scheduler_config.json, tokenizer_config.json)
// through io::JsonConfig: parsing with Python's NaN/Infinity tokens, then every typed getter on
// every key. Each must return a value or throw ConfigError.
#include <cstdint>
#include <string>

#include "core/error.h"
#include "io/json_config.h"

namespace {

template <typename F>
void expect_value_or_config_error(F&& f) {
  try {
    f();
  } catch (const vdm::ConfigError&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  vdm::io::JsonConfig cfg;
  try {
    cfg = vdm::io::JsonConfig::parse(std::string(reinterpret_cast<const char*>(data), size),
                                     "fuzz/config.json");
  } catch (const vdm::ConfigError&) {
    return 0;
  }
  std::vector<std::string> keys{"absent"};
  for (auto it = cfg.json().begin(); it != cfg.json().end(); ++it) keys.push_back(it.key());
  for (const std::string& key : keys) {
    expect_value_or_config_error([&] { cfg.get_int(key); });
    expect_value_or_config_error([&] { cfg.get_int(key, 7); });
    expect_value_or_config_error([&] { cfg.get_double(key); });
    expect_value_or_config_error([&] { cfg.get_double(key, 0.5); });
    expect_value_or_config_error([&] { cfg.get_bool(key); });
    expect_value_or_config_error([&] { cfg.get_bool(key, true); });
    expect_value_or_config_error([&] { cfg.get_string(key); });
    expect_value_or_config_error([&] { cfg.get_string(key, "x"); });
    expect_value_or_config_error([&] { cfg.get_int_list(key); });
    expect_value_or_config_error([&] { cfg.get_int_list(key, {1, 2}); });
    expect_value_or_config_error([&] { cfg.get_string_list(key); });
    expect_value_or_config_error([&] { cfg.get_string_list(key, {"a"}); });
    expect_value_or_config_error([&] { cfg.get_int_or_list(key, 4); });
    expect_value_or_config_error([&] { cfg.get_int_or_list(key, 4, 64); });
  }
  return 0;
}
