// peft serve's chat page: the files of src/serve/chat-page/ compiled into the library at build time
// (cmake/embed-files.cmake writes them as byte arrays), served at / by server.cpp.
#pragma once
#include <cstddef>

namespace peft::serve {

struct EmbeddedFile {
  const char * name;            // "index.html", "chat.js", "chat.css"
  const unsigned char * data;   // size bytes, then a 0
  size_t size;
};

extern const EmbeddedFile kChatPageFiles[];
extern const size_t kChatPageFileCount;

}  // namespace peft::serve
