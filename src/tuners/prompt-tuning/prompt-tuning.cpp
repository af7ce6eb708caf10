// Prompt tuning (PEFT's PROMPT_TUNING, tuners/prompt_tuning): num_virtual_tokens trained embeddings in front of
// the input's (prompt-learning.h). prompt_tuning_init: RANDOM (N(0, 1), nn.Embedding's init), TEXT (the word
// embeddings of prompt_tuning_init_text's tokens, tokenized by tokenizer_name_or_path/tokenizer.json with its
// special tokens, repeated and cut to num_virtual_tokens as PEFT does), SAMPLE_VOCAB (rows of random token ids).
#include <functional>

#include "peft/error.h"
#include "peft/model/causal-lm.h"
#include "peft/nn/layers.h"
#include "peft/quant/quantized-embedding.h"
#include "peft/tokenizer/tokenizer.h"
#include "peft/tuners/prompt-learning.h"
#include "peft/tuners/registry.h"

namespace peft {

namespace {

struct PromptTuningOptions : PromptLearningOptions {
  std::string init = "RANDOM";  // RANDOM | TEXT | SAMPLE_VOCAB
  std::string init_text, tokenizer;
};

class PromptEmbedding : public PromptEncoder {
 public:
  /// `vocab` rows in the model's embedding; `rows_of(ids)`: what it gives for those tokens (init from the vocabulary)
  PromptEmbedding(const PromptTuningOptions & o, int64_t vocab, const std::function<at::Tensor(const at::Tensor &)> & rows_of,
                  bool inference, const std::string & src) {
    make_table(o.num_virtual_tokens, o.token_dim);
    if (inference || o.init == "RANDOM") return;
    at::Tensor ids;
    if (o.init == "SAMPLE_VOCAB") {
      ids = at::randint(vocab, {o.num_virtual_tokens}, at::kLong);
    } else {  // TEXT
      const std::string path = o.tokenizer + "/tokenizer.json";
      std::vector<int64_t> text;
      try {
        text = load_tokenizer_json(path)->encode(o.init_text, /*add_special=*/true);
      } catch (const Error & e) {
        fail(str(src, ": field 'tokenizer_name_or_path' (for prompt_tuning_init TEXT): ", e.what()));
      }
      PEFT_CHECK(!text.empty(), src, ": prompt_tuning_init_text gives no tokens");
      std::vector<int64_t> rows;  // PEFT: cut, or repeat ceil(n / len) times and cut
      while (static_cast<int64_t>(rows.size()) < o.num_virtual_tokens) rows.insert(rows.end(), text.begin(), text.end());
      rows.resize(o.num_virtual_tokens);
      for (int64_t id : rows) {
        PEFT_CHECK(id >= 0 && id < vocab, src, ": prompt_tuning_init_text's token id ", id,
                   " is outside the model's vocabulary of ", vocab);
      }
      ids = at::tensor(rows, at::kLong);
    }
    at::NoGradGuard g;
    table.copy_(rows_of(ids).to(at::kCPU).to(at::kFloat));
  }
  at::Tensor prompts() override { return table; }
};

nlohmann::json prompt_tuning_defaults() {
  nlohmann::json j = prompt_learning_defaults();
  j.update({{"prompt_tuning_init", "RANDOM"},
            {"prompt_tuning_init_text", nullptr},
            {"tokenizer_name_or_path", nullptr},
            {"tokenizer_kwargs", nullptr}});
  return j;
}

std::shared_ptr<const MethodOptions> prompt_tuning_parse(const AdapterConfig & c, const std::string & src) {
  auto o = std::make_shared<PromptTuningOptions>();
  parse_prompt_fields(*o, c, src);
  FieldReader r(c, src);
  o->init = r.init("prompt_tuning_init", {"RANDOM", "TEXT", "SAMPLE_VOCAB"});
  if (o->init == "TEXT") {
    PEFT_CHECK(c.field("prompt_tuning_init_text").is_string(), src,
               ": prompt_tuning_init TEXT needs field 'prompt_tuning_init_text'");
    PEFT_CHECK(c.field("tokenizer_name_or_path").is_string(), src,
               ": prompt_tuning_init TEXT needs field 'tokenizer_name_or_path' (a folder with tokenizer.json)");
    o->init_text = r.string("prompt_tuning_init_text");
    o->tokenizer = r.string("tokenizer_name_or_path");
  } else {
    PEFT_CHECK(c.field("tokenizer_kwargs").is_null(), src,
               ": field 'tokenizer_kwargs' only applies with prompt_tuning_init TEXT (PEFT's check)");
  }
  return o;
}

std::shared_ptr<PromptEncoder> prompt_tuning_encoder(const AdapterConfig & c, const CausalLM & model) {
  const LayerPtr base = model.input_embedding()->base();
  int64_t vocab = 0;
  std::function<at::Tensor(const at::Tensor &)> lookup;
  if (auto words = std::dynamic_pointer_cast<Embedding>(base)) {
    vocab = words->weight.size(0);
    lookup = [w = words->weight](const at::Tensor & ids) { return w.detach().index_select(0, ids.to(w.device())); };
  } else if (auto q = std::dynamic_pointer_cast<quant::QuantizedEmbedding>(base)) {
    // a quantized table (tied to a quantized lm_head): the rows dequantized, as the model's lookup gives them
    vocab = q->num_embeddings();
    lookup = [q](const at::Tensor & ids) { return q->forward(ids); };
  }
  PEFT_CHECK(lookup != nullptr, "PROMPT_TUNING: the model's input embedding is not an embedding table");
  // what the model's embedding gives for a token (Gemma 3 scales it)
  const bool scaled = model.config().multiplier_in_lookup;
  const double multiplier = model.config().embedding_multiplier;
  auto rows_of = [&](const at::Tensor & ids) {
    const at::Tensor rows = lookup(ids);
    return scaled ? rows * multiplier : rows;
  };
  return std::make_shared<PromptEmbedding>(c.opts<PromptTuningOptions>(), vocab, rows_of, c.inference_mode,
                                           "PROMPT_TUNING config");
}

}  // namespace

TunerMethod prompt_tuning_method() {
  TunerMethod m{{"PROMPT_TUNING", "prompt_embeddings", &prompt_tuning_defaults, &prompt_tuning_parse}, nullptr, nullptr};
  m.schema.absent_fields = {"target_modules"};
  m.prompt_encoder = &prompt_tuning_encoder;
  return m;
}

}  // namespace peft
