// libFuzzer harness: the token-id JSON reader of the command line (--data, --input-ids).
#include <cstdint>
#include <string>

#include "common.h"
#include "fuzz-file.h"
#include "peft/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
  const std::string path = peft_fuzz::write_input(data, size);
  try {
    (void)peft::cli::read_ids_json(path);
  } catch (const peft::Error &) {
  }
  return 0;
}
