#include "peft/error.h"

namespace peft {

void fail(const std::string & what) { throw Error(what); }

}  // namespace peft
