// libFuzzer harness: tokenizer.json loading, then encoding and decoding a fixed multilingual text.
#include <cstdint>
#include <string>

#include "fuzz-file.h"
#include "peft/error.h"
#include "peft/tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
  const std::string path = peft_fuzz::write_input(data, size);
  try {
    auto tok = peft::load_tokenizer_json(path);
    auto ids = tok->encode("Hello, world! Grüße 日本語 <s> 123", true);
    (void)tok->decode(ids);
  } catch (const peft::Error &) {
  }
  return 0;
}
