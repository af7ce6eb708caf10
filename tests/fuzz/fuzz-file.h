// The fuzz input as a file (the readers take paths and mmap them): one file per process, rewritten.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

namespace peft_fuzz {

inline std::string write_input(const uint8_t * data, size_t size) {
  static const std::string path = "/tmp/peft-fuzz-input-" + std::to_string(::getpid());
  FILE * f = std::fopen(path.c_str(), "wb");
  if (size) std::fwrite(data, 1, size, f);
  std::fclose(f);
  return path;
}

}  // namespace peft_fuzz
