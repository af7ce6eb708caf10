// peft::compile (compile.h): CompiledModel, the cache of captured programs keyed by CompileKey
// (compile-key.h), recompile reporting, explain().
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <list>
#include <optional>
#include <set>
#include <sstream>

#include "capture.h"
#include "compile-key.h"
#include "passes/passes.h"
#include "peft/compile/compile.h"
#include "peft/error.h"
#include "peft/model/checkpoint.h"
#include "peft/peft-model.h"

namespace peft {

using compile_detail::CompileKey;
using compile_detail::InputLayout;
using compile_detail::Program;

struct CompiledModel::Impl {
  PeftModel * peft = nullptr;
  std::shared_ptr<CausalLM> plain;
  CompileOptions opts;
  std::list<std::pair<CompileKey, std::shared_ptr<Program>>> lru;  // most recent first
  CompileStats stats;
  std::vector<std::string> reasons;
  std::vector<CompileKey> ever;  // every key compiled so far
  CompileKey last_key;
  uint64_t last_version = 0;     // PeftModel::version() when last_key was taken
  bool have_last = false;
  std::shared_ptr<Program> last;
  bool log = false;         // PEFT_LOG=recompiles: each recompile and its reason on stderr
  bool log_graphs = false;  // PEFT_LOG=graphs: each optimised graph on stderr

  CausalLM & model() { return peft ? peft->base_model() : *plain; }

  std::string reason(const CompileKey & k) const {
    if (!have_last) return "first call";
    for (const auto & e : ever) {
      if (e == k) return str("graph was evicted earlier (cache capacity ", opts.cache_capacity, ")");
    }
    std::string d = k.diff(last_key);
    return d.empty() ? "evicted earlier" : d;
  }

  std::shared_ptr<Program> compile_for(const PeftInput & in, const CompileKey & k) {
    auto t0 = std::chrono::steady_clock::now();
    InputLayout layout = InputLayout::of(in);
    CausalLM & m = model();
    PeftLogitsFn body = peft ? PeftLogitsFn([this](const PeftInput & f) { return peft->forward_unchecked(f); })
                             : PeftLogitsFn([&m](const PeftInput & f) { return m.forward_unchecked(f); });
    // a checkpointed model that trains: each decoder layer becomes one recomputable node (peft::checkpointed)
    std::optional<CheckpointCapture> layers;
    if (k.checkpointing) layers.emplace();
    auto p = std::make_shared<Program>(compile_detail::capture(m, body, in, layout));
    if (layers) p->kept = std::move(layers->functions);
    compile_detail::run_passes(*p, opts, !at::GradMode::is_enabled());
    p->finalize();
    if (log_graphs) {
      std::cerr << "[peft::compile] graph for " << k.summary() << ", passes:";
      for (const auto & pc : p->pass_counts) std::cerr << " " << pc.first << "=" << pc.second;
      std::cerr << "\n" << *p->graph << "\n";
    }
    p->compile_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    p->key_summary = k.summary();
    return p;
  }

  at::Tensor run(Program & prog, const PeftInput & in) {
    ++stats.calls;
    size_t before = prog.refolds;
    at::Tensor out = prog.run(InputLayout::of(in).pack(in));
    stats.refolds += prog.refolds - before;
    return out;
  }

  at::Tensor forward(const PeftInput & in_) {
    if (peft) peft->prepare_forward();
    CausalLM & m = model();
    if (peft) peft->validate(in_);
    else m.validate(in_);
    PeftInput in = in_;
    if (!in.adapter_names.empty()) {
      PEFT_CHECK(peft != nullptr, "adapter_names given to a compiled model without adapters");
      in.adapter_rows = peft->mixed_rows(in.adapter_names, batch_size(in));  // data, not structure
    }
    CompileKey k = compile_detail::call_key(m, in);
    const uint64_t version = peft ? peft->version() : 0;
    // fast path (a decode loop): nothing changed since the last call, replay its graph
    if (have_last && last && version == last_version && k.same_call(last_key)) {
      ++stats.cache_hits;
      return run(*last, in);
    }
    if (peft) k.adapters = peft->state_key();
    std::shared_ptr<Program> prog;
    auto it = std::find_if(lru.begin(), lru.end(), [&](const auto & e) { return e.first == k; });
    if (it != lru.end()) {
      lru.splice(lru.begin(), lru, it);
      prog = lru.front().second;
      ++stats.cache_hits;
    } else {
      std::string why = reason(k);
      prog = compile_for(in, k);
      if (stats.compiles > 0) {
        ++stats.recompiles;
        reasons.push_back(why);
        if (log) std::cerr << "[peft::compile] recompile #" << stats.recompiles << ": " << why << "\n";
      }
      ++stats.compiles;
      ever.push_back(k);
      lru.emplace_front(k, prog);
      while (lru.size() > std::max<size_t>(1, opts.cache_capacity)) {
        lru.pop_back();
        ++stats.evictions;
      }
    }
    last_key = std::move(k);
    last_version = version;
    have_last = true;
    last = prog;
    return run(*prog, in);
  }
};

at::Tensor CompiledModel::forward(const PeftInput & in) { return impl_->forward(in); }

CompileStats CompiledModel::stats() const {
  CompileStats s = impl_->stats;
  s.graphs = impl_->lru.size();
  return s;
}

std::vector<std::string> CompiledModel::recompile_reasons() const { return impl_->reasons; }

std::map<std::string, size_t> CompiledModel::last_graph_ops() const {
  std::map<std::string, size_t> ops;
  if (!impl_->last) return ops;
  for (const auto * n : impl_->last->graph->nodes()) {
    if (n->kind() == c10::prim::Constant || n->kind() == c10::prim::ListConstruct) continue;
    ++ops[n->kind().toQualString()];
  }
  return ops;
}

std::string CompiledModel::last_graph() const {
  if (!impl_->last) return "";
  std::ostringstream s;
  s << *impl_->last->graph;
  return s.str();
}

std::string CompiledModel::explain() const {
  const auto & I = *impl_;
  std::ostringstream s;
  CompileStats st = stats();
  s << "peft::compile: " << st.graphs << " graph(s) cached (capacity " << I.opts.cache_capacity << "), " << st.calls
    << " calls, " << st.compiles << " compiles, " << st.recompiles << " recompiles, " << st.cache_hits
    << " cache hits, " << st.refolds << " refolds, " << st.graph_breaks << " graph breaks\n";
  size_t i = 0;
  for (const auto & e : I.lru) {
    const Program & p = *e.second;
    size_t nodes = 0, peft_ops = 0;
    for (const auto * n : p.graph->nodes()) {
      if (n->kind() == c10::prim::Constant) continue;
      ++nodes;
      if (std::string(n->kind().ns().toUnqualString()) == "peft") ++peft_ops;
    }
    s << "graph " << ++i << ": " << p.key_summary << "\n  " << nodes << " nodes (" << peft_ops << " peft ops), "
      << p.sources.size() << " live tensors, " << p.derived.size() << " derived, captured+optimised in "
      << p.compile_ms << " ms, " << p.calls << " calls\n  passes:";
    for (const auto & pc : p.pass_counts) s << " " << pc.first << "=" << pc.second;
    s << "\n";
  }
  if (!I.reasons.empty()) {
    s << "recompiles:\n";
    for (size_t r = 0; r < I.reasons.size(); ++r) s << "  #" << r + 1 << ": " << I.reasons[r] << "\n";
  }
  return s.str();
}

static std::shared_ptr<CompiledModel::Impl> make_impl(const CompileOptions & o) {
  auto impl = std::make_shared<CompiledModel::Impl>();
  impl->opts = o;
  const char * env = std::getenv("PEFT_LOG");
  impl->log = env && std::string(env).find("recompiles") != std::string::npos;
  impl->log_graphs = env && std::string(env).find("graphs") != std::string::npos;
  return impl;
}

CompiledModel compile(PeftModel & model, const CompileOptions & options) {
  auto impl = make_impl(options);
  impl->peft = &model;
  return CompiledModel(impl);
}

CompiledModel compile(std::shared_ptr<CausalLM> model, const CompileOptions & options) {
  PEFT_CHECK(model != nullptr, "compile: no model");
  auto impl = make_impl(options);
  impl->plain = std::move(model);
  return CompiledModel(impl);
}

}  // namespace peft
