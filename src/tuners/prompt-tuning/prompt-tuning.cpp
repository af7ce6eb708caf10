// Prompt tuning (PEFT's PROMPT_TUNING, tuners/prompt_tuning): num_virtual_tokens trained embeddings in front of
// the input's (prompt-learning.h). prompt_tuning_init: RANDOM (N(0, 1), nn.Embedding's init), TEXT (the word
// embeddings of prompt_tuning_init_text's tokens, tokenized by tokenizer_name_or_path/tokenizer.json with its
// special tokens, repeated and cut to num_virtual_tokens as PEFT does), SAMPLE_VOCAB (rows of random token ids).
#include "peft/error.h"
#include "peft/model/causal-lm.h"
#include "peft/nn/layers.h"
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
  PromptEmbedding(const PromptTuningOptions & o, const at::Tensor & words, bool inference, const std::string & src) {
    make_table(o.num_virtual_tokens, o.token_dim);
    if (inference || o.init == "RANDOM") return;
    at::Tensor ids;
    if (o.init == "SAMPLE_VOCAB") {
      ids = at::randint(words.size(0), {o.num_virtual_tokens}, at::kLong);
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
        PEFT_CHECK(id >= 0 && id < words.size(0), src, ": prompt_tuning_init_text's token id ", id,
                   " is outside the model's vocabulary of ", words.size(0));
      }
      ids = at::tensor(rows, at::kLong);
    }
    at::NoGradGuard g;
    table.copy_(words.detach().to(at::kCPU).index_select(0, ids).to(at::kFloat));
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
  auto words = std::dynamic_pointer_cast<Embedding>(model.input_embedding()->base());
  PEFT_CHECK(words != nullptr, "PROMPT_TUNING: the model's input embedding is not an embedding table");
  at::Tensor rows = words->weight;  // what the model's embedding gives for a token (Gemma 3 scales it)
  if (model.config().multiplier_in_lookup) rows = rows * model.config().embedding_multiplier;
  return std::make_shared<PromptEmbedding>(c.opts<PromptTuningOptions>(), rows, c.inference_mode,
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
