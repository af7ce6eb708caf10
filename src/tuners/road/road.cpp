// RoAd on Linear layers (PEFT's tuners/road) and the RoAd method entry.
#include "tuners/road/road.h"

#include "peft/error.h"
#include "peft/ops/adapter-math.h"
#include "peft/ops/adapter-ops.h"
#include "peft/tuners/registry.h"
#include "peft/tuners/routing.h"

namespace peft {

namespace {

// road_theta / road_alpha hold out/2 (road_1), out (road_2) or 2*out (road_4) values each
int64_t road_size(int64_t variant, int64_t out) { return variant == 1 ? out / 2 : variant == 2 ? out : 2 * out; }

}  // namespace

RoadLinear::RoadLinear(LayerPtr base) : TunerLayer(std::move(base)) {
  PEFT_CHECK(std::dynamic_pointer_cast<LinearBase>(base_layer_), "RoadLinear needs a Linear base layer");
  theta_ = &dict("road_theta");
  alpha_ = &dict("road_alpha");
}

LinearBase & RoadLinear::linear() const { return static_cast<LinearBase &>(*base_layer_); }
at::Tensor RoadLinear::theta(const std::string & n) const { return theta_->get(n); }
at::Tensor RoadLinear::alpha(const std::string & n) const { return alpha_->get(n); }

void RoadLinear::add_adapter(const std::string & name, const RoadOptions & o) {
  const int64_t out = linear().out_features();
  PEFT_CHECK(out % o.group_size == 0, "The out_features of the base layer must be divisible by group_size (",
             o.group_size, ") when using RoadLayer. (out_features ", out, ")");
  const int64_t size = road_size(o.variant, out);
  at::Tensor theta = at::empty({size}), alpha = at::empty({size});
  {
    at::NoGradGuard g;
    if (o.init_weights) {  // the identity
      theta.zero_();
      alpha.fill_(1.0);
    } else {  // PEFT's init_weights=False: theta first, then alpha, from the global generator
      theta.normal_(0.0, 0.5);
      alpha.normal_(1.0, 0.5);
    }
  }
  theta_->add_param(name, theta);
  alpha_->add_param(name, alpha);
  settings_[name] = {o.variant, o.group_size};
  track_adapter(name);
}

void RoadLinear::forget(const std::string & name) { settings_.erase(name); }

std::string RoadLinear::adapter_signature(const std::string & n) const {
  const Setting & s = setting_of(settings_, n);
  return "road_" + std::to_string(s.variant) + "g" + std::to_string(s.group_size);
}

at::Tensor RoadLinear::rotation(const std::string & n) const {
  const Setting & s = setting_of(settings_, n);
  const auto cols = math::road_cols(theta(n).detach().to(at::kFloat), alpha(n).detach().to(at::kFloat), s.variant,
                                    s.group_size);
  return math::road_matrix(cols.first, cols.second, s.group_size);
}

at::Tensor RoadLinear::forward_active(const at::Tensor & x) {
  // PEFT: the output in the adapters' dtype through every active adapter, in order, then back
  at::Tensor y = base_layer_->forward(x);
  const auto dtype = y.scalar_type();
  for (const auto & n : active_here()) {
    const Setting & s = setting_of(settings_, n);
    const at::Tensor t = theta(n);
    y = ops::road_rotate(y.to(t.scalar_type()), t, alpha(n), s.variant, s.group_size);
  }
  return y.to(dtype);
}

at::Tensor RoadLinear::forward_mixed(const at::Tensor & x) {
  // every adapter on the whole batch, kept on the rows that name it: one shape for any assignment
  at::Tensor y = base_layer_->forward(x);
  const RowRouting & r = routing();
  for (const auto & kv : settings_) {
    const at::Tensor m = r.mask(kv.first, y.dim());
    if (!m.defined()) continue;
    const at::Tensor t = theta(kv.first);
    const at::Tensor rotated =
        ops::road_rotate(y.to(t.scalar_type()), t, alpha(kv.first), kv.second.variant, kv.second.group_size);
    y = at::where(m > 0, rotated.to(y.scalar_type()), y);
  }
  return y;
}

void RoadLinear::merge_one(const std::string & n, bool safe) {
  at::NoGradGuard g;
  const at::Tensor R = rotation(n);
  const at::Tensor W = at::mm(R, linear().dense_weight().to(at::kFloat));
  at::Tensor b = linear().bias_tensor();
  if (b.defined()) b = at::mv(R, b.to(at::kFloat));
  store_merged(linear(), W, b, safe, n);
}

void RoadLinear::unmerge_one(const std::string & n) {
  at::NoGradGuard g;
  // R is not orthogonal (the scales): its inverse, in float32 as PEFT
  const at::Tensor inv = at::linalg_inv(rotation(n));
  linear().store_weight(at::mm(inv, linear().dense_weight().to(at::kFloat)));
  at::Tensor b = linear().bias_tensor();
  if (b.defined()) linear().store_bias(at::mv(inv, b.to(at::kFloat)));
}

// ---- the method ----

namespace {

nlohmann::json road_defaults() { return {{"variant", "road_1"}, {"group_size", 64}, {"init_weights", true}}; }

std::shared_ptr<const MethodOptions> road_parse(const AdapterConfig & c, const std::string & src) {
  FieldReader f(c, src);
  auto o = std::make_shared<RoadOptions>();
  const std::string v = f.string("variant");
  PEFT_CHECK(v == "road_1" || v == "road_2" || v == "road_4", src, ": Invalid variant ", v,
             " specified. Please choose from road_1, road_2 or road_4");
  o->variant = v == "road_1" ? 1 : v == "road_2" ? 2 : 4;
  const auto & g = f.at("group_size");
  PEFT_CHECK(g.is_number_integer(), src, ": field 'group_size' must be an integer, got ", g.dump());
  o->group_size = g.get<int64_t>();
  PEFT_CHECK(o->group_size > 0 && o->group_size % 2 == 0, src,
             ": The group_size must be divisible by 2 when using RoadLayer, but got ", o->group_size, ".");
  o->init_weights = f.boolean("init_weights");
  // fields other methods have and PEFT's RoadConfig does not: PEFT drops them when it loads the file, here
  // they would select layers or train biases
  for (const char * k : {"layers_to_transform", "layers_pattern", "exclude_modules", "target_parameters",
                         "trainable_token_indices"}) {
    PEFT_CHECK(c.field(k).is_null(), src, ": field '", k, "' is not a field of PEFT's RoadConfig (set to ",
               c.field(k).dump(), ")");
  }
  PEFT_CHECK(c.bias == "none", src, ": field 'bias' is not a field of PEFT's RoadConfig (set to \"", c.bias, "\")");
  return o;
}

std::shared_ptr<TunerLayer> road_inject(const AdapterConfig & cfg, const std::string & path, const std::string & adapter,
                                        const LayerPtr & target) {
  auto layer = method_layer<RoadLinear>(target);
  try {
    layer->add_adapter(adapter, cfg.opts<RoadOptions>());
  } catch (const Error & e) {
    fail(str("ROAD on module '", path, "': ", e.what()));
  }
  return layer;
}

}  // namespace

TunerMethod road_method() {
  TunerMethod m{{"ROAD", "road_", &road_defaults, &road_parse}, &supports_linear, &road_inject, &DefaultTargets::lora};
  m.bytes = [](const AdapterConfig & cfg, const std::string &, const Layer & plain) -> double {
    const auto * l = dynamic_cast<const LinearBase *>(&plain);  // float32 road_theta and road_alpha
    return l ? 4.0 * 2.0 * static_cast<double>(road_size(cfg.opts<RoadOptions>().variant, l->out_features())) : 0.0;
  };
  m.size_fields = {"variant"};
  return m;
}

}  // namespace peft
