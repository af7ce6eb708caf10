// peft info --model DIR: architecture, parameter count (quantized weights as their elements) and storage, dtype,
// the resident size per dtype after loading (--dtype, --quantize as other commands load) and what the load cost;
// with --modules every layer of the model (name, type, weight shape): the names target_modules picks from.
#include <chrono>
#include <cmath>
#include <iostream>
#include <sstream>

#include "commands.h"
#include "common.h"
#include "quant-options.h"
#include "peft/model/causal-lm.h"
#include "peft/quant/quantized-embedding.h"
#include "peft/quant/quantized-linear.h"
#include "peft/util/runtime.h"

namespace peft::cli {

namespace {

std::string mib(int64_t bytes) { return str(std::round(static_cast<double>(bytes) / (1 << 20) * 10) / 10, " MiB"); }

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
    // a quantized matrix's codes (a tied embedding reads its head's)
    auto codes = [](const quant::QuantizedLinear & q) { return *q.named_buffers(false).find("weight"); };
    if (!r.type.empty()) {
      auto q = std::static_pointer_cast<quant::QuantizedLinear>(layer);
      r.shape = with_tie(m.first, codes(*q), str("[", q->out_features(), ", ", q->in_features(), "]")) +
                (q->bias.defined() ? " +bias" : "");
    } else if (auto qe = std::dynamic_pointer_cast<quant::QuantizedEmbedding>(layer)) {
      r.type = "QuantizedEmbedding (" + quant::format_name(qe->table()->format()) + ")";
      r.shape = with_tie(m.first, codes(*qe->table()), str("[", qe->num_embeddings(), ", ", qe->embedding_dim(), "]"));
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
    std::string dtype = "float32";
    CommonOptions common;
    QuantFlags quant;
  };
  auto o = std::make_shared<Opts>();
  auto * cmd = app.add_subcommand("info", "print a model's architecture, parameter count and dtype");
  cmd->add_option("--model", o->model, "Hugging Face checkpoint folder")->required();
  cmd->add_flag("--modules", o->modules,
                "also list every layer: its name (what target_modules matches, in full or by a dotted suffix), type and weight shape");
  cmd->add_option("--dtype", o->dtype, kDtypeHelp);
  add_common_options(*cmd, o->common);
  add_quant_options(*cmd, o->quant);
  return [o]() {
    const at::ScalarType dtype = resolve_dtype(o->dtype, o->model);
    apply_common_options(o->common);
    // what loading costs, as every command loads: the anonymous memory it added (the weights as held; the
    // checkpoint is mapped and its pages handed back) and the process's peak, mapped file pages included
    const int64_t anon_before = process_status_kb("RssAnon");
    const auto t0 = std::chrono::steady_clock::now();
    auto model = load_model_with(o->model, dtype, o->quant);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const int64_t anon_after = process_status_kb("RssAnon"), peak = process_status_kb("VmHWM");
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
    std::string stored, resident;
    int64_t total_bytes = 0;
    for (const auto & kv : storage) {
      stored += str(stored.empty() ? "" : ", ", kv.first, " ", kv.second.first, " (", kv.second.second, " bytes",
                    kv.first == "float32" || kv.first == "bfloat16" ? "" : ", codes and scales", ")");
      resident += str(resident.empty() ? "" : ", ", kv.first, " ", mib(kv.second.second));
      total_bytes += kv.second.second;
    }
    std::cout << "architecture: " << c.arch_name() << "\n"
              << "model_type:   " << c.model_type << "\n"
              << "layers:       " << c.num_layers << "\n"
              << "hidden:       " << c.hidden_size << "\n"
              << "heads:        " << c.num_heads << " (kv " << c.num_kv_heads << ")\n"
              << "vocab:        " << c.vocab_size << "\n"
              << "parameters:   " << n << "\n"
              << "storage:      " << stored << "\n"
              << "dtype:        " << c.torch_dtype << " (loaded as " << dtype_name(dtype) << ")\n"
              << "resident:     " << resident << " = " << mib(total_bytes) << " of weights; the load added "
              << mib((anon_after - anon_before) * 1024) << " of anonymous memory (process peak "
              << mib(peak * 1024) << " VmHWM, mapped file pages included) in " << str(std::round(seconds * 10) / 10)
              << " s\n";
    if (o->modules) print_modules(model);
    return 0;
  };
}

}  // namespace peft::cli
