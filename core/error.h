#pragma once
// Typed errors with context. Libraries throw; front ends catch, print one line
// ("error: <what>") and exit non-zero. Context is prepended as "outer: inner".
#include <stdexcept>
#include <string>

namespace iris {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// A file could not be opened/read/written.
class IoError : public Error { using Error::Error; };
// Bytes that do not follow their format (safetensors, PNG, JSON, tokenizer model...).
class FormatError : public Error { using Error::Error; };
// A checkpoint that does not fit the model: missing/unexpected keys, wrong shapes.
class CheckpointError : public Error { using Error::Error; };
// A config value or user option that is invalid.
class ConfigError : public Error { using Error::Error; };
// Tensor shapes that do not fit an operation.
class ShapeError : public Error { using Error::Error; };
// The user cancelled a long operation through a progress callback.
class Cancelled : public Error { using Error::Error; };

// "a: b" unless one side is empty.
std::string join_context(const std::string& outer, const std::string& inner);

// Rethrows the exception in flight as the same kind with `context` prepended.
// Use inside catch blocks: `catch (...) { rethrow_with_context(path); }`
[[noreturn]] void rethrow_with_context(const std::string& context);

}  // namespace iris
