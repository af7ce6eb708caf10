// libFuzzer harness: the token-id JSON reader (peft::read_token_ids: training data, --input-ids).
#include <cstdint>
#include <string>

#include "fuzz-file.h"
#include "peft/data/dataset.h"
#include "peft/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
  const std::string path = peft_fuzz::write_input(data, size);
  try {
    (void)peft::read_token_ids(path);
  } catch (const peft::Error &) {
  }
  return 0;
}
