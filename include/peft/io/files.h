// Reading files, and writing them so that a crash never leaves a half-written one: write a temp file
// beside the target, fsync, rename over the target.
#pragma once
#include <nlohmann/json.hpp>

#include <string>

namespace peft {

/// Write `bytes` to `path` atomically. Throws peft::Error naming the path on failure.
void write_file_atomic(const std::string & path, const std::string & bytes);

/// Read a whole file; throws peft::Error naming the path if it cannot be read.
std::string read_file(const std::string & path);

/// Read and parse a JSON file; errors name the path.
nlohmann::json read_json_file(const std::string & path);

}  // namespace peft
