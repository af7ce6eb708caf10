// Multiple choice, the shape lm-evaluation-harness's tasks (HellaSwag, ARC, PIQA, ...) reduce to: a
// context, choices, the index of the right one. Each choice is scored as the sum of its tokens'
// log-probabilities after the context (lm-evaluation-harness's request: the context's trailing spaces
// moved to the choice, the choice's tokens those of context + choice after the context's), all choices of
// an item in one batch. acc: the best-scored choice is the gold one; acc_norm: the best score per
// character of the choice; each with its standard error (the sample standard deviation over sqrt(n)).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "peft/eval/scorer.h"

namespace peft {
class Tokenizer;
}

namespace peft::eval {

struct ChoiceItem {
  std::string context;
  std::vector<std::string> choices;
  int64_t gold = 0;
};

/// A task file: JSON lines {"context": str, "choices": [str, ...] (at least 2), "gold": index}; errors
/// name the file, the line and the field. Blank lines are skipped.
std::vector<ChoiceItem> read_choice_task(const std::string & path);

struct ChoiceResult {
  int64_t items = 0;
  double acc = 0, acc_stderr = 0, acc_norm = 0, acc_norm_stderr = 0;
  std::vector<std::vector<double>> loglikelihood;  // per item, per choice
  double seconds = 0;
};

/// Score every item (see the top of this file). Token rows longer than `max_length` keep their last
/// max_length tokens (the context is cut from the left, as lm-evaluation-harness does).
ChoiceResult multiple_choice(const Scorer & model, const Tokenizer & tok, const std::vector<ChoiceItem> & items,
                             int64_t max_length);

/// The token ids of (context, continuation) as lm-evaluation-harness makes them: trailing spaces of the
/// context moved to the continuation; whole = encode(context + continuation) with the tokenizer's
/// special tokens; the continuation is whole's tokens after encode(context)'s.
struct EncodedPair {
  std::vector<int64_t> context, continuation;
};
EncodedPair encode_pair(const Tokenizer & tok, std::string context, std::string continuation);

}  // namespace peft::eval
