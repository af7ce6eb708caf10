// CompiledModel: the cache of captured programs, the guards (cache key), recompile reporting.
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <list>
#include <set>
#include <sstream>

#include "capture.h"
#include "passes/passes.h"
#include "peft/compile/compile.h"
#include "peft/error.h"
#include "peft/peft-model.h"

namespace peft {

using compile_detail::InputLayout;
using compile_detail::Program;

namespace {

// Everything a captured graph depends on besides tensor values. Two calls with equal keys run the
// same computation; the fields are kept apart to name the guard that failed on a recompile.
struct Key {
  std::string adapters;  // PeftModel::state_key(): adapters, their settings, active/disabled/merged
  std::string mode;      // train/eval, grad mode, weight dtype
  std::string shapes;    // runtime input shapes and dtypes
  std::string full() const { return adapters + "\n" + mode + "\n" + shapes; }
};

std::string shape_of(const at::Tensor & t) {
  std::ostringstream s;
  s << c10::toString(t.scalar_type()) << t.sizes() << (t.is_cuda() ? "cuda" : "");
  return s.str();
}

std::string first_difference(const std::string & a, const std::string & b) {
  // state keys are ';'-separated entries: report the first entry that differs
  auto split = [](const std::string & s) {
    std::vector<std::string> v;
    std::stringstream ss(s);
    for (std::string x; std::getline(ss, x, ';');) v.push_back(x);
    return v;
  };
  auto va = split(a), vb = split(b);
  for (size_t i = 0; i < std::max(va.size(), vb.size()); ++i) {
    std::string x = i < va.size() ? va[i] : "(none)", y = i < vb.size() ? vb[i] : "(none)";
    if (x != y) return x + "  ->  " + y;
  }
  return "";
}

}  // namespace

struct CompiledModel::Impl {
  PeftModel * peft = nullptr;
  std::shared_ptr<CausalLM> plain;
  CompileOptions opts;
  std::list<std::pair<std::string, std::shared_ptr<Program>>> lru;  // most recent first
  std::map<std::string, decltype(lru)::iterator> index;
  CompileStats stats;
  std::vector<std::string> reasons;
  Key last_key;
  bool have_last = false;
  std::shared_ptr<Program> last;
  bool log = false;

  CausalLM & model() { return peft ? peft->base_model() : *plain; }

  Key key_for(const ForwardInput & in) {
    Key k;
    k.adapters = peft ? peft->state_key() : "";
    CausalLM & m = model();
    at::TensorOptions w = m.options();
    k.mode = str(m.is_training() ? "train" : "eval", at::GradMode::is_enabled() ? ",grad" : ",no_grad", ",",
                 c10::toString(w.dtype().toScalarType()));
    std::string s = "ids" + shape_of(in.input_ids);
    if (in.attention_mask.defined()) s += " mask" + shape_of(in.attention_mask);
    if (in.position_ids.defined()) s += " pos" + shape_of(in.position_ids);
    if (in.cache) s += " cache_pos" + shape_of(in.cache_position) + " kv" + shape_of(in.cache->k[0]) + "x" +
                       std::to_string(in.cache->k.size());
    if (in.adapter_rows.defined()) s += " mixed" + shape_of(in.adapter_rows);
    k.shapes = s;
    return k;
  }

  std::set<std::string> ever;  // every key compiled so far

  // The previous call's guards in raw form: when nothing changed (a decode loop), the last graph is
  // replayed without building the key strings.
  struct Fast {
    uint64_t version = 0;
    bool training = false, grad = false;
    std::vector<int64_t> sig;
    at::ScalarType dtype = at::kFloat;
  } fast;
  bool fast_valid = false;

  std::vector<int64_t> raw_signature(const ForwardInput & in) const {
    std::vector<int64_t> s;
    auto add = [&](const at::Tensor & t) {
      s.push_back(t.defined() ? t.dim() : -1);
      if (!t.defined()) return;
      s.push_back(static_cast<int64_t>(t.scalar_type()));
      s.push_back(static_cast<int64_t>(t.device().type()));
      for (auto d : t.sizes()) s.push_back(d);
    };
    add(in.input_ids);
    add(in.attention_mask);
    add(in.position_ids);
    add(in.cache_position);
    s.push_back(in.cache ? static_cast<int64_t>(in.cache->k.size()) : -1);
    if (in.cache) add(in.cache->k[0]);
    add(in.adapter_rows);
    return s;
  }

  std::string reason(const Key & k) const {
    if (!have_last) return "first call";
    if (ever.count(k.full())) return str("graph was evicted earlier (cache capacity ", opts.cache_capacity, ")");
    if (k.adapters != last_key.adapters) return "adapter state changed: " + first_difference(last_key.adapters, k.adapters);
    if (k.mode != last_key.mode) return "mode changed: " + last_key.mode + " -> " + k.mode;
    if (k.shapes != last_key.shapes) return "input shapes changed: " + last_key.shapes + " -> " + k.shapes;
    return "evicted earlier";
  }

  std::shared_ptr<Program> compile_for(const ForwardInput & in, const Key & k) {
    auto t0 = std::chrono::steady_clock::now();
    InputLayout layout = InputLayout::of(in);
    std::map<std::string, int64_t> index;
    if (peft) index = peft->adapter_index();
    auto p = std::make_shared<Program>(compile_detail::capture(model(), in, layout, &index));
    compile_detail::run_passes(*p, opts, !at::GradMode::is_enabled());
    p->finalize();
    p->compile_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    p->key_summary = k.mode + " " + k.shapes;
    return p;
  }

  at::Tensor forward(const ForwardInput & in_) {
    if (peft) peft->prepare_forward();
    CausalLM & m = model();
    m.validate(in_);
    ForwardInput in = in_;
    if (!in.adapter_names.empty()) {
      PEFT_CHECK(peft != nullptr, "adapter_names given to a compiled model without adapters");
      in.adapter_rows = peft->mixed_rows(in.adapter_names, in.input_ids.size(0));  // data, not structure
    }
    Fast now{peft ? peft->version() : 0, m.is_training(), at::GradMode::is_enabled(), raw_signature(in),
             m.options().dtype().toScalarType()};
    if (fast_valid && last && now.version == fast.version && now.training == fast.training && now.grad == fast.grad &&
        now.dtype == fast.dtype && now.sig == fast.sig) {
      ++stats.cache_hits;
      ++stats.calls;
      size_t before = last->refolds;
      at::Tensor out = last->run(InputLayout::of(in).pack(in));
      stats.refolds += last->refolds - before;
      return out;
    }
    fast = std::move(now);
    fast_valid = true;
    Key k = key_for(in);
    const std::string full = k.full();
    std::shared_ptr<Program> prog;
    auto it = index.find(full);
    if (it != index.end()) {
      lru.splice(lru.begin(), lru, it->second);
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
      ever.insert(full);
      lru.emplace_front(full, prog);
      index[full] = lru.begin();
      while (lru.size() > std::max<size_t>(1, opts.cache_capacity)) {
        index.erase(lru.back().first);
        lru.pop_back();
        ++stats.evictions;
      }
    }
    last_key = k;
    have_last = true;
    last = prog;
    ++stats.calls;
    InputLayout layout = InputLayout::of(in);
    size_t before = prog->refolds;
    at::Tensor out = prog->run(layout.pack(in));
    stats.refolds += prog->refolds - before;
    return out;
  }
};

at::Tensor CompiledModel::forward(const ForwardInput & in) { return impl_->forward(in); }

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
