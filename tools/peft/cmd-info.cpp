// peft info --model DIR: architecture, parameter count (quantized weights as their elements) and storage, dtype;
// with --modules every layer of the model (name, type, weight shape): the names target_modules picks from.
#include <iostream>
#include <sstream>

#include "commands.h"
#include "common.h"
#include "quant-options.h"
#include "peft/model/causal-lm.h"
#include "peft/quant/quantized-linear.h"

namespace peft::cli {

namespace {

std::string shape_of(const at::Tensor & t) {
  std::ostringstream s;
  s << "[";
  for (int64_t i = 0; i < t.dim(); ++i) s << (i ? ", " : "") << t.size(i);
  s << "]";
  return s.str();
}

// One line per layer of the model: "model.layers.0.self_attn.q_proj  Linear  [64, 64]" (Linear weights are
// (out, in) as in PyTorch; Conv1D's are stored (in, out)); quantized layers show their kind and logical shape.
void print_modules(const std::shared_ptr<CausalLM> & model) {
  struct Row {
    std::string path, type, shape;
  };
  std::vector<Row> rows;
  std::vector<std::pair<at::Tensor, std::string>> seen;  // weights already listed (tied ones say so)
  auto with_tie = [&](const std::string & path, const at::Tensor & w, std::string shape) {
    for (const auto & s : seen) {
      if (s.first.is_same(w)) return shape + " (tied to " + s.second + ")";
    }
    seen.emplace_back(w, path);
    return shape;
  };
  for (const auto & m : named_modules(model)) {
    auto layer = std::dynamic_pointer_cast<Layer>(m.second);
    if (m.first.empty() || !layer) continue;
    Row r{m.first, "", ""};
    if (auto q4 = std::dynamic_pointer_cast<quant::Linear4bit>(layer)) {
      r.type = "Linear4bit (" + quant::format_name(q4->format()) + ")";
    } else if (auto q8 = std::dynamic_pointer_cast<quant::Linear8bit>(layer)) {
      r.type = "Linear8bitLt (" + quant::format_name(q8->format()) + ")";
    } else if (auto q = std::dynamic_pointer_cast<quant::QuantizedLinear>(layer)) {
      r.type = "quantized Linear (" + quant::format_name(q->format()) + ")";
    }
    if (!r.type.empty()) {
      auto q = std::static_pointer_cast<quant::QuantizedLinear>(layer);
      r.shape = str("[", q->out_features(), ", ", q->in_features(), "]", q->bias.defined() ? " +bias" : "");
    } else if (auto l = std::dynamic_pointer_cast<Linear>(layer)) {
      r.type = "Linear";
      r.shape = with_tie(m.first, l->weight, shape_of(l->weight)) + (l->bias.defined() ? " +bias" : "");
    } else if (auto c = std::dynamic_pointer_cast<Conv1D>(layer)) {
      r.type = "Conv1D";
      r.shape = shape_of(c->weight) + (c->bias.defined() ? " +bias" : "");
    } else if (auto e = std::dynamic_pointer_cast<Embedding>(layer)) {
      r.type = "Embedding";
      r.shape = with_tie(m.first, e->weight, shape_of(e->weight));
    } else if (auto n = std::dynamic_pointer_cast<RMSNorm>(layer)) {
      r.type = "RMSNorm";
      r.shape = shape_of(n->weight);
    } else if (auto ln = std::dynamic_pointer_cast<LayerNorm>(layer)) {
      r.type = "LayerNorm";
      r.shape = ln->weight.defined() ? shape_of(ln->weight) + (ln->bias.defined() ? " +bias" : "") : "(no weight)";
    } else {
      r.type = layer->name();
      const std::string ns = "peft::";
      if (r.type.compare(0, ns.size(), ns) == 0) r.type = r.type.substr(ns.size());
    }
    rows.push_back(r);
  }
  size_t wp = 0, wt = 0;
  for (const auto & r : rows) {
    wp = std::max(wp, r.path.size());
    wt = std::max(wt, r.type.size());
  }
  std::cout << "modules:      " << rows.size() << " (name, type, weight shape)\n";
  for (const auto & r : rows) {
    std::string line = r.path + std::string(wp - r.path.size() + 2, ' ') + r.type;
    if (!r.shape.empty()) line += std::string(wt - r.type.size() + 2, ' ') + r.shape;
    std::cout << line << "\n";
  }
}

}  // namespace

Runner add_info(CLI::App & app) {
  struct Opts {
    std::string model;
    bool modules = false;
    CommonOptions common;
    QuantFlags quant;
  };
  auto o = std::make_shared<Opts>();
  auto * cmd = app.add_subcommand("info", "print a model's architecture, parameter count and dtype");
  cmd->add_option("--model", o->model, "Hugging Face checkpoint folder")->required();
  cmd->add_flag("--modules", o->modules,
                "also list every layer: its name (what target_modules matches, in full or by a dotted suffix), type and weight shape");
  add_common_options(*cmd, o->common);
  add_quant_options(*cmd, o->quant);
  return [o]() {
    apply_common_options(o->common);
    auto model = load_model_with(o->model, at::kFloat, o->quant);
    const auto & c = model->config();
    // parameters as transformers counts them: a quantized weight by its elements, not its packed bytes;
    // the storage per dtype / format beside it
    std::map<std::string, std::pair<int64_t, int64_t>> storage;  // dtype or format -> (elements, bytes)
    int64_t n = 0;
    for (const auto & p : named_parameters(*model)) {
      n += p.second.numel();
      auto & s = storage[dtype_name(p.second.scalar_type())];
      s.first += p.second.numel();
      s.second += p.second.numel() * static_cast<int64_t>(p.second.element_size());
    }
    for (const auto & m : named_modules(model)) {
      auto q = std::dynamic_pointer_cast<quant::QuantizedLinear>(m.second);
      if (!q) continue;
      n += q->out_features() * q->in_features();
      auto & s = storage[quant::format_name(q->format())];
      s.first += q->out_features() * q->in_features();
      s.second += q->weight_bytes();
    }
    std::string stored;
    for (const auto & kv : storage) {
      stored += str(stored.empty() ? "" : ", ", kv.first, " ", kv.second.first, " (", kv.second.second, " bytes",
                    kv.first == "float32" || kv.first == "bfloat16" ? "" : ", codes and scales", ")");
    }
    std::cout << "architecture: " << c.arch_name() << "\n"
              << "model_type:   " << c.model_type << "\n"
              << "layers:       " << c.num_layers << "\n"
              << "hidden:       " << c.hidden_size << "\n"
              << "heads:        " << c.num_heads << " (kv " << c.num_kv_heads << ")\n"
              << "vocab:        " << c.vocab_size << "\n"
              << "parameters:   " << n << "\n"
              << "storage:      " << stored << "\n"
              << "dtype:        " << c.torch_dtype << " (loaded as float32)\n";
    if (o->modules) print_modules(model);
    return 0;
  };
}

}  // namespace peft::cli
