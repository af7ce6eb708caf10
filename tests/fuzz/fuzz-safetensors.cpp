// libFuzzer harness: the safetensors reader on arbitrary bytes (header, offsets, dtypes, data).
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

#include "fuzz-file.h"
#include "peft/error.h"
#include "peft/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
  const std::string path = peft_fuzz::write_input(data, size);
  try {
    auto t = peft::safetensors_load(path);
    for (auto & kv : t) (void)kv.second.sum();
  } catch (const peft::Error &) {
  }
  return 0;
}
