// One exception hierarchy for all of vdm. Messages are complete sentences that say what failed,
// where (file, key), expected vs got, and what to do. The CLI prints what() on one line.
#pragma once
#include <stdexcept>
#include <string>

namespace vdm {

// Base class: a runtime failure (exit code 1 from the CLI).
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
  virtual int exit_code() const { return 1; }
};

// Bad input from the user: arguments, files, sizes (exit code 2).
class InputError : public Error {
 public:
  using Error::Error;
  int exit_code() const override { return 2; }
};

// A config file (config.json, model_index.json, scheduler_config.json, shot list) is malformed.
class ConfigError : public InputError {
 public:
  using InputError::InputError;
};

// A weights file is malformed or does not match the model (missing/unexpected key, shape, dtype).
class WeightsError : public InputError {
 public:
  using InputError::InputError;
};

// FFmpeg failed. `input_fault` marks failures caused by the input file (unreadable, corrupt),
// which the CLI reports as bad input (exit 2); encoder/muxer failures are runtime failures.
class CodecError : public Error {
 public:
  explicit CodecError(const std::string& what, bool input_fault = false)
      : Error(what), input_fault_(input_fault) {}
  int exit_code() const override { return input_fault_ ? 2 : 1; }
  bool input_fault() const { return input_fault_; }

 private:
  bool input_fault_;
};

// The job was interrupted by SIGINT/SIGTERM; exit code is 128 + signal.
class Interrupted : public Error {
 public:
  explicit Interrupted(int signal_number)
      : Error("interrupted by signal " + std::to_string(signal_number)), signal_(signal_number) {}
  int exit_code() const override { return 128 + signal_; }

 private:
  int signal_;
};

}  // namespace vdm
