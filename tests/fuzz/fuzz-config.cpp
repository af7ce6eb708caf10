// libFuzzer harness: config.json parsing and validation (parse_json limits, every architecture's reader).
#include <cstdint>
#include <string>

#include "peft/error.h"
#include "peft/io/files.h"
#include "peft/model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
  const char * b = reinterpret_cast<const char *>(data);
  try {
    peft::ModelConfig::from_json(peft::parse_json(b, b + size, "config.json"), "config.json");
  } catch (const peft::Error &) {
  }
  return 0;
}
