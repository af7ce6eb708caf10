// libFuzzer harness: adapter_config.json parsing into every method's typed options.
#include <cstdint>
#include <string>

#include "peft/error.h"
#include "peft/io/files.h"
#include "peft/tuners/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
  const char * b = reinterpret_cast<const char *>(data);
  try {
    auto c = peft::AdapterConfig::from_json(peft::parse_json(b, b + size, "adapter_config.json"), "adapter_config.json");
    (void)c.to_json().dump();
  } catch (const peft::Error &) {
  }
  return 0;
}
